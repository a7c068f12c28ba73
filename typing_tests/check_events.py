"""Static checks of the event router's principal arguments, run by mypy in CI, never executed."""

from __future__ import annotations

from typing import assert_type

from isolation import Principal, UserContext
from isolation.events import Connection, EventRouter, PublishResult
from isolation.events._model import PrincipalStats


async def use(router: EventRouter, ctx: UserContext) -> None:
    assert_type(ctx.principal, Principal)
    tenant, user = ctx.principal
    assert_type(tenant, str | None)
    assert_type(user, str)
    assert_type(await router.publish(ctx, {"n": 1}), PublishResult)
    assert_type(await router.publish(Principal("acme", "alice"), 1, kind="note"), PublishResult)
    assert_type(router.connections(ctx.principal), tuple[Connection, ...])
    assert_type(router.principal_stats(ctx), PrincipalStats | None)
    # A user id alone, or a plain pair, names no principal: refused by the types too.
    await router.publish("alice", 1)  # type: ignore[call-overload]
    await router.publish(("acme", "alice"), 1)  # type: ignore[call-overload]
    router.connections("alice")  # type: ignore[call-overload]
