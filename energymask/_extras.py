"""Optional dependencies: import one, or say which extra of energymask brings it.

The core needs torch alone; ``pip install 'energymask[lightning]'``, ``[captum]``,
``[viz]``, ``[data]``, ``[backbones]`` or ``[all]`` add the rest (docs/design.md,
"Where things are").
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "torchmetrics": "lightning",
    "captum": "captum",
    "matplotlib": "viz",
    "numpy": "data",
    "sklearn": "data",
    "PIL": "data",
    "torchvision": "backbones",
    "timm": "backbones",
}


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or an ImportError naming the extra that installs it.

    ``feature`` says what needs it, e.g. ``"the Grad-CAM ordering"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise ImportError(
            f"{feature} needs {top}, which is not installed: "
            f"pip install 'energymask[{extra}]' (or 'energymask[all]')"
        ) from err
