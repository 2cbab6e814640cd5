"""Public names imported on first use: a package lists where each name lives, and `lazy_getattr` gives it the
module `__getattr__` (PEP 562) that imports the defining module when the name is first asked for, so importing
one light module of a package does not load the heavy ones (torch, sklearn) the others need."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """`exports`: name -> the module that defines it (absolute, or relative to `package` when it starts with a
    dot)."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__
