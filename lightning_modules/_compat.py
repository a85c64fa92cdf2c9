"""Lightning base classes shared by both packages: ``lightning.pytorch`` and ``pytorch_lightning``.

Users import either package (``import lightning.pytorch as L`` or ``import
pytorch_lightning as pl``), and each Trainer accepts only callbacks, modules and
data modules of its own package. The classes here derive from the base class of
every package that is installed, so one ``ERSMCallback``, ``ImageClassifier`` or
data module passes both Trainers' checks.

The packages share their code (``pytorch_lightning`` is the standalone build of
``lightning.pytorch``), but a few default hooks differ in their code objects
(docstrings and line numbers name the package). A Trainer decides what to call
with ``is_overridden(hook, obj)``, which compares the object's hook with its own
package's default; through the first base, the second package's Trainer would
take every such default for a user override (``configure_model`` and
``configure_sharded_model`` both "overridden" is an error, an unimplemented
``val_dataloader`` gets called). So a module or data module follows the Trainer
it is attached to: when its ``trainer`` is set, the defaults it did not override
are bound from that Trainer's package, on the instance.
"""

from __future__ import annotations

import importlib
from types import MethodType, ModuleType
from typing import Any

PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_installed = {name: m for name in PACKAGES if (m := _import(name)) is not None}
if not _installed:
    raise ImportError(
        "energymask.lightning_modules needs Lightning: pip install 'energymask[lightning]' "
        "(or pip install lightning)"
    )


#: The package the application trains with: ``lightning.pytorch`` when installed.
PACKAGE = next(iter(_installed))


def lightning(submodule: str = "") -> ModuleType:
    """:data:`PACKAGE` (``lightning("loggers")``: its ``loggers`` sub-module)."""
    return importlib.import_module(f"{PACKAGE}.{submodule}" if submodule else PACKAGE)


def package_of(obj: object) -> str | None:
    """``"lightning.pytorch"``, ``"pytorch_lightning"`` or None: the package of ``obj``'s class.

    For a class, the package of the class itself; for an instance, of its type.
    A class of this module (deriving from both) counts as the first installed package.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        for name in _installed:
            if klass.__module__ == name or klass.__module__.startswith(name + "."):
                return name
    return None


def _bases(attr: str) -> dict[str, type]:
    return {name: getattr(m, attr) for name, m in _installed.items()}


def _differing_defaults(bases: dict[str, type]) -> tuple[str, ...]:
    """Hooks whose default code differs between the packages (what ``is_overridden`` compares)."""
    first, *others = bases.values()
    names = []
    for name in dir(first):
        code = getattr(getattr(first, name, None), "__code__", None)
        if code is not None and any(
            getattr(getattr(o, name, None), "__code__", code) != code for o in others
        ):
            names.append(name)
    return tuple(names)


def _follow_trainer(obj: Any, trainer: Any, bases: dict[str, type], names: tuple[str, ...]) -> None:
    """Bind the defaults of ``trainer``'s package that ``obj``'s class does not override."""
    package = package_of(trainer)
    if package not in bases:
        return
    first = next(iter(bases.values()))
    for name in names:
        inherited = getattr(type(obj), name, None) is getattr(first, name)
        if inherited and package != package_of(first):
            obj.__dict__[name] = MethodType(getattr(bases[package], name), obj)
        else:
            obj.__dict__.pop(name, None)


def _dual(attr: str) -> type:
    bases = _bases(attr)
    if len(bases) == 1:
        return next(iter(bases.values()))
    return type(attr, tuple(bases.values()), {"__module__": __name__})


def _dual_following_trainer(attr: str) -> type:
    """Like :func:`_dual`, with a ``trainer`` property that binds the Trainer's defaults."""
    bases = _bases(attr)
    if len(bases) == 1:
        return next(iter(bases.values()))
    names = _differing_defaults(bases)
    inherited = getattr(next(iter(bases.values())), "trainer", None)

    def get_trainer(self: Any) -> Any:
        if isinstance(inherited, property):
            return inherited.fget(self)
        return self.__dict__.get("_energymask_trainer")

    def set_trainer(self: Any, trainer: Any) -> None:
        if isinstance(inherited, property):
            inherited.fset(self, trainer)
        else:
            self.__dict__["_energymask_trainer"] = trainer
        _follow_trainer(self, trainer, bases, names)

    namespace = {"__module__": __name__, "trainer": property(get_trainer, set_trainer)}
    return type(attr, tuple(bases.values()), namespace)


Callback = _dual("Callback")
LightningDataModule = _dual_following_trainer("LightningDataModule")
LightningModule = _dual_following_trainer("LightningModule")


def is_lightning_module(obj: object) -> bool:
    """True for an instance or subclass of either package's ``LightningModule``."""
    bases = tuple(_bases("LightningModule").values())
    return issubclass(obj, bases) if isinstance(obj, type) else isinstance(obj, bases)


__all__ = ["PACKAGE", "PACKAGES", "Callback", "LightningDataModule", "LightningModule",
           "is_lightning_module", "lightning", "package_of"]
