"""Shared base of the callbacks that insert layers into a LightningModule.

Lightning's hook order (pytorch_lightning 2.x, ``Trainer._run``): ``setup`` ->
``configure_model`` -> checkpoint restore (model weights, then callback states)
-> ``strategy.setup`` (which calls ``configure_optimizers``). Inserting layers in
``setup`` therefore puts them in the optimiser and lets a resumed checkpoint
fill their weights and buffers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from energymask.surgery import insert_after, insertable_names, inserted_layers, output_shapes

try:
    from typing_extensions import override
except ImportError:  # pragma: no cover
    def override(fn):  # type: ignore[no-redef]
        return fn


def check_trainer(trainer: Any, owner: str) -> None:
    """Refuse a ``lightning.pytorch`` Trainer with a message saying what to do."""
    module = type(trainer).__module__
    if not module.startswith("pytorch_lightning"):
        raise TypeError(
            f"{owner} is built on `pytorch_lightning`, but the Trainer comes from {module!r}. "
            "Use `import pytorch_lightning as pl; pl.Trainer(...)` with a "
            "`pytorch_lightning.LightningModule`, or install the `pytorch-lightning` package."
        )


def example_input(pl_module: pl.LightningModule, trainer: Any) -> Tensor | None:
    """``pl_module.example_input_array`` (first element of a tuple/list), or None."""
    x = pl_module.example_input_array
    if isinstance(x, (tuple, list)):
        x = x[0] if x else None
    return x if isinstance(x, Tensor) else None


def output_channels(model: nn.Module, names: list[str], x: Tensor) -> dict[str, int]:
    """Channels (dim 1) of the 4D outputs of the named submodules for input ``x``."""
    return {name: shape[1] for name, shape in output_shapes(model, names, x).items()}


def checkpoint_states(path: str | os.PathLike) -> dict[str, dict]:
    """Callback states of a Lightning checkpoint file, read with ``weights_only=True``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {str(k): v for k, v in ckpt.get("callbacks", {}).items() if isinstance(v, dict)}


class InsertingCallback(pl.Callback):
    """Inserts ``factory(name, channels)`` after named submodules at ``setup``.

    Subclasses set ``kind`` (a plain string saved in the state) and ``layer_type``
    and implement :meth:`make_layer`.
    """

    kind: str = ""
    layer_type: type[nn.Module] = nn.Module

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
        self.make_layer(4)  # fail early on bad settings
        self._layer_names: list[str] = []
        self._layers: dict[str, nn.Module] = {}
        self._wrapped_hooks: list[tuple[nn.Module, str]] = []
        self._channels: dict[str, int] = {}

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

    def _matches(self, saved: dict[str, Any]) -> bool:
        mine = self._state()
        return all(saved.get(k) == mine[k] for k in ("kind", "settings", "layers"))

    def _check_saved(self, saved: dict[str, Any]) -> None:
        if saved.get("kind") is None:
            raise ValueError(
                f"the checkpoint has no {type(self).__name__} state (it was made without this "
                "callback); to start from its weights, load them into the module "
                "(`load_state_dict`) and fit without ckpt_path"
            )
        if not self._matches(saved):
            mine = self._state()
            raise ValueError(
                f"the checkpoint was made with {type(self).__name__}(layers={saved.get('layers')}, "
                f"**{saved.get('settings')}), but this callback has (layers={mine['layers']}, "
                f"**{mine['settings']}); use the same settings to resume, or load the weights "
                "without the checkpoint's training state"
            )

    # -- hooks ------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_trainer(trainer, type(self).__name__)
        already = bool(self._layers) and all(
            inserted_layers(pl_module).get(n) is m for n, m in self._layers.items()
        )  # a second fit / validate on the same module
        if not already:
            names = self._resolve(pl_module, trainer)
            x = example_input(pl_module, trainer)
            channels = output_channels(pl_module, names, x) if x is not None else None
            try:
                self._layers = insert_after(
                    pl_module, names, lambda _n, c: self.make_layer(c), channels=channels
                )
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
            rank_zero_info(f"{type(self).__name__}: inserted {kind} after {', '.join(names)}")
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self._check_checkpoint(checkpoint)  # before the model's weights are loaded
            original(checkpoint)

        self._wrap(pl_module, "on_load_checkpoint", on_load_checkpoint)
        self.after_insert(trainer, pl_module)

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

    def _check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "callbacks" not in checkpoint:
            return  # a weights-only checkpoint: nothing to compare
        same_kind = [s for s in checkpoint["callbacks"].values()
                     if isinstance(s, dict) and s.get("kind") == self.kind]
        if not any(self._matches(st) for st in same_kind):
            self._check_saved(same_kind[0] if same_kind else {"kind": None})

    def after_insert(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass hook, called at the end of ``setup``."""

    def _resolve(self, pl_module: pl.LightningModule, trainer: Any) -> list[str]:
        x = example_input(pl_module, trainer)
        if self._requested is None:
            if x is None:
                raise ValueError(
                    f"{type(self).__name__}(layers=None) picks the last submodule with a 4D "
                    "output, which needs `pl_module.example_input_array`; set it or pass "
                    f"layers=[...], one of: {', '.join(insertable_names(pl_module))}"
                )
            four_d = insertable_names(pl_module, x)
            if not four_d:
                raise ValueError(f"no submodule of {type(pl_module).__name__} has a 4D output")
            return [four_d[-1]]
        names = list(self._requested)
        valid = insertable_names(pl_module)
        for name in names:
            if name in inserted_layers(pl_module):
                raise ValueError(
                    f"a layer is already inserted after {name!r} (by another callback?); "
                    "attach one callback per layer"
                )
            if name not in valid:
                raise ValueError(
                    f"unknown layer name {name!r} in layers; valid names are: {', '.join(valid)}"
                )
        if x is not None:
            four_d = set(insertable_names(pl_module, x))
            for name in names:
                if name in valid and name not in four_d:
                    raise ValueError(
                        f"layer {name!r} does not output a 4D (B, C, H, W) tensor for "
                        f"example_input_array; 4D outputs: {', '.join(sorted(four_d))}"
                    )
        return names


def insert_from_state(model: nn.Module, state: dict[str, Any],
                      factories: dict[str, Callable[[int, dict[str, Any]], nn.Module]]) -> None:
    """Re-insert the layers described by a saved callback state (for inference)."""
    factory = factories[state["kind"]]
    channels = {n: c for n, c in state.get("channels", {}).items() if c}
    insert_after(model, state["layers"], lambda _n, c: factory(c, state["settings"]),
                 channels=channels or None)
