#!/usr/bin/env bash
# Measure the ERSM / Potts kernels on this machine's GPU in one command (< 5 min on an H200):
#   ERSM forward and forward+backward at the ResNet-50 shapes (NCHW float32 and channels-last
#   bfloat16), eager vs torch.compile of the reference vs Triton, GB/s per backend and share of
#   the measured copy bandwidth; the Potts kernels; the ResNet-50 training step (batch 64, 224 px,
#   bf16, channels-last) with ERSM after layer2/3/4: plain vs each backend vs auto (the dispatch).
# Writes benchmarks/results/kernels_gpu.json (every figure; format: docs/design.md §5) and
# replaces this GPU's rows of kernels/dispatch_table.json (what "auto" picks from then on).
# Refuses without a CUDA GPU.  Usage: bash benchmarks/measure_kernels.sh [extra bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "measure_kernels.sh: no CUDA GPU here; nothing measured (try: bench_kernels.py --dry-run)" >&2
    exit 2
fi
export TRITON_INTERPRET=0
mkdir -p benchmarks/results
"$PY" benchmarks/bench_kernels.py --device cuda --step \
    --json benchmarks/results/kernels_gpu.json --table kernels/dispatch_table.json "$@"
