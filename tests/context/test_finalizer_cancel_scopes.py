"""Async finalizers may open their own cancel scopes and suspend inside them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import isolation

pytestmark = pytest.mark.anyio


class Resource:
    closed = False


async def test_finalizer_with_its_own_cancel_scope() -> None:
    """A finalizer that suspends inside move_on_after exits its scope cleanly (regression)."""
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.move_on_after(30):
            await anyio.sleep(0)  # suspends inside its own cancel scope
            done.append("closed")

    async with isolation.scope(isolation.UserContext.new("alice")) as s:
        s.on_close(finalizer)
    assert done == ["closed"]


async def test_finalizer_of_an_async_generator_provider() -> None:
    """A registry async-generator teardown that opens a cancel scope runs at scope exit."""
    registry = isolation.Registry()

    @registry.provide
    async def resource() -> AsyncIterator[Resource]:
        made = Resource()
        yield made
        with anyio.move_on_after(30):
            await anyio.sleep(0)
            made.closed = True

    async with isolation.scope(isolation.UserContext.new("alice"), registry=registry) as s:
        got = await s.aget(Resource)
    assert got.closed
