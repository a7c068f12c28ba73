"""Old import paths that still work for one release, with a ``DeprecationWarning``.

A public module that lost a name declares where it went::

    __getattr__ = moved(__name__, {"Backend": ("isolation.events.backends", "EventBackend")})

``moved`` returns a module ``__getattr__`` (PEP 562): the old name warns, naming
the new path, and returns the very same object, imported only when asked for.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved"]


def moved(module: str, names: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each old name of ``names`` from its new home.

    Args:
        module: The module that lost the names (its ``__name__``).
        names: Old name to ``(new module, new name)``; a module path or a name with
            a part starting with ``_`` means the name left the public surface, and
            a dotted new name is an attribute path (``"CloseCode.NORMAL"``).
    """

    def __getattr__(name: str) -> Any:  # noqa: N807  # the module hook of PEP 562
        try:
            home, new = names[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        if any(part.startswith("_") for part in f"{home}.{new}".split(".")):
            where = "it is no longer public and will be removed in the next release"
        else:
            where = f"use {home}.{new} instead; the old path goes in the next release"
        warnings.warn(f"{module}.{name} is deprecated: {where}", DeprecationWarning, stacklevel=2)
        value: Any = importlib.import_module(home)
        for attr in new.split("."):
            value = getattr(value, attr)
        return value

    return __getattr__
