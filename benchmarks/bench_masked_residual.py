"""Training cost of the masked-residual semantics and of ``block_gradient`` (ours; design §11).

ResNet-18 (1-channel stem, 10 classes, random weights) with a hard ERSM layer after
``layer1`` (T 0.1) and every block after it masked, as ``results_sparse.py`` trains it,
against the plain network, per input side at batch 16, side by side in one run: bytes
autograd saves for backward in one training forward (each storage counted once), and the
interleaved median time of one training step (forward, backward). Both grow with
batch × side², like the activations; the ratios say what the semantics and the option add.

    python benchmarks/bench_masked_residual.py [--sides 64 128 224 320] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine, write_json  # noqa: E402
from results_sparse import masked_resnet18, resnet18_digits  # noqa: E402

from energymask.ersm import collect_regularizer  # noqa: E402


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one training forward, each storage once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    def call() -> None:
        loss = F.cross_entropy(model(x), y)
        reg = collect_regularizer(model)
        (loss if reg is None else loss + reg).backward()
        model.zero_grad(set_to_none=True)

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128, 224, 320])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for side in args.sides:
        x = torch.randn(args.batch, 1, side, side, generator=torch.Generator().manual_seed(0))
        y = torch.arange(args.batch) % 10
        models = {}
        for name, build in (("plain", resnet18_digits),
                            ("masked", lambda: masked_resnet18(None, "max", 0.1)),
                            ("block_gradient", lambda: masked_resnet18(None, "max", 0.1, True))):
            torch.manual_seed(0)
            models[name] = build().train()
        mb = {name: saved_bytes(m, x) / 2**20 for name, m in models.items()}
        seconds = interleaved_medians({n: step(m, x, y) for n, m in models.items()},
                                      args.repeats, warmup=1)
        row = {"side": side, "batch": args.batch, "saved_mb": mb, "step_seconds": seconds,
               "masked_over_plain": {"memory": mb["masked"] / mb["plain"],
                                     "time": seconds["masked"] / seconds["plain"]},
               "block_gradient_over_masked": {
                   "memory": mb["block_gradient"] / mb["masked"],
                   "time": seconds["block_gradient"] / seconds["masked"]}}
        rows.append(row)
        print(f"side {side:3d} batch {args.batch}: saved for backward MB plain "
              f"{mb['plain']:.0f}, masked {mb['masked']:.0f}, block gradient "
              f"{mb['block_gradient']:.0f} | masked / plain: memory "
              f"{row['masked_over_plain']['memory']:.3f}x, step time "
              f"{row['masked_over_plain']['time']:.2f}x | block gradient / masked: memory "
              f"{row['block_gradient_over_masked']['memory']:.3f}x, step time "
              f"{row['block_gradient_over_masked']['time']:.2f}x", flush=True)
    write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
