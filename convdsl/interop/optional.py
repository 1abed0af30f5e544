"""Optional packages, imported when a feature needs them, with a clear error when missing.

>>> numpy = require("numpy", "onnx")  # any installed module comes back as itself
>>> numpy.__name__
'numpy'
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from convdsl.diagnostics import error

EXTRAS = {"onnx": "onnx", "safetensors": "safetensors"}
"""The pip extra of convdsl that installs each optional package."""


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """``module`` imported, or a ``ConvdslError`` saying which extra of convdsl installs it.

    ``what`` names the feature that needs it (``"ONNX export"``) in the message."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        needs = f"{what} needs" if what else "this needs"
        raise error(
            f"{needs} the '{top}' package, which is not installed",
            hint=f"install it with: pip install 'convdsl[{extra}]'",
        ) from None


def loaded(module: str) -> ModuleType | None:
    """``module`` if something has already imported it, else None; never imports it (so that
    accepting, say, torch tensors never makes convdsl import torch itself)."""
    return sys.modules.get(module)
