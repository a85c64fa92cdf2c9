"""A model cut at one layer, from what its forward executes (docs/design.md §6).

The deletion test re-runs a network hundreds of times with only the ERSM
layer's mask changed. Everything computed before the layer does not depend on
the mask, so it is computed once per batch (the **prefix**); only the layer and
what follows (the **suffix**) run again, many masks stacked along the batch.

How the cut is found: ``torch.fx`` traces the model's ``forward`` with every
``torch.nn`` layer and every layer of this package (ERSM, PB-EDropout, DropBlock) as a leaf
(an :class:`~energymask.surgery.InsertedAfter` wrapper is traced as its block
then its layer). The suffix is the layer's node and every node that depends on
it. Every value computed before the cut and read after it crosses the cut: the
layer's input and any skip tensor (a residual around the layer). Batch tensors
that cross are cached and repeated along the batch for stacked masks; values
without a batch (parameters, constants, shapes) are recomputed in the suffix.

A split is **refused** (:class:`CannotSplit`, with the reason) when it cannot
be shown to be exact:

- the forward cannot be traced (data-dependent control flow, Python on
  tensors...) or a traced module has forward hooks that a graph would skip;
- the layer runs more than once per forward, or not as a node of the graph;
- the model's output does not depend on the layer, or is not a tensor;
- a batch-dependent tensor without a batch dimension crosses the cut;
- on the first batch, the graph's output differs from ``model(x)``, the
  suffix's output under a forced mask differs from ``model(x)`` under that
  mask (both compared bit for bit), or stacking two masks changes the result
  (a suffix that mixes the samples of a batch).
"""

from __future__ import annotations

import inspect

import torch
import torch.fx as fx
from torch import Tensor, nn

from energymask.dropblock import DropBlock2d
from energymask.ersm import EnergyMask2d, forcing
from energymask.pbedropout import PBEDropout2d
from energymask.surgery import InsertedAfter

__all__ = ["CannotSplit", "Split", "split_at"]


class CannotSplit(ValueError):
    """Why a model cannot be cut exactly at a layer."""


# This package's layers branch on their mode in Python, so fx runs them whole.
_LEAVES = (EnergyMask2d, PBEDropout2d, DropBlock2d)


class _Tracer(fx.Tracer):
    """``torch.nn`` layers and this package's layers are leaves; InsertedAfter is traced through."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if isinstance(m, InsertedAfter):  # its 4D check is a Python test; the layer checks too
            out = self.call_module(m.block, m.block.forward, args, kwargs)
            return self.call_module(m.layer, m.layer.forward, (out,), {})
        return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    for name, m in model.named_modules():
        hooked = m._forward_hooks or m._forward_pre_hooks
        if hooked and not (name and tracer.is_leaf_module(m, name)):
            raise CannotSplit(f"module {name or 'the model'!r} has forward hooks that a graph "
                              "would not run")
    params = list(inspect.signature(model.forward).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                            params[0].POSITIONAL_OR_KEYWORD):
        raise CannotSplit("the model's forward does not take the images as its first argument")
    # the other arguments keep their defaults (the deletion test passes x alone)
    concrete = {p.name: p.default for p in params[1:] if p.default is not p.empty}
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # any tracing failure means: no proven split
        raise CannotSplit(f"torch.fx cannot trace the forward ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return fx.GraphModule(tracer.root, graph)


def _repeat(value: Tensor, times: int) -> Tensor:
    """``times`` copies along dim 0 (always a copy: in-place ops must not touch the cache)."""
    return value.repeat(times, *([1] * (value.dim() - 1)))


class Split:
    """A model cut at one layer; build it with :func:`split_at`.

    ``prefix(x)`` runs the network up to the cut and returns the values that
    cross it; ``suffix(cut)`` runs the layer and the rest on them.
    """

    def __init__(self, gm: fx.GraphModule, layer: nn.Module, layer_node: fx.Node,
                 prefix_nodes: list[fx.Node], plans: dict[bool, tuple[set, list]]) -> None:
        self.gm, self.layer = gm, layer
        self._input = layer_node.args[0]
        self._prefix, self._plans = prefix_nodes, plans
        crossing = set().union(*(c for c, _ in plans.values()))
        last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(prefix_nodes):
            for a in n.all_input_nodes:
                last_use[a] = i
        # values freed as soon as the prefix no longer needs them (memory of real backbones)
        self._free = [[a for a in n.all_input_nodes if last_use[a] == i and a not in crossing]
                      for i, n in enumerate(prefix_nodes)]
        self._crossing = crossing

    def _run(self, nodes: list[fx.Node], env: dict, x: Tensor | None = None,
             free: list[list[fx.Node]] | None = None):
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        interp.env = env
        interp.args_iter = iter(() if x is None else (x,))
        out = None
        for i, n in enumerate(nodes):
            out = env[n] = interp.run_node(n)
            for a in free[i] if free else ():
                del env[a]
        return out

    def prefix(self, x: Tensor) -> dict[fx.Node, Tensor]:
        """The values crossing the cut for images ``x`` (B, ...): batch tensors (B, ...)."""
        env: dict = {}
        self._run(self._prefix, env, x, self._free)
        return {n: env[n] for n in self._crossing}

    def features(self, cut: dict[fx.Node, Tensor]) -> Tensor:
        """The layer's input in ``cut``."""
        return cut[self._input]

    def suffix(self, cut: dict[fx.Node, Tensor], features: Tensor | None = None,
               repeat: int | None = None, through_input: bool = False) -> Tensor:
        """The model's output from the cut: ``features`` replace the layer's input.

        The cached values are repeated ``repeat`` times along the batch (default:
        ``features.shape[0] // B``, or 1), so the output is (repeat·B, ...),
        sample j·B + i being sample i under the j-th stacked mask or features.
        ``through_input=False``: only the layer sees ``features`` (the other
        readers of its input, a skip path, keep the cached input), as when a
        hook replaces the layer's input. ``True``: every reader of the layer's
        input sees ``features`` (gradients w.r.t. the input follow every path).
        """
        batch = self.features(cut).shape[0]
        if repeat is None:
            repeat = 1 if features is None else features.shape[0] // batch
        crossing, nodes = self._plans[through_input]
        env = {n: _repeat(cut[n], repeat) for n in crossing if n is not self._input or
               features is None}
        if features is not None:
            env[self._input] = features
        return self._run(nodes, env)


def split_at(model: nn.Module, layer: EnergyMask2d, x: Tensor) -> Split:
    """Cut ``model`` (in eval mode, without gradients) at ``layer``, checked on images ``x``.

    Raises:
        CannotSplit: with the reason, when no exact split is found (module docstring).
    """
    with forcing(layer, None):
        # first, so that one-shot hooks (surgery's repeated-call check) are gone when tracing
        eager = model(x)
    gm = _trace(model)
    nodes = list(gm.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and gm.get_submodule(n.target) is layer]
    if len(calls) != 1:
        raise CannotSplit(f"the layer is called {len(calls)} times in the traced forward "
                          "(a split needs exactly one call)")
    (layer_node,) = calls
    if len(layer_node.args) != 1 or layer_node.kwargs or not isinstance(layer_node.args[0],
                                                                        fx.Node):
        raise CannotSplit("the layer is not called with one tensor argument")
    if not any(n.op == "output" for n in _descendants([layer_node])):
        raise CannotSplit("the model's output does not depend on the layer")
    depends: dict[fx.Node, bool] = {}  # depends on the images
    for n in nodes:
        depends[n] = n.op == "placeholder" or any(depends[a] for a in n.all_input_nodes)

    # one run of the graph records what each value is; its output must be model(x)
    meta: dict[fx.Node, tuple[bool, tuple]] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            meta[n] = (isinstance(out, Tensor), tuple(out.shape) if isinstance(out, Tensor) else ())
            return out

    with forcing(layer, None):
        graph_out = _Recorder(gm).run(x)
    if not isinstance(eager, Tensor):
        raise CannotSplit(f"the model's output is a {type(eager).__name__}, not a tensor")
    if not isinstance(graph_out, Tensor) or not torch.equal(graph_out, eager):
        raise CannotSplit("the traced graph's output differs from model(x)")

    if not isinstance(layer_node.args[0], fx.Node) or not meta[layer_node.args[0]][0]:
        raise CannotSplit("the layer's input is not a tensor")
    plans = {
        False: _plan(nodes, [layer_node], meta, depends, x.shape[0]),
        True: _plan(nodes, list(layer_node.args[0].users), meta, depends, x.shape[0]),
    }
    if layer_node.args[0] not in plans[False][0]:
        raise CannotSplit("the layer's input is not a batch tensor")
    needed = _ancestors(set().union(*(c for c, _ in plans.values())))
    split = Split(gm, layer, layer_node, [n for n in nodes if n in needed], plans)
    _check(split, model, layer, x)
    return split


def _closure(start, step) -> set[fx.Node]:
    """``start`` and every node reached by repeating ``step`` (users or inputs)."""
    seen: set[fx.Node] = set()
    stack = list(start)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def _descendants(start) -> set[fx.Node]:
    return _closure(start, lambda n: n.users)


def _ancestors(start) -> set[fx.Node]:
    return _closure(start, lambda n: n.all_input_nodes)


def _plan(nodes: list[fx.Node], start: list[fx.Node], meta: dict, depends: dict,
          batch: int) -> tuple[set[fx.Node], list[fx.Node]]:
    """(values crossing the cut, nodes to run after it) for a suffix made of ``start``
    and every node that depends on it."""
    after = _descendants(start)
    crossing: set[fx.Node] = set()
    recompute: set[fx.Node] = set()
    stack = [a for n in after for a in n.all_input_nodes if a not in after]
    while stack:
        a = stack.pop()
        if a in crossing or a in recompute:
            continue
        is_tensor, shape = meta[a]
        if depends[a] and is_tensor:
            if not shape or shape[0] != batch:
                raise CannotSplit(f"value {a.name!r} of shape {shape} crosses the cut without "
                                  f"the batch dimension ({batch})")
            crossing.add(a)
        elif a.op == "placeholder":
            raise CannotSplit(f"input {a.name!r} is not a tensor")
        else:  # no batch in it: parameters, constants, shapes are recomputed after the cut
            recompute.add(a)
            stack.extend(a.all_input_nodes)
    return crossing, [n for n in nodes if n in after or n in recompute]


def _check(split: Split, model: nn.Module, layer: EnergyMask2d, x: Tensor) -> None:
    """Bit-for-bit equality with model(x) under a forced mask; stacked masks stay apart."""
    cut = split.prefix(x)
    with forcing(layer, None):
        layer(split.features(cut))
    grid = tuple(layer.last_logits.shape)
    gen = torch.Generator().manual_seed(0)
    some = (torch.rand(grid, generator=gen) < 0.5).float().to(x.device)
    ones = torch.ones_like(some)
    with forcing(layer, some):
        eager_some, fast_some = model(x), split.suffix(cut)
    if not torch.equal(eager_some, fast_some):
        raise CannotSplit("the suffix's output differs from model(x) under the same forced mask")
    with forcing(layer, ones):
        eager_ones = model(x)
    with forcing(layer, torch.cat([ones, some])):
        stacked = split.suffix(cut, repeat=2)
    scale = float(torch.cat([eager_ones, eager_some]).detach().abs().max().clamp_min(1.0))
    for got, want in ((stacked[: x.shape[0]], eager_ones), (stacked[x.shape[0]:], eager_some)):
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
            raise CannotSplit("stacking masks along the batch changes the output: the network "
                              "after the layer mixes the samples of a batch")
