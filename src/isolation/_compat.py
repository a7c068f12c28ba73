"""Every reach into another project's internals, in one place.

Each name here leans on something its project does not promise (a private
function, an attribute's name, a ``repr``). ``tests/test_compat.py`` has a
canary per reach that fails loudly, naming the dependency, when an upgrade
changes it; fix it here, and every caller follows.

Kept because a benchmark row justifies it (``benchmarks/``, measured with and
without; see the CHANGELOG) or because no public way exists.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, Final

try:  # anyio uses sniffio to tell the backends apart when it is installed
    import sniffio
except ImportError:  # pragma: no cover - without it, anyio assumes asyncio too
    sniffio = None  # type: ignore[assignment]

__all__ = [
    "async_library",
    "attrs_frozen",
    "count_value",
    "hypothesis_rule_markers",
    "running_loop",
]

# asyncio: the running loop of this thread, or None, without raising. The public
# asyncio.get_running_loop() raises RuntimeError outside a loop (under trio, in a
# thread), which costs an exception on the sync paths. It is a C function; the
# alias keeps it one call. (CPython lists it in asyncio.events.__all__ but gives
# it a private name.)
running_loop: Final[Callable[[], asyncio.AbstractEventLoop | None]] = asyncio._get_running_loop


def async_library() -> str:
    """``sniffio.current_async_library()``, without its slow sniffing for asyncio.

    Reads the two places an event loop announces itself to sniffio
    (``thread_local.name``, ``current_async_library_cvar``: documented for loop
    authors, not for readers), then asks asyncio. Kept: ``_shield()`` with it
    costs 0.94 us against 1.75 us with ``anyio.CancelScope()`` (see the CHANGELOG).
    """
    if sniffio is None:  # pragma: no cover - anyio then assumes asyncio too
        return "asyncio"
    name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if name is None and running_loop() is not None:
        return "asyncio"
    return name or sniffio.current_async_library()  # raises the usual error outside a loop


def attrs_frozen(cls: type) -> bool:
    """Whether the attrs class ``cls`` is frozen (attrs has no public way to ask).

    attrs installs a ``__setattr__`` named ``_frozen_setattrs`` on a frozen class.
    """
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def count_value(counter: itertools.count[int]) -> int:
    """The next value of ``counter`` without advancing it (its ``repr`` is ``count(N)``).

    ``itertools.count`` has no public read: its ``__next__`` is one atomic C call
    (the reason it counts), and its ``repr`` is the only way to look.
    """
    return int(repr(counter)[6:-1])


def hypothesis_rule_markers() -> tuple[str, ...]:
    """The attribute names Hypothesis' ``@rule``, ``@initialize`` and ``@invariant``
    set on a function (undocumented constants of ``hypothesis.stateful``).

    Imported when called: Hypothesis is a dependency of ``isolation.testing`` only.
    """
    from hypothesis.stateful import (
        INITIALIZE_RULE_MARKER,
        INVARIANT_MARKER,
        RULE_MARKER,
    )

    markers: tuple[Any, ...] = (RULE_MARKER, INITIALIZE_RULE_MARKER, INVARIANT_MARKER)
    return tuple(str(marker) for marker in markers)
