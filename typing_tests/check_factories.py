"""Static checks of @request_scoped, @owned and shareable, run by mypy in CI, never executed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import assert_type

import isolation
from isolation import UserContext


class Engine:
    def __init__(self, ctx: UserContext) -> None:
        self.user = ctx.user_id


@isolation.request_scoped
def make_engine(ctx: UserContext) -> Engine:
    return Engine(ctx)


@isolation.request_scoped
async def make_memory() -> dict[str, int]:
    return {}


@isolation.request_scoped(check="sampled", sample_every=10)
def make_sampled() -> list[str]:
    return []


make_from_class = isolation.request_scoped(Engine)


@isolation.owned
class Agent:
    def ask(self, question: str) -> str:
        return question


async def use() -> None:
    assert_type(make_engine, Callable[[], Engine])
    assert_type(make_engine(), Engine)
    assert_type(make_memory, Callable[[], Awaitable[dict[str, int]]])
    assert_type(await make_memory(), dict[str, int])
    assert_type(make_sampled(), list[str])
    assert_type(make_from_class(), Engine)
    assert_type(Agent().ask("q"), str)
    assert_type(isolation.shareable({"a": 1}), dict[str, int])
