"""Shared base of the callbacks that insert layers into a LightningModule.

Lightning's hook order (2.x, both packages, ``Trainer._run``): ``setup`` ->
``configure_model`` -> checkpoint restore (model weights, then callback states)
-> ``strategy.setup`` (which calls ``configure_optimizers``). Inserting layers in
``setup`` therefore puts them in the optimiser and lets a resumed checkpoint
fill their weights and buffers.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from energymask.surgery import (
    insert_after,
    insertable_names,
    inserted_layers,
    last_spatial_block,
    trace_calls,
)

from ._compat import Callback, package_of
from .random_state import warn_if_not_resumable

if TYPE_CHECKING:
    import lightning.pytorch as pl

def example_input(pl_module: pl.LightningModule) -> Tensor | None:
    """``pl_module.example_input_array`` (first element of a tuple/list), or None."""
    x = pl_module.example_input_array
    if isinstance(x, (tuple, list)):
        x = x[0] if x else None
    return x if isinstance(x, Tensor) else None


def rank_zero_info(trainer: pl.Trainer, message: str) -> None:
    """Log ``message`` on rank 0 through the Lightning package of ``trainer``."""
    package = package_of(trainer) or "lightning.pytorch"
    importlib.import_module(f"{package}.utilities").rank_zero_info(message)


#: The callback that inserts each kind of layer, and the layer's name in messages.
CALLBACKS = {"ersm": ("ERSMCallback", "ERSM"), "pbedropout": ("PBEDropoutCallback", "PB-EDropout")}


def missing_layers_error(checkpoint: dict[str, Any], module: nn.Module) -> ValueError | None:
    """The error to raise when ``checkpoint`` holds inserted layers that ``module`` lacks.

    Lightning would fail on the weights with its raw list of unexpected keys; this
    names the layers and the callback (with its saved settings) that puts them back.
    """
    present = inserted_layers(module)
    lines = []
    for state in (checkpoint.get("callbacks") or {}).values():
        if not (isinstance(state, dict) and state.get("kind") in CALLBACKS
                and isinstance(state.get("layers"), list)):
            continue
        absent = [n for n in state["layers"] if n not in present]
        if absent:
            callback, layer = CALLBACKS[state["kind"]]
            settings = "".join(f", {k}={v!r}" for k, v in (state.get("settings") or {}).items())
            lines.append(f"this checkpoint holds {layer} layers at {', '.join(absent)}: attach "
                         f"{callback}({absent!r}{settings}) to the Trainer")
    return ValueError("; ".join(lines)) if lines else None


class InsertingCallback(Callback):
    """Inserts ``make_layer(channels)`` after named submodules at ``setup``.

    Derives from the ``Callback`` of both Lightning packages (:mod:`._compat`),
    so it attaches to either package's Trainer and to any LightningModule.
    Subclasses set ``kind`` (a plain string saved in the state) and implement
    :meth:`make_layer`; every setting that must match on resume goes in
    ``settings`` (saved in the state, compared on resume).
    """

    kind: str = ""

    def __init__(self, layers: str | list[str] | None, settings: dict[str, Any]) -> None:
        if layers is not None and not isinstance(layers, (str, list, tuple)):
            raise TypeError(f"layers must be None, a str or a list of str, but got {layers!r}")
        if isinstance(layers, (list, tuple)):
            if not layers or not all(isinstance(n, str) for n in layers):
                raise ValueError(f"layers must be a non-empty list of str, but got {layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers must be distinct, but got {list(layers)}")
        self._requested: list[str] | None = [layers] if isinstance(layers, str) else (
            list(layers) if layers is not None else None
        )
        self._settings: dict[str, Any] = dict(settings)
        with torch.device("meta"):  # fail early on bad settings, allocating nothing
            self.make_layer(4)
        self._layer_names: list[str] = []
        self._layers: dict[str, nn.Module] = {}
        self._wrapped_hooks: list[tuple[nn.Module, str]] = []
        self._channels: dict[str, int] = {}
        self._module: nn.Module | None = None

    # -- to implement ------------------------------------------------------------------
    def make_layer(self, channels: int) -> nn.Module:
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self._requested, settings=self._settings)

    @property
    def layers(self) -> dict[str, nn.Module]:
        """The inserted layers by block name (empty before ``setup``)."""
        return dict(self._layers)

    def _state(self) -> dict[str, Any]:
        return {"kind": self.kind, "layers": list(self._layer_names or self._requested or []),
                "settings": dict(self._settings), "channels": dict(self._channels)}

    @staticmethod
    def _channel_count(layer: nn.Module) -> int:
        for attr in ("channels", "num_channels", "num_features"):
            if isinstance(getattr(layer, attr, None), int):
                return getattr(layer, attr)
        return 0

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_saved(state_dict)

    def _differences(self, saved: dict[str, Any]) -> list[str]:
        """What differs between a saved state and this callback, one "name: saved vs mine" each."""
        mine = self._state()
        diffs = [f"layers: {saved.get('layers')} in the checkpoint, {mine['layers']} here"
                 ] if saved.get("layers") != mine["layers"] else []
        theirs, ours = saved.get("settings") or {}, mine["settings"]
        for key in sorted(set(theirs) | set(ours), key=str):
            if theirs.get(key, "<unset>") != ours.get(key, "<unset>"):
                diffs.append(f"{key}: {theirs.get(key, '<unset>')!r} in the checkpoint, "
                             f"{ours.get(key, '<unset>')!r} here")
        return diffs

    def _check_saved(self, saved: dict[str, Any], path: Any = None) -> None:
        where = f" (checkpoint {path})" if path else ""
        if saved.get("kind") is None:
            raise ValueError(
                f"the checkpoint has no {type(self).__name__} state (it was made without this "
                "callback); to start from its weights, load them into the module "
                f"(`load_state_dict`) and fit without ckpt_path{where}"
            )
        diffs = self._differences(saved)
        if diffs:
            mine = self._state()
            raise ValueError(
                f"the checkpoint was made with {type(self).__name__}({self._describe(saved)}), "
                f"but this callback has ({self._describe(mine)}); differs in {'; '.join(diffs)}. "
                "Use the same settings to resume, or load the weights without the checkpoint's "
                f"training state{where}"
            )

    @staticmethod
    def _describe(state: dict[str, Any]) -> str:
        return f"layers={state.get('layers')}, **{state.get('settings')}"

    # -- hooks ------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        already = bool(self._layers) and all(
            inserted_layers(pl_module).get(n) is m for n, m in self._layers.items()
        )  # a second fit / validate on the same module
        if not already:
            names, picked = self._resolve(pl_module)
            self.check_grids(pl_module, names)
            try:
                self._layers = insert_after(pl_module, names, lambda _n, c: self.make_layer(c),
                                            example_input=example_input(pl_module))
            except ValueError as err:
                if "cannot tell the output channels" not in str(err):
                    raise
                raise ValueError(
                    f"{err}; {type(self).__name__} reads the channels from the block's last conv "
                    "or norm layer, or from a forward pass on `pl_module.example_input_array`: "
                    "set example_input_array in your module"
                ) from err
            self._channels = {n: int(self._channel_count(m)) for n, m in self._layers.items()}
            self._layer_names = names
            kind = type(next(iter(self._layers.values()))).__name__
            how = (" (layers=None: the last block whose output grid is larger than 1x1)"
                   if picked else "")
            rank_zero_info(trainer, f"{type(self).__name__}: inserted {kind} after "
                                    f"{', '.join(names)}{how}")
        self._module = pl_module
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            # before the model's weights are loaded
            self._check_checkpoint(checkpoint, getattr(trainer, "ckpt_path", None))
            original(checkpoint)

        self._wrap(pl_module, "on_load_checkpoint", on_load_checkpoint)
        self.after_insert(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warn_if_not_resumable(trainer)  # once per Trainer, whichever callback comes first

    def _wrap(self, pl_module: pl.LightningModule, hook: str, fn: Callable) -> None:
        """Replace ``pl_module.<hook>`` by ``fn`` on the instance, until ``teardown``."""
        functools.update_wrapper(fn, getattr(pl_module, hook))
        setattr(pl_module, hook, fn)
        self._wrapped_hooks.append((pl_module, hook))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._unwrap()  # Lightning skips teardown after a crash

    def _unwrap(self) -> None:
        # Drop the instance wrappers so the module pickles and can be fitted again.
        for module, hook in self._wrapped_hooks:
            if hook in vars(module):
                delattr(module, hook)
        self._wrapped_hooks = []

    def _check_checkpoint(self, checkpoint: dict[str, Any], path: Any = None) -> None:
        if "callbacks" not in checkpoint:
            return  # a weights-only checkpoint: nothing to compare
        same_kind = [s for s in checkpoint["callbacks"].values()
                     if isinstance(s, dict) and s.get("kind") == self.kind]
        if not any(not self._differences(st) for st in same_kind):
            self._check_saved(same_kind[0] if same_kind else {"kind": None}, path)
        missing = None if self._module is None else missing_layers_error(checkpoint, self._module)
        if missing is not None:
            raise missing  # layers of a callback that is not attached

    def after_insert(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass hook, called at the end of ``setup``."""

    def check_grid(self, name: str, grid: tuple[int, int]) -> None:
        """Subclass hook: raise ``ValueError`` when the settings do not fit the
        ``(H, W)`` feature map after block ``name``; called before any layer is built."""

    def check_grids(self, pl_module: pl.LightningModule, names: list[str] | None = None) -> None:
        """:meth:`check_grid` for each block (default: the named ones), from a forward of
        ``pl_module.example_input_array`` (nothing to check without one)."""
        names = names if names is not None else self._requested or []
        x = example_input(pl_module)
        if x is None or type(self).check_grid is InsertingCallback.check_grid:
            return
        shapes: dict[str, Any] = {}
        for name, shape in trace_calls(pl_module, x):
            shapes.setdefault(name, shape)
        for name in names:
            shape = shapes.get(name)
            if shape is not None and len(shape) == 4:
                self.check_grid(name, (int(shape[2]), int(shape[3])))

    def _resolve(self, pl_module: pl.LightningModule) -> tuple[list[str], bool]:
        """The block names to insert after, and whether ``layers=None`` picked them."""
        x = example_input(pl_module)
        if self._requested is None:
            if x is None:
                raise ValueError(
                    f"{type(self).__name__}(layers=None) picks the last block with a spatial "
                    "output, which needs `pl_module.example_input_array`; set it or pass "
                    f"layers=[...], one of: {', '.join(insertable_names(pl_module))}"
                )
            return [last_spatial_block(pl_module, x)], True
        for name in self._requested:
            if name in inserted_layers(pl_module):
                raise ValueError(
                    f"a layer is already inserted after {name!r} (by another callback?); "
                    "attach one callback per layer"
                )
        return list(self._requested), False


def insert_from_state(model: nn.Module, state: dict[str, Any],
                      factories: dict[str, Callable[[int, dict[str, Any]], nn.Module]]) -> None:
    """Re-insert the layers described by a saved callback state (for inference)."""
    factory = factories[state["kind"]]
    channels = {n: c for n, c in state.get("channels", {}).items() if c}
    insert_after(model, state["layers"], lambda _n, c: factory(c, state["settings"]),
                 channels=channels or None)
