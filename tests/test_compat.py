"""Canaries of ``isolation._compat``: each reach into another project's internals,
checked against the installed version, so that an upgrade that changes one fails
here, loudly and by name, instead of somewhere downstream."""

from __future__ import annotations

import asyncio
import itertools
import threading

import anyio
import attrs
import pytest

from isolation import _compat


def test_asyncio_running_loop_is_none_outside_a_loop() -> None:
    """asyncio._get_running_loop: the thread's running loop or None, never raising."""
    assert _compat.running_loop() is None


def test_asyncio_running_loop_inside_a_loop() -> None:
    async def main() -> None:
        assert _compat.running_loop() is asyncio.get_running_loop()

    asyncio.run(main())


def test_asyncio_running_loop_is_none_under_trio() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        assert _compat.running_loop() is None

    trio.run(main)


def test_asyncio_running_loop_is_per_thread() -> None:
    seen: list[object] = []

    async def main() -> None:
        thread = threading.Thread(target=lambda: seen.append(_compat.running_loop()))
        thread.start()
        thread.join()

    asyncio.run(main())
    assert seen == [None]


def test_attrs_frozen_setattr_name() -> None:
    """attrs names the __setattr__ of a frozen class _frozen_setattrs (not promised)."""

    @attrs.frozen
    class Frozen:
        x: int

    @attrs.define
    class Mutable:
        x: int

    @attrs.define(frozen=True, slots=False)
    class FrozenDict:
        x: int

    assert Frozen.__setattr__.__name__ == "_frozen_setattrs", (
        f"attrs {attrs.__version__} renamed its frozen __setattr__: fix _compat.attrs_frozen"
    )
    assert _compat.attrs_frozen(Frozen)
    assert _compat.attrs_frozen(FrozenDict)
    assert not _compat.attrs_frozen(Mutable)


def test_itertools_count_repr() -> None:
    """repr(itertools.count(n)) is "count(n)" and reading it does not advance it."""
    counter = itertools.count()
    assert _compat.count_value(counter) == 0
    assert repr(counter) == "count(0)"
    for _ in range(3):
        next(counter)
    assert _compat.count_value(counter) == 3
    assert _compat.count_value(counter) == 3
    big = itertools.count(2**70)
    assert _compat.count_value(big) == 2**70


def test_hypothesis_rule_markers() -> None:
    """@rule, @initialize and @invariant set these attributes, holding a record whose
    .function is the decorated function (AsyncRuleBasedStateMachine rewrites it)."""
    from hypothesis.stateful import initialize, invariant, rule

    def f(self: object) -> None:
        return None

    markers = _compat.hypothesis_rule_markers()
    assert len(markers) == len(set(markers)) == 3
    for marker, decorate in zip(markers, (rule(), initialize(), invariant()), strict=True):
        decorated = decorate(f)
        spec = getattr(decorated, marker, None)
        assert spec is not None, f"Hypothesis no longer marks a rule with {marker!r}"
        assert spec.function is f


def test_anyio_cancel_scope_is_its_backends_class() -> None:
    """anyio.CancelScope() returns the running backend's own class (context._shield
    caches it per backend to skip anyio's lookup)."""

    async def main() -> None:
        scope = anyio.CancelScope()
        assert type(scope) is not anyio.CancelScope
        assert isinstance(scope, anyio.CancelScope)
        assert type(type(scope)(shield=True)) is type(scope)

    anyio.run(main)


def test_sniffio_announcements() -> None:
    """sniffio's thread_local.name and current_async_library_cvar are where a loop
    announces itself; async_library() reads them and agrees with sniffio."""
    sniffio = pytest.importorskip("sniffio")
    assert hasattr(sniffio.thread_local, "name")
    assert sniffio.current_async_library_cvar.get() is None

    async def main() -> str:
        return _compat.async_library()

    assert asyncio.run(main()) == "asyncio" == anyio.run(sniffio_name)
    trio = pytest.importorskip("trio")
    assert trio.run(main) == "trio"
    with pytest.raises(sniffio.AsyncLibraryNotFoundError):
        _compat.async_library()


async def sniffio_name() -> str:
    import sniffio

    return str(sniffio.current_async_library())


def test_contextvars_extras_registry_internals() -> None:
    """contextvars-extras: a registry class's _registry_allocate_on_setattr option and
    its _registry_var_descriptors (one ContextVarDescriptor per declared variable,
    with the get/set that isolate() wraps)."""
    cve = pytest.importorskip("contextvars_extras")

    class Declared(cve.ContextVarsRegistry):  # type: ignore[misc]
        _registry_allocate_on_setattr = False
        locale: str = "en"
        timezone: str = "UTC"

    class Open(cve.ContextVarsRegistry):  # type: ignore[misc]
        locale: str = "en"

    assert _compat.cve_allocates_on_setattr(Declared) is False
    assert _compat.cve_allocates_on_setattr(Open) is True, (
        "contextvars-extras renamed or changed _registry_allocate_on_setattr: fix "
        "_compat.cve_allocates_on_setattr"
    )
    descriptors = _compat.cve_var_descriptors(Declared)
    assert sorted(d.name.rsplit(".", 1)[-1] for d in descriptors) == ["locale", "timezone"], (
        "contextvars-extras moved _registry_var_descriptors: fix _compat.cve_var_descriptors"
    )
    for descriptor in descriptors:
        assert callable(descriptor.get)
        assert callable(descriptor.set)
        assert descriptor.default in ("en", "UTC")
        assert hasattr(descriptor, "deferred_default")
