"""Sparse execution after a hard mask against dense, on torchvision ResNet-50 (docs/design.md §11).

Given (forced) binary masks at the output of ``layer2`` (28x28 at 224 px) or
``layer1`` (56x56): blobs (coherent, like a learned ERSM mask) and random
tokens (the worst case for dilation and pooling). Side by side in one run, per
keep ratio: FLOPs (``torch.utils.flop_counter``) and wall time of the blocks
after the mask and of the whole model, dense (the torchvision model as it is:
every block at every position) against sparse (``sparsify`` of the
masked-residual model). Times are interleaved medians (``_timing.py``). The
sparse output's top-1 agrees with the dense masked model's (checked here on
the timed batch; tests/core/test_sparse.py checks the logits to 1e-5).

Goal on CPU (issue 21), for keep ≤ 0.5: blocks time ≤ 1.5 × keep × dense
(keep 0.3: ≥ 2.2x faster) and blocks FLOPs ≤ 1.2 × keep × dense; both are
checked against the keep ratio at the mask and reported as held or not.

    python benchmarks/bench_sparse.py [--quick] [--json PATH] [--device cuda]
    python benchmarks/bench_sparse.py --table benchmarks/results/sparse.json   # markdown

(``results/sparse.json``: ``--json benchmarks/results/sparse.json``, the full
grid: keeps 0.1 .. 0.9, after layer2 then layer1, blob masks at batch 1 and 32
with threads 1 and 2, random masks at 1 thread; whole-model times at batch 1
with blob masks; 5 timed repeats at batch 1, 2 at batch 32, to fit a shared
2-core machine; it predates ``--pool`` and the dense threshold: always sparse.)

Ours, beyond the issue:

    python benchmarks/bench_sparse.py --crossover --json benchmarks/results/sparse_crossover.json
    python benchmarks/bench_sparse.py --pools max nearest --json benchmarks/results/sparse_pool.json
    python benchmarks/bench_sparse.py --learned benchmarks/results/sparse_learned_masks.pt

``--crossover``: one block at a time (a striding and a stride-1 bottleneck of
``layer3`` and ``layer4``), batch 1 and 32, time sparse (always) against the
dense masked block at kept shares 0.5 .. 1.0 of its output grid: where sparse
stops paying, the origin of ``energymask.sparse.DENSE_THRESHOLD``.
``--pools max nearest``: the mask at striding blocks max-pooled (the issue's)
or its top-left cell (ours, ``pool="nearest"``), side by side, batch 1 and 32
after ``layer2``, blob masks and (batch 32) random ones, with the dense
thresholds on (``--dense-threshold`` for stride-1 blocks, striding blocks at
``STRIDING_DENSE_THRESHOLD``; "none": always sparse). ``--learned PATH``: the learned hard masks of
``results_sparse.py --save-masks`` (16x16, ResNet-18 at 64 px), resized
(nearest) to the grid, as the mask kind ``learned``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine, write_json  # noqa: E402

from energymask.masked_residual import (  # noqa: E402
    MaskedBlock,
    mask_point,
    masked_residual,
    masking,
    pool_mask,
)
from energymask.sparse import DENSE_THRESHOLD, SparseBlock, dilated_mask, sparsify  # noqa: E402
from energymask.sparse_masks import blob_mask, random_mask  # noqa: E402

STAGES = ("layer1", "layer2", "layer3", "layer4")
MASKS = {"blob": blob_mask, "random": random_mask}
LEARNED: dict[str, torch.Tensor] = {}  # "masks": (N, h, w) from --learned


def learned_mask(batch: int, size: tuple[int, int], keep: float, seed: int = 0) -> torch.Tensor:
    """The first ``batch`` learned masks resized (nearest) to ``size``; ``keep`` is ignored."""
    masks = LEARNED["masks"][:batch].float()
    return F.interpolate(masks[:, None], size=size, mode="nearest")[:, 0]


MASKS["learned"] = learned_mask


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def gather_shares(mask: torch.Tensor, tiles=(2, 4)) -> dict[str, float]:
    """FLOPs share of one stride-1 ResNet-50 layer3 bottleneck computed by token vs tile gather.

    ``mask`` (B, 14, 14) bool at the block's grid. Token gather (ours, DynConv's):
    the 1x1 before the 3x3 at the dilated mask, the 3x3 and the last 1x1 at the
    mask. Tile gather (SBNet, counted, not run): every tile x tile output tile
    holding a kept position is computed whole, the first 1x1 over the tile and
    its 1-position halo ((tile + 2)² positions, halos computed once per tile).
    """
    w1, w2, w3 = 1024 * 256, 9 * 256 * 256, 256 * 1024
    total = mask.numel() * (w1 + w2 + w3)
    dilated = dilated_mask(mask, 1, tuple(mask.shape[-2:])).sum().item()
    shares = {"token": (w1 * dilated + (w2 + w3) * mask.sum().item()) / total}
    for t in tiles:
        active = F.max_pool2d(mask[:, None].float(), t, t, ceil_mode=True).sum().item()
        shares[f"tile{t}"] = active * (w1 * (t + 2) ** 2 + (w2 + w3) * t * t) / total
    return shares


def _synced(fn, device: str):
    if not device.startswith("cuda"):
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def _models(after: str, device: str, pool: str = "max", threshold: float | None = None
            ) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = torchvision.models.resnet50(weights=None).to(device).eval()
    masked = masked_residual(copy.deepcopy(dense), after, pool=pool)
    if threshold is None:  # always sparse
        return dense, sparsify(masked, dense_threshold=None, striding_dense_threshold=None).eval()
    return dense, sparsify(masked, dense_threshold=threshold).eval()


def measure(
    after: str,
    batch: int,
    threads: int,
    kind: str,
    keeps: list[float],
    whole: bool,
    repeats: int,
    device: str,
    pool: str = "max",
    threshold: float | None = None,
) -> list[dict]:
    torch.set_num_threads(threads)
    dense, sparse = _models(after, device, pool, threshold)
    point = mask_point(sparse)
    dense_masked = masked_residual(copy.deepcopy(dense), after, pool=pool).eval()
    later = list(STAGES[STAGES.index(after) + 1 :])
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        h = dense.maxpool(dense.relu(dense.bn1(dense.conv1(x))))
        for s in STAGES[: STAGES.index(after) + 1]:
            h = getattr(dense, s)(h)
    grid = tuple(h.shape[-2:])

    def dense_blocks():
        out = h
        for s in later:
            out = getattr(dense, s)(out)
        return out

    rows = []
    for keep in keeps:
        mask = MASKS[kind](batch, grid, keep, seed=1).to(device)
        cells = mask.bool()

        def sparse_blocks(mask=mask, cells=cells):
            point.state.mask, point.state.fill = cells, h.new_zeros(h.shape[1])
            out = h * mask[:, None]
            for s in later:
                out = getattr(sparse, s)(out)
            return out

        fns = {"dense_blocks": dense_blocks, "sparse_blocks": sparse_blocks}
        if whole:
            fns["dense_model"] = lambda: dense(x)
            fns["sparse_model"] = lambda mask=mask: _masked_call(sparse, mask, x)
        flops = {name: _flops(fn) for name, fn in fns.items()}
        with torch.no_grad():
            timed = {n: _synced(f, device) for n, f in fns.items()}
            times = interleaved_medians(timed, repeats if batch == 1 else 2, warmup=1)
            sparse_blocks()
            last_keep = point.state.mask.float().mean().item()
            ran_dense = [n for n, m in sparse.named_modules()
                         if isinstance(m, SparseBlock) and m.last_ran_dense]
        row = {
            "after": after,
            "batch": batch,
            "threads": threads,
            "mask": kind,
            "keep": keep if kind != "learned" else round(mask.mean().item(), 4),
            "pool": pool,
            "dense_threshold": threshold,
            "blocks_run_dense": ran_dense,
            "keep_at_last_block": round(last_keep, 4),
            "flops": flops,
            "seconds": times,
            "blocks_flops_ratio": flops["sparse_blocks"] / flops["dense_blocks"],
            "blocks_time_ratio": times["sparse_blocks"] / times["dense_blocks"],
        }
        if whole:
            row["model_flops_ratio"] = flops["sparse_model"] / flops["dense_model"]
            row["model_time_ratio"] = times["sparse_model"] / times["dense_model"]
            row["top1_agrees_with_dense_masked"] = _agreement(sparse, dense_masked, mask, x)
        if after == "layer2":
            row["layer3_block_flops_share"] = gather_shares(pool_mask(cells, 2, (14, 14), pool))
        if row["keep"] <= 0.5:
            row["goal_time_held"] = row["blocks_time_ratio"] <= 1.5 * row["keep"]
            row["goal_flops_held"] = row["blocks_flops_ratio"] <= 1.2 * row["keep"]
        rows.append(row)
        _print(row)
    return rows


def _masked_call(model: nn.Module, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with masking(model, mask):
        return model(x)


def _agreement(sparse: nn.Module, dense_masked: nn.Module, mask, x) -> float:
    """Share of the batch whose sparse top-1 equals the dense masked-residual model's."""
    with torch.no_grad():
        want = _masked_call(dense_masked, mask, x).argmax(1)
        return (_masked_call(sparse, mask, x).argmax(1) == want).float().mean().item()


def _print(row: dict) -> None:
    line = (
        f"{row['after']:6s} {row.get('pool', 'max'):7s} b={row['batch']:<2d} t={row['threads']} "
        f"{row['mask']:6s} "
        f"keep {row['keep']:.2f} (last block {row['keep_at_last_block']:.2f}) | blocks: "
        f"FLOPs x{row['blocks_flops_ratio']:.3f}  time x{row['blocks_time_ratio']:.3f} "
        f"({1 / row['blocks_time_ratio']:.2f}x faster)"
    )
    if "model_time_ratio" in row:
        line += (
            f" | model: FLOPs x{row['model_flops_ratio']:.3f} time x{row['model_time_ratio']:.3f}"
            f" top-1 agree {row['top1_agrees_with_dense_masked']:.2f}"
        )
    if "layer3_block_flops_share" in row:
        shares = " ".join(f"{k} {v:.2f}" for k, v in row["layer3_block_flops_share"].items())
        line += f" | layer3 block FLOPs share: {shares}"
    if row.get("blocks_run_dense"):
        line += f" | dense: {len(row['blocks_run_dense'])} blocks"
    if "goal_time_held" in row:
        line += f" | goal time {'held' if row['goal_time_held'] else 'NOT held'}"
        line += f", FLOPs {'held' if row['goal_flops_held'] else 'NOT held'}"
    print(line, flush=True)


def crossover(batches=(1, 32), shares=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0), repeats: int = 5,
              device: str = "cpu") -> list[dict]:
    """Per block: time sparse (always) / dense masked at kept shares of its output grid.

    Also sparse / the plain block (the torchvision block, no mask: what a dense
    model pays).

    ResNet-50 at 224 px, random weights, 1 thread; blocks ``layer3.0`` (28 -> 14,
    striding), ``layer3.1`` (14), ``layer4.0`` (14 -> 7), ``layer4.1`` (7); blob
    masks at the block's output grid (repeated to the input grid, so that the
    max-pool gives them back exactly).
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).to(device).eval()
    model = masked_residual(copy.deepcopy(net), "layer2")
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        inputs = {}
        with torch.no_grad():
            h = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x.to(device)))))))
            inputs["layer3.0"] = h
            inputs["layer3.1"] = net.layer3[0](h)
            inputs["layer4.0"] = net.layer3(h)
            inputs["layer4.1"] = net.layer4[0](inputs["layer4.0"])
        for name, h in inputs.items():
            masked = model.get_submodule(name)
            assert isinstance(masked, MaskedBlock)
            sparse = SparseBlock(masked, dense_threshold=None).eval()
            s = masked.stride
            grid = (-(-h.shape[2] // s), -(-h.shape[3] // s))
            for share in shares:
                out_mask = blob_mask(batch, grid, share, seed=2).bool().to(device)
                in_mask = out_mask.repeat_interleave(s, 1).repeat_interleave(s, 2)
                in_mask = in_mask[:, : h.shape[2], : h.shape[3]]

                def call(block, h=h, in_mask=in_mask, state=masked.state):
                    def go():
                        state.mask, state.fill = in_mask, h.new_zeros(h.shape[1])
                        return block(h)

                    return _synced(go, device)

                with torch.no_grad():
                    times = interleaved_medians(
                        {"sparse": call(sparse), "dense_masked": call(masked),
                         "plain": call(masked.block)}, repeats, warmup=1)
                row = {"block": name, "batch": batch, "keep_at_block": share,
                       "seconds": times, "time_ratio": times["sparse"] / times["dense_masked"],
                       "time_ratio_vs_plain": times["sparse"] / times["plain"]}
                rows.append(row)
                print(f"crossover {name} b={batch:<2d} keep {share:.1f}: sparse / dense masked "
                      f"x{row['time_ratio']:.2f}, sparse / plain block "
                      f"x{row['time_ratio_vs_plain']:.2f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The README table of a run's rows (``--table PATH``)."""
    lines = [
        "| mask after | pool | batch | threads | mask | keep | keep at last block | blocks FLOPs "
        "sparse/dense | blocks time sparse/dense | speed-up | model FLOPs | model time | "
        "top-1 = dense masked |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        model = (
            (f"{r['model_flops_ratio']:.2f}", f"{r['model_time_ratio']:.2f}",
             f"{r['top1_agrees_with_dense_masked']:.2f}")
            if "model_time_ratio" in r
            else ("", "", "")
        )  # fmt: skip
        lines.append(
            f"| {r['after']} | {r.get('pool', 'max')} | {r['batch']} | {r['threads']} | "
            f"{r['mask']} | {r['keep']:.2f} | "
            f"{r['keep_at_last_block']:.2f} | {r['blocks_flops_ratio']:.2f} | "
            f"{r['blocks_time_ratio']:.2f} | {1 / r['blocks_time_ratio']:.2f}x | "
            f"{model[0]} | {model[1]} | {model[2]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 1 thread, after layer2")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--table", default=None, metavar="JSON", help="print a run's table")
    parser.add_argument("--crossover", action="store_true",
                        help="ours: per-block sparse/dense time at kept shares 0.5..1")
    parser.add_argument("--pools", nargs="+", default=None, choices=("max", "nearest"),
                        help="ours: mask at striding blocks, max (the issue's) / nearest")
    parser.add_argument("--dense-threshold", default=str(DENSE_THRESHOLD),
                        help="ours: run a block dense from this kept share ('none': never); "
                        "default energymask.sparse.DENSE_THRESHOLD with --pools / --learned")
    parser.add_argument("--learned", default=None, metavar="PT",
                        help="learned masks (N, h, w) from results_sparse.py --save-masks")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())["rows"]))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_sparse: --device cuda needs a CUDA GPU, but torch.cuda.is_available() is "
            "False on this machine; run without --device (CPU)"
        )
    keeps = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    threshold = None if args.dense_threshold == "none" else float(args.dense_threshold)
    if args.crossover:
        rows = crossover(repeats=args.repeats or 5, device=args.device)
        write_json(args.json, {"machine": machine(), "device": args.device, "rows": rows})
        return 0
    if args.pools or args.learned:
        if args.learned:
            LEARNED["masks"] = torch.load(args.learned)
        rows = []
        for pool in args.pools or ["max"]:
            for batch in (1, 32):
                kinds = ["learned"] if args.learned else ["blob"] + ["random"] * (batch > 1)
                for kind in kinds:
                    ks = [0.0] if kind == "learned" else [0.1, 0.3, 0.5, 0.7, 0.9]
                    rows += measure("layer2", batch, 1, kind, ks, batch == 1,
                                    args.repeats or 5, args.device, pool, threshold)
                    write_json(args.json, {"machine": machine(), "device": args.device,
                                           "rows": rows})
        return 0
    if args.quick:
        grid = [("layer2", 1, 1, "blob", [0.1, 0.3, 0.5], True)]
        repeats = args.repeats or 3
    else:
        grid = []  # most telling first: the JSON is rewritten after each group
        for after in ("layer2", "layer1"):
            grid.append((after, 1, 1, "blob", keeps, True))
            grid.append((after, 1, 1, "random", keeps, False))
            grid.append((after, 32, 1, "blob", keeps, False))
            grid.append((after, 1, 2, "blob", keeps, True))
            grid.append((after, 32, 2, "blob", keeps, False))
            grid.append((after, 32, 1, "random", keeps, False))
        repeats = args.repeats or 5
    rows = []
    for after, batch, threads, kind, ks, whole in grid:
        rows += measure(after, batch, threads, kind, ks, whole, repeats, args.device)
        write_json(args.json, {"machine": machine(), "device": args.device, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
