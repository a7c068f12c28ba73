"""FM16, auth tokens outliving their credentials: a context from a token expires with it.

Subject: a ``loads(token, *, keys, purpose)`` function (the library's is
:func:`isolation.tokens.loads`). Scenario: 6 users, each with tokens of five
shapes (a token ttl shorter or longer than the context's own deadline, a
context without a deadline, the default ttl); each token is loaded and its
context entered as an ``async with`` scope whose body waits forever, and as a
``with`` scope, while a fake clock moves to just before the token's expiry and
then onto it. The property: the loaded context's ``expires_at`` is
``min(token expiry, context expiry)``; the body still runs just before it and
is cancelled with ``ContextExpiredError`` at it; ``current_context()`` fails
closed from it on; the token itself is refused from it on. The mutant is a
``loads`` that drops the token's ``exp`` and keeps only the signing context's
own deadline (the behaviour issue 16 found: a socket or a job outliving the
token that authenticated it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from isolation import tokens
from isolation._clock import FakeClock, use_clock
from isolation._errors import ContextExpiredError, TokenExpiredError
from isolation.context._model import UserContext
from isolation.context._scope import Scope, current_context
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_token_expiry", "register"]

USERS = 6
KEY = b"fm16 expiry check key, not real!"  # 32 bytes
PURPOSE = "fm16-expiry"
# (the context's own ttl, the token's ttl): None is "not given".
SHAPES: tuple[tuple[float | None, float | None], ...] = (
    (None, 30.0),
    (60.0, 30.0),
    (30.0, 60.0),
    (None, None),
    (45.0, None),
)
_BEFORE = 0.5

Loads = Callable[..., UserContext]


def _expected(context_ttl: float | None, token_ttl: float | None) -> float:
    """Seconds from signing until the token expires, by the documented rule."""
    if token_ttl is None:
        return tokens.DEFAULT_TTL if context_ttl is None else context_ttl
    return token_ttl if context_ttl is None else min(context_ttl, token_ttl)


async def check_token_expiry(loads: Loads, settings: Settings) -> list[str]:
    """6 users x 5 token shapes: each loaded context, and its scopes, end at the token's expiry."""
    violations: list[str] = []
    clock = FakeClock()
    with use_clock(clock):
        for i in range(USERS):
            user = f"fm16-expiry-user-{i}"
            for context_ttl, token_ttl in SHAPES:
                shape = f"context ttl {context_ttl}, token ttl {token_ttl}"
                lapse = _expected(context_ttl, token_ttl)
                await _one(loads, clock, user, shape, context_ttl, token_ttl, lapse, violations)
    return violations


async def _one(
    loads: Loads,
    clock: FakeClock,
    user: str,
    shape: str,
    context_ttl: float | None,
    token_ttl: float | None,
    lapse: float,
    violations: list[str],
) -> None:
    signed_at = clock.time()
    ctx = UserContext.new(user, tenant_id="fm16", ttl=context_ttl)
    token = tokens.dumps(ctx, key=KEY, purpose=PURPOSE, ttl=token_ttl)
    loaded = loads(token, keys=[KEY], purpose=PURPOSE)
    if loaded.expires_at != signed_at + lapse:
        got = None if loaded.expires_at is None else loaded.expires_at - signed_at
        violations.append(f"{user} ({shape}): the context expires at +{got}, the token at +{lapse}")

    # async with: the body runs just before the expiry and is cancelled at it.
    ended: list[float] = []
    entered = anyio.Event()

    async def body() -> None:
        try:
            async with Scope(loaded):
                entered.set()
                await anyio.sleep_forever()
        except ContextExpiredError:
            ended.append(clock.time() - signed_at)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(body)
        await entered.wait()
        clock.advance(lapse - _BEFORE)
        await anyio.wait_all_tasks_blocked()
        if ended:
            violations.append(f"{user} ({shape}): the scope ended at +{ended[0]}, before +{lapse}")
        clock.advance(_BEFORE)
        await anyio.wait_all_tasks_blocked()
        if not ended:
            violations.append(
                f"{user} ({shape}): the scope from the token still runs at its expiry +{lapse}"
            )
            tasks.cancel_scope.cancel()

    # with: current_context() fails closed from the expiry on; the token is refused.
    fresh = tokens.dumps(
        UserContext.new(user, tenant_id="fm16", ttl=context_ttl),
        key=KEY,
        purpose=PURPOSE,
        ttl=token_ttl,
    )
    start = clock.time()
    loaded = loads(fresh, keys=[KEY], purpose=PURPOSE)
    try:
        with Scope(loaded):
            clock.advance(lapse)
            try:
                current_context()
            except ContextExpiredError:
                pass
            else:
                violations.append(
                    f"{user} ({shape}): current_context() answered at the token's expiry"
                )
    except ContextExpiredError:
        pass
    try:
        loads(fresh, keys=[KEY], purpose=PURPOSE)
    except TokenExpiredError:
        pass
    else:
        violations.append(f"{user} ({shape}): the token was accepted at +{clock.time() - start}")


# -- the mutant: loads() that drops the token's expiry --


def _loads_dropping_exp(token: str, *, keys: Any, purpose: str) -> UserContext:
    """Mutant: verify as the library does, then keep only the signing context's deadline."""
    ctx = tokens.loads(token, keys=keys, purpose=purpose)
    body = token.split(".")[2]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return attrs.evolve(ctx, expires_at=payload["ce"])


def register(registry: ModeRegistry) -> None:
    """Register FM16's token-expiry check."""
    add_check(
        registry,
        16,
        "token-expiry",
        check_token_expiry,
        library=lambda: tokens.loads,
        mutant=lambda: _loads_dropping_exp,
        description=(
            "6 users x 5 token shapes: a context from a token, and the scopes entered "
            "with it, end at min(token expiry, context expiry)"
        ),
    )
