"""Package namespaces that import their submodules on first use (PEP 562), so that the command line can list the
datasets, CRMs and prompt styles and print ``--help`` without importing torch or pandas."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, namespace: dict, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the submodule (relative to
    the package) that defines it; the value is imported on first access and kept in ``namespace``."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
