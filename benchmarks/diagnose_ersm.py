"""Why the authors' soft ERSM mask dims instead of selecting (issue 20; docs/design.md §3).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).
Three hypotheses, each measured:

1. Regulariser minima. Per token, R_i(z) = keep(z)·U(z) + keep(z)·P with
   keep = sigmoid(−z/T), U = λ softplus(z) and P = γ softplus(s) independent
   of z. Printed: keep·U/λ and keep·P/P and their z-derivatives on a grid of
   z, the maximum of keep·U, and the pairwise sums s on trained features.
2. Scale invariance after the mask. ERSM after ``layer2`` of ``small_cnn``
   is followed by conv (no bias) -> BatchNorm: in training BatchNorm uses
   the batch's statistics, so a uniform keep = c gives the same output for
   every c. In the frozen protocol the mask is followed by GAP -> linear ->
   softmax: a uniform c scales the logits (bias aside) and keeps the argmax.
   Printed: the change of the network's output when the keep map is
   multiplied by c (train-mode BatchNorm), and the frozen-protocol accuracy
   with keep = c everywhere.
3. Gradients on w and b over training (plain PyTorch loop, small_cnn with
   ERSM inside, bias 0): the task loss's and the regulariser's gradients on b
   and their norms on w, per epoch, with the keep map's mean and spread.
   The same for ours, ``gate="hard"``, beside it.

    python benchmarks/diagnose_ersm.py --json benchmarks/results/ersm_diagnosis.json \
        > benchmarks/results/ersm_diagnosis.md    # about 5 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import machine

from energymask.data.cluttered_digits import ClutteredDigits, make_splits
from energymask.ersm import EnergyMask2d, collect_regularizer
from energymask.models import Classifier, small_cnn
from energymask.surgery import insert_after

LAM = GAMMA = 1e-3  # the authors'


def regulariser_profile() -> dict:
    """keep·U and keep·P as functions of the logit z (T = 1)."""
    z = torch.linspace(-8, 8, 16001, dtype=torch.float64, requires_grad=True)
    keep = torch.sigmoid(-z)
    ku = keep * F.softplus(z)  # keep·U / λ
    kp = keep  # keep·P / P
    d_ku, = torch.autograd.grad(ku.sum(), z, retain_graph=True)
    d_kp, = torch.autograd.grad(kp.sum(), z)
    z, keep, ku, kp = z.detach(), keep.detach(), ku.detach(), kp.detach()
    top = int(ku.argmax())
    grid = [-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0]
    rows = []
    for v in grid:
        i = int(torch.argmin((z - v).abs()))
        rows.append({"z": v, "keep": float(keep[i]), "keepU_over_lam": float(ku[i]),
                     "d_keepU_dz_over_lam": float(d_ku[i]), "keepP_over_P": float(kp[i]),
                     "d_keepP_dz_over_P": float(d_kp[i])})
    return {"rows": rows, "keepU_max_at_z": float(z[top]), "keepU_max_over_lam": float(ku[top])}


def build(gate: str, seed: int) -> Classifier:
    torch.manual_seed(seed)
    net = small_cnn(1)
    insert_after(net, ["layer2"], lambda _n, c: EnergyMask2d(c, bias_init=0.0, gate=gate))
    return Classifier(net, net.out_channels, 10)


def ersm_of(model: Classifier) -> EnergyMask2d:
    return model.backbone.layer2.layer


def train(gate: str, data: ClutteredDigits, epochs: int, seed: int) -> tuple[Classifier, list]:
    """Adam lr 2e-3, batch 64; per epoch the means of the gradients' pieces."""
    model = build(gate, seed)
    layer = ersm_of(model)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        rec: dict[str, list[float]] = {k: [] for k in (
            "task_grad_b", "reg_grad_b", "task_grad_w_norm", "reg_grad_w_norm", "keep_mean",
            "keep_std_within_image", "soft_keep_undecided")}
        model.train()
        for idx in torch.randperm(len(data.images), generator=g).split(64):
            x, y = data.images[idx], data.labels[idx]
            loss = F.cross_entropy(model(x), y)
            reg = collect_regularizer(model)
            params = (layer.weight, layer.bias)
            task_w, task_b = torch.autograd.grad(loss, params, retain_graph=True)
            reg_w, reg_b = torch.autograd.grad(reg, params, retain_graph=True)
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            soft = torch.sigmoid(-layer.last_logits)
            rec["task_grad_b"].append(float(task_b))
            rec["reg_grad_b"].append(float(reg_b))
            rec["task_grad_w_norm"].append(float(task_w.norm()))
            rec["reg_grad_w_norm"].append(float(reg_w.norm()))
            rec["keep_mean"].append(float(layer.last_keep.mean()))
            rec["keep_std_within_image"].append(float(soft.flatten(1).std(1).mean()))
            rec["soft_keep_undecided"].append(float(((soft > 0.1) & (soft < 0.9)).float().mean()))
        history.append({k: statistics.fmean(v) for k, v in rec.items()})
        _log(f"  {gate} epoch {epoch}: " + ", ".join(f"{k} {v:.3g}"
                                                    for k, v in history[-1].items()))
    return model, history


@torch.no_grad()
def scale_invariance(model: Classifier, data: ClutteredDigits) -> dict:
    """Output change when the executed keep map is multiplied by c (train-mode BatchNorm),
    and accuracy with keep = c everywhere after the backbone (the frozen protocol's head)."""
    layer = ersm_of(model)
    x, y = data.images[:256], data.labels[:256]
    model.train()  # BatchNorm on batch statistics, as in training
    state = {k: v.clone() for k, v in model.state_dict().items()}  # running stats move
    ref = model(x)
    out = {}
    for c in (0.5, 0.1, 0.01):
        hook = layer.register_forward_hook(lambda _m, _i, o, c=c: o * c)
        changed = model(x)
        hook.remove()
        out[f"train_bn_rel_change_c={c}"] = float((changed - ref).norm() / ref.norm())
    model.load_state_dict(state)
    model.eval()
    feats = model.backbone(x)
    for c in (1.0, 0.5, 0.1, 0.01):
        logits = model.head(model.pool(feats * c).flatten(1))
        out[f"gap_head_acc_c={c}"] = float((logits.argmax(1) == y).float().mean())
    out["pairwise_sum_s_mean"] = _pairwise_sum(model, x)
    return out


def _pairwise_sum(model: Classifier, x: torch.Tensor) -> float:
    """Mean Σ_{j∈N8(i)} ⟨x̂_i, x̂_j⟩ of the features entering ERSM (interior tokens)."""
    seen = []
    hook = ersm_of(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model(x)
    hook.remove()
    feats = seen[0]
    unit = feats / (feats.norm(dim=1, keepdim=True) + 1e-6)
    total = torch.zeros_like(unit[:, 0])
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if (di, dj) != (0, 0):
                total += (unit * unit.roll((di, dj), (2, 3))).sum(1)
    return float(total[:, 1:-1, 1:-1].mean())


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def report(results: dict) -> str:
    prof = results["profile"]
    lines = ["Regulariser per token vs the logit z (T = 1): keep·U/λ has minima 0 at both "
             f"ends and its maximum {prof['keepU_max_over_lam']:.3f} at z = "
             f"{prof['keepU_max_at_z']:.2f}; keep·P/P falls monotonically (minimum: closed).", "",
             "| z | keep | keep·U/λ | d(keep·U)/dz /λ | keep·P/P | d(keep·P)/dz /P |",
             "|---|---|---|---|---|---|"]
    for r in prof["rows"]:
        lines.append(f"| {r['z']:+.0f} | {r['keep']:.4f} | {r['keepU_over_lam']:.4f} | "
                     f"{r['d_keepU_dz_over_lam']:+.4f} | {r['keepP_over_P']:.4f} | "
                     f"{r['d_keepP_dz_over_P']:+.4f} |")
    for gate in ("soft", "hard"):
        run = results[gate]
        label = "authors' soft mask" if gate == "soft" else "ours, gate='hard'"
        lines += ["", f"small_cnn + ERSM after layer2, bias 0, {label}: per epoch means",
                  "| epoch | dL/db (task) | dR/db (reg) | ‖dL/dw‖ | ‖dR/dw‖ | executed keep | "
                  "soft keep std in image | soft keep in (0.1, 0.9) |",
                  "|---|---|---|---|---|---|---|---|"]
        for e, h in enumerate(run["history"]):
            lines.append(f"| {e} | {h['task_grad_b']:+.2e} | {h['reg_grad_b']:+.2e} | "
                         f"{h['task_grad_w_norm']:.2e} | {h['reg_grad_w_norm']:.2e} | "
                         f"{h['keep_mean']:.3f} | {h['keep_std_within_image']:.3f} | "
                         f"{h['soft_keep_undecided']:.3f} |")
        s = run["scale"]
        lines.append("Scale: output change with keep × c, train-mode BatchNorm: " + ", ".join(
            f"c={c}: {s[f'train_bn_rel_change_c={c}']:.1e}" for c in (0.5, 0.1, 0.01))
            + "; GAP -> head accuracy with features × c: " + ", ".join(
            f"c={c}: {s[f'gap_head_acc_c={c}']:.3f}" for c in (1.0, 0.5, 0.1, 0.01))
            + f"; mean pairwise sum s = {s['pairwise_sum_s_mean']:.2f}.")
    lines += ["", f"(`python benchmarks/diagnose_ersm.py --num-train {results['num_train']} "
              f"--epochs {results['epochs']}`)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    splits = make_splits(args.num_train, 64, 512, seed=args.seed)
    results = {"machine": machine(), "num_train": args.num_train, "epochs": args.epochs,
               "profile": regulariser_profile()}
    for gate in ("soft", "hard"):
        model, history = train(gate, splits["train"], args.epochs, args.seed)
        results[gate] = {"history": history, "scale": scale_invariance(model, splits["test"])}
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
