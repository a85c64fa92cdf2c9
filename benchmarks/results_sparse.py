"""Accuracy of sparse execution after a learned hard mask (issue 21; ours, docs/design.md §11).

On cluttered digits (64 px, 10 classes), one run trains, from scratch and
with the same seed and data:

- ``dense``: a torchvision ResNet-18 (1-channel stem, no weights) as it is;
- ``masked``: the same network with an ERSM layer after ``layer1`` with
  ``gate="hard"`` (ours: the binary mask 1[keep ≥ 0.5] in training and
  inference, straight-through gradient; λ = γ = 1e-3, T = 1 or ``--temperature``,
  bias 0) and the
  masked-residual semantics on every block after it
  (``masked_residual(model, after="layer1")``), so that training executes
  what is measured; ``--keep-target`` adds ours, a keep budget.

Then, side by side in one run on the test split: accuracy of the dense
baseline, of the masked model run dense (``MaskedBlock``: every block at every
position, then ``where``) and of ``sparsify(masked)`` (blocks computed at the
kept positions only; its logits must equal the dense masked model's to float
error, the largest difference is printed), the executed keep ratio of the
learned masks at the mask and at each stage's grid, FLOPs
(``torch.utils.flop_counter``) and wall time (interleaved medians,
``_timing.py``) of the blocks after the mask and of the whole model, sparse
against dense masked (same weights) and against the dense baseline. The same
trained weights are also measured with given blob masks (``sparse_masks``)
at keep 0.1 / 0.3 / 0.5 (accuracy, FLOPs, time).

    python benchmarks/results_sparse.py --json benchmarks/results/sparse_accuracy.json
    python benchmarks/results_sparse.py --quick            # tiny data, a minute
    python benchmarks/results_sparse.py --table benchmarks/results/sparse_accuracy.json

``--pool nearest`` trains and measures the mask downsampled by taking the
top-left cell of each window at a striding block instead of max-pooling it
(ours; docs/design.md §11). ``--temperature T [T ...]`` and ``--block-gradient
off on`` (ours: each block's straight-through gradient reaches the mask,
``masked_residual(..., block_gradient=True)``) train one masked model per
combination. ``--save-masks PATH`` writes the learned test
masks (N, 16, 16) of the first masked run (the plan's first pool, keep
target, temperature and block-gradient setting) for ``bench_sparse.py
--learned PATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine, write_json  # noqa: E402

from energymask.data.cluttered_digits import make_splits  # noqa: E402
from energymask.ersm import EnergyMask2d, collect_regularizer, forcing  # noqa: E402
from energymask.masked_residual import mask_point, masked_residual  # noqa: E402
from energymask.sparse import sparsify  # noqa: E402
from energymask.sparse_masks import blob_mask  # noqa: E402
from energymask.surgery import insert_after  # noqa: E402

AFTER = "layer1"
LATER = ("layer2", "layer3", "layer4")
#: ERSM settings: the application's (λ = γ = 1e-3, T = 1, bias 0) with ours, gate="hard".
ERSM = {"lam": 1e-3, "gamma": 1e-3, "temperature": 1.0, "bias_init": 0.0, "gate": "hard"}


def resnet18_digits() -> nn.Module:
    """torchvision ResNet-18 (no weights) with a 1-channel stem and 10 classes, for 64 px."""
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    return net


def masked_resnet18(keep_target: float | None, pool: str, temperature: float = 1.0,
                    block_gradient: bool = False) -> nn.Module:
    """ResNet-18 with a hard ERSM layer after ``layer1``, masked-residual blocks after it."""
    net = resnet18_digits()
    settings = {**ERSM, "temperature": temperature, "keep_target": keep_target}
    insert_after(net, AFTER, lambda name, c: EnergyMask2d(c, **settings))
    return masked_residual(net, AFTER, pool=pool, block_gradient=block_gradient)


def train(model: nn.Module, data, epochs: int, lr: float, batch: int, seed: int) -> float:
    """Adam with a cosine schedule, cross-entropy plus the ERSM regulariser; returns seconds."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (-(-len(data.labels) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data.labels), generator=g)
        total, correct = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x, y = data.images[idx], data.labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            reg = collect_regularizer(model)
            if reg is not None:
                loss = loss + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        n = len(order)
        _log(f"    epoch {epoch + 1}/{epochs}: loss {total / n:.3f}, train acc {correct / n:.3f}")
    model.eval()
    return time.perf_counter() - start


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 100, masks=None) -> torch.Tensor:
    """Logits (N, 10); ``masks`` (N, 16, 16): given masks forced on the ERSM layer."""
    outs = []
    for i in range(0, len(images), batch):
        if masks is None:
            outs.append(model(images[i : i + batch]))
        else:
            with forcing(ersm_layer(model), masks[i : i + batch]):
                outs.append(model(images[i : i + batch]))
    return torch.cat(outs)


def ersm_layer(model: nn.Module) -> EnergyMask2d:
    return next(m for m in model.modules() if isinstance(m, EnergyMask2d))


@torch.no_grad()
def learned_masks(model: nn.Module, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """The executed binary masks (N, 16, 16) of the ERSM layer on ``images``."""
    layer, masks = ersm_layer(model), []
    for i in range(0, len(images), batch):
        model(images[i : i + batch])
        masks.append(layer.last_keep.clone())
    return torch.cat(masks)


@torch.no_grad()
def stage_keeps(model: nn.Module, images: torch.Tensor, masks=None) -> dict[str, float]:
    """Kept share at the mask and at each later stage's output grid (eval, mean over images)."""
    point = mask_point(model)
    keeps: dict[str, list[float]] = {AFTER: [], **{s: [] for s in LATER}}
    for i in range(0, len(images), 100):
        sl = slice(i, i + 100)
        seen: dict[str, float] = {}

        def hook(name, seen=seen):
            def run(_m, _i, _o):
                seen[name] = point.state.mask.float().mean().item()

            return run

        handles = [getattr(model, s).register_forward_hook(hook(s)) for s in (AFTER, *LATER)]
        try:
            predict(model, images[sl], masks=None if masks is None else masks[sl])
        finally:
            for h in handles:
                h.remove()
        for s in keeps:
            keeps[s].append(seen[s] * len(images[sl]))
    return {s: sum(v) / len(images) for s, v in keeps.items()}


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def cost(dense: nn.Module, masked: nn.Module, sparse: nn.Module, x: torch.Tensor,
         mask: torch.Tensor | None, repeats: int) -> dict:
    """FLOPs and interleaved median seconds: blocks after the mask and whole model.

    ``mask`` (B, 16, 16): given; None: the ERSM layer's learned mask. Blocks =
    ``layer2..layer4`` on the mask point's output, dense masked (MaskedBlock:
    every position, then ``where``) against sparse; whole model: dense
    baseline, dense masked, sparse.
    """
    with torch.no_grad():
        if mask is None:
            masked(x)
            mask = ersm_layer(masked).last_keep.clone()
        h = masked.maxpool(masked.relu(masked.bn1(masked.conv1(x))))
        h = masked.layer1.module.block(h) * mask[:, None]
    cells = mask.bool()

    def blocks(model):
        point = mask_point(model)

        def run():
            point.state.mask, point.state.fill = cells, h.new_zeros(h.shape[1])
            out = h
            for s in LATER:
                out = getattr(model, s)(out)
            return out

        return run

    def whole(model):
        return lambda: predict(model, x, batch=len(x), masks=None if mask is None else mask)

    fns = {"dense_masked_blocks": blocks(masked), "sparse_blocks": blocks(sparse),
           "dense_model": lambda: dense(x), "dense_masked_model": whole(masked),
           "sparse_model": whole(sparse)}
    flops = {k: _flops(f) for k, f in fns.items()}
    dense_blocks = lambda: dense.layer4(dense.layer3(dense.layer2(h)))  # noqa: E731
    flops["dense_blocks"] = _flops(dense_blocks)
    with torch.no_grad():
        seconds = interleaved_medians({**fns, "dense_blocks": dense_blocks}, repeats, warmup=1)
    return {
        "flops": flops,
        "seconds": seconds,
        "blocks_flops_ratio": flops["sparse_blocks"] / flops["dense_masked_blocks"],
        "blocks_time_ratio": seconds["sparse_blocks"] / seconds["dense_masked_blocks"],
        "model_flops_ratio": flops["sparse_model"] / flops["dense_masked_model"],
        "model_time_ratio": seconds["sparse_model"] / seconds["dense_masked_model"],
        "model_time_vs_baseline": seconds["sparse_model"] / seconds["dense_model"],
        "model_flops_vs_baseline": flops["sparse_model"] / flops["dense_model"],
    }


def evaluate(dense, masked, test, args) -> dict:
    """Accuracies, keeps, exactness and cost of the trained models (learned and given masks)."""
    sparse = sparsify(masked).eval()
    images, labels = test.images, test.labels
    dense_logits = predict(dense, images)
    masked_logits = predict(masked, images)
    sparse_logits = predict(sparse, images)
    learned = learned_masks(masked, images)
    acc = lambda logits: (logits.argmax(1) == labels).float().mean().item()  # noqa: E731
    out = {
        "dense_accuracy": acc(dense_logits),
        "learned": {
            "masked_dense_accuracy": acc(masked_logits),
            "sparse_accuracy": acc(sparse_logits),
            "max_abs_logit_difference": (sparse_logits - masked_logits).abs().max().item(),
            "max_relative_logit_difference": _relative(sparse_logits, masked_logits),
            "keep": stage_keeps(masked, images),
            "all_kept_images": (learned.flatten(1).mean(1) == 1).float().mean().item(),
            "none_kept_images": (learned.flatten(1).mean(1) == 0).float().mean().item(),
        },
        "sparse_report": sparse.sparse_report,
    }
    x, n = images[: args.time_batch], args.time_batch
    out["learned"].update(cost(dense, masked, sparse, x, None, args.repeats))
    _print("learned", out["learned"], out["dense_accuracy"])
    out["given"] = {}
    for keep in (0.1, 0.3, 0.5):
        masks = blob_mask(len(images), tuple(learned.shape[-2:]), keep, seed=1)
        m_logits = predict(masked, images, masks=masks)
        s_logits = predict(sparse, images, masks=masks)
        row = {"masked_dense_accuracy": acc(m_logits), "sparse_accuracy": acc(s_logits),
               "max_abs_logit_difference": (s_logits - m_logits).abs().max().item(),
               "max_relative_logit_difference": _relative(s_logits, m_logits),
               "keep": stage_keeps(masked, images, masks)}
        row.update(cost(dense, masked, sparse, x, masks[:n], args.repeats))
        out["given"][str(keep)] = row
        _print(f"blob {keep}", row, out["dense_accuracy"])
    return out


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|: float error at the logits' own scale."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def _print(label: str, r: dict, dense_acc: float) -> None:
    k = r["keep"]
    print(f"{label:9s} acc dense {dense_acc:.3f} masked {r['masked_dense_accuracy']:.3f} sparse "
          f"{r['sparse_accuracy']:.3f} (max |Δlogit| {r['max_abs_logit_difference']:.1e}, relative "
          f"{r['max_relative_logit_difference']:.1e}) | keep "
          + " ".join(f"{s} {v:.2f}" for s, v in k.items())
          + f" | blocks FLOPs x{r['blocks_flops_ratio']:.2f} time x{r['blocks_time_ratio']:.2f}"
          f" | model FLOPs x{r['model_flops_ratio']:.2f} time x{r['model_time_ratio']:.2f}"
          f" (vs baseline x{r['model_time_vs_baseline']:.2f})", flush=True)


def markdown(result: dict) -> str:
    """The README table of a run (``--table PATH``)."""
    lines = [
        "| model | masks | test acc dense baseline | test acc masked, run dense | test acc "
        "sparse | keep at mask (16x16) / 8x8 / 4x4 / 2x2 | blocks FLOPs sparse/dense | "
        "blocks time sparse/dense | model FLOPs / time sparse/dense |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for run in result["runs"]:
        base = run["dense_accuracy"]
        rows = [("learned", run["learned"])] + [(f"given blob {k}", r)
                                                for k, r in run["given"].items()]
        for masks, r in rows:
            keeps = " / ".join(f"{v:.2f}" for v in r["keep"].values())
            lines.append(
                f"| {run['label']} | {masks} | {base:.3f} | {r['masked_dense_accuracy']:.3f} | "
                f"{r['sparse_accuracy']:.3f} | {keeps} | {r['blocks_flops_ratio']:.2f} | "
                f"{r['blocks_time_ratio']:.2f} | {r['model_flops_ratio']:.2f} / "
                f"{r['model_time_ratio']:.2f} |")
    return "\n".join(lines)


def seeds_markdown(results: list[dict]) -> str:
    """Learned-mask rows of several runs (seeds) grouped by label: mean ± std over runs."""
    groups: dict[str, list[tuple[float, dict]]] = {}
    for result in results:
        for run in result["runs"]:
            groups.setdefault(run["label"], []).append((run["dense_accuracy"], run["learned"]))
    lines = ["| model | runs | test acc dense baseline | test acc sparse | baseline − sparse "
             "(points) | keep at mask (16x16) | keep at 2x2 | blocks FLOPs sparse/dense | "
             "blocks time sparse/dense |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def stat(values: list[float], digits: int = 3) -> str:
        mean = f"{statistics.fmean(values):.{digits}f}"
        return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    for label, rows in groups.items():
        keeps = [list(r["keep"].values()) for _, r in rows]
        lines.append(
            f"| {label} | {len(rows)} | {stat([d for d, _ in rows])} | "
            f"{stat([r['sparse_accuracy'] for _, r in rows])} | "
            f"{stat([100 * (d - r['sparse_accuracy']) for d, r in rows], 1)} | "
            f"{stat([k[0] for k in keeps], 2)} | "
            f"{stat([k[-1] for k in keeps], 2)} | "
            f"{stat([r['blocks_flops_ratio'] for _, r in rows], 2)} | "
            f"{stat([r['blocks_time_ratio'] for _, r in rows], 2)} |")
    return "\n".join(lines)


def _target(text: str) -> float | None:
    return None if text == "none" else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 images, 1 epoch")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-target", type=_target, nargs="+", default=[None],
                        help="ours: keep budgets of the masked models; 'none': no budget "
                        "(the authors')")
    parser.add_argument("--pool", nargs="+", default=["max"], choices=("max", "nearest"),
                        help="mask at striding blocks: max-pool (the issue's) or nearest (ours); "
                        "with both, 'nearest' trains only the first --keep-target that is not "
                        "'none' (the budget of 2 shared cores)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0],
                        help="T of the masked models' ERSM layers (issue 20's remedy: 0.1)")
    parser.add_argument("--block-gradient", nargs="+", default=["off"], choices=("off", "on"),
                        help="ours: 'on' sends each block's straight-through gradient to the "
                        "mask (masked_residual(..., block_gradient=True))")
    parser.add_argument("--time-batch", type=int, default=64, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--save-masks", default=None, help="write the learned test masks here")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="print a run's table; with several runs (seeds), the learned-mask "
                        "rows as mean ± std per model")
    args = parser.parse_args(argv)
    if args.table:
        results = [json.loads(Path(path).read_text()) for path in args.table]
        print(markdown(results[0]) if len(results) == 1 else seeds_markdown(results))
        return 0
    if args.quick:
        args.num_train, args.num_test, args.epochs, args.repeats = 256, 128, 1, 2
    torch.set_num_threads(args.threads)
    splits = make_splits(args.num_train, 10, args.num_test, seed=args.seed)
    train_set, test = splits["train"], splits["test"]
    result = {"machine": machine(), "args": {k: v for k, v in vars(args).items()
                                             if k not in ("json", "table")}, "runs": []}
    torch.manual_seed(args.seed)
    dense = resnet18_digits()
    _log("dense baseline")
    dense_seconds = train(dense, train_set, args.epochs, args.lr, args.batch, args.seed)
    plan = [(target, "max") for target in args.keep_target if "max" in args.pool]
    if "nearest" in args.pool:
        targets = [t for t in args.keep_target if t is not None] if "max" in args.pool else []
        plan += [(t, "nearest") for t in (targets[:1] or args.keep_target)]
    variants = [(t, g == "on") for t in args.temperature for g in args.block_gradient]
    for (target, pool), (temperature, block_gradient) in (
            (p, v) for p in plan for v in variants):
        torch.manual_seed(args.seed)
        masked = masked_resnet18(target, pool, temperature, block_gradient)
        label = (f"hard ERSM after layer1, T {temperature:g}, pool {pool}"
                 + ("" if target is None else f", keep target {target}")
                 + (", block gradient" if block_gradient else ""))
        _log(label)
        seconds = train(masked, train_set, args.epochs, args.lr, args.batch, args.seed)
        run = {"label": label, "keep_target": target, "pool": pool,
               "temperature": temperature, "block_gradient": block_gradient,
               "train_seconds": {"dense": dense_seconds, "masked": seconds}}
        run.update(evaluate(dense, masked, test, args))
        result["runs"].append(run)
        if args.save_masks and len(result["runs"]) == 1:
            torch.save(learned_masks(masked, test.images).bool(), args.save_masks)
        write_json(args.json, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
