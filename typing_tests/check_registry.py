"""Static checks of the public types, run by mypy in CI, never executed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import assert_type

import isolation
from isolation import ContextLocal, Lifetime, Registry, UserContext


class Engine:
    pass


registry = Registry()


@registry.provide(lifetime=Lifetime.REQUEST)
def engine(ctx: UserContext) -> Iterator[Engine]:
    yield Engine()


async def use() -> None:
    ctx = UserContext.new("alice")
    with isolation.scope(ctx, registry=registry) as s:
        assert_type(s, isolation.Scope)
        assert_type(s.get(Engine), Engine)
        assert_type(isolation.current_context(), UserContext)
    async with isolation.scope(ctx, registry=registry) as s:
        assert_type(await s.aget(Engine), Engine)
        assert_type(await isolation.to_thread(len, "abc"), int)
    local: ContextLocal[list[str]] = ContextLocal(list)
    assert_type(local.get(), list[str])
    assert_type(isolation.tokens.loads("t", keys=[b"k" * 32], purpose="job"), UserContext)
    assert_type(isolation.current_context_or_none(), UserContext | None)
