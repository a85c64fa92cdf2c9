"""Lightning base classes shared by both packages: ``lightning.pytorch`` and ``pytorch_lightning``.

Users import either package (``import lightning.pytorch as L`` or ``import
pytorch_lightning as pl``), and each Trainer accepts only callbacks, modules and
data modules of its own package. The classes here derive from the base class of
every package that is installed, so one ``ERSMCallback`` (or data module) passes
both Trainers' checks. The packages share their code (``pytorch_lightning`` is
the standalone build of ``lightning.pytorch``), so the method resolution order
is the same in both halves.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_installed = [m for m in (_import(name) for name in PACKAGES) if m is not None]
if not _installed:
    raise ImportError(
        "energymask.lightning_modules needs Lightning: pip install 'energymask[lightning]' "
        "(or pip install lightning)"
    )


def _dual(attr: str) -> type:
    bases = tuple(getattr(m, attr) for m in _installed)
    return bases[0] if len(bases) == 1 else type(attr, bases, {"__module__": __name__})


Callback = _dual("Callback")
LightningDataModule = _dual("LightningDataModule")


def trainer_package(trainer: object) -> str:
    """``"lightning.pytorch"`` or ``"pytorch_lightning"``: the package ``trainer`` comes from."""
    module = type(trainer).__module__
    return next((name for name in PACKAGES if module.startswith(name)), module)
