#!/usr/bin/env bash
# Sets up a virtual environment (CPU torch) and runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e .
.venv/bin/energymask demo "$@"
