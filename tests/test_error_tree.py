"""The error tree is true: each documented error, raised through the public API, is the
class docs/reference/errors.md names, an IsolationError, and the builtin it replaces.

Errors that need a real server to raise are checked where that server is: the Redis
backend's BackendUnavailableError in tests/redis/test_redis_backend.py, a killed
PostgreSQL backend's DatabaseConnectionLostError in tests/sessions/test_connection_lost.py,
SessionInUseError's two tasks in tests/sessions/test_session_guard.py.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import isolation
import isolation.logging
from isolation import Principal, UserContext, tokens
from isolation.events import EventRouter, Overflow

KEY = tokens.generate_key()
DOCS = Path(__file__).parent.parent / "docs" / "reference" / "errors.md"


def expect(
    error: type[BaseException], builtin: type[BaseException] | None = None
) -> pytest.RaisesContext[BaseException]:
    """pytest.raises(error), after checking the class is an IsolationError (and builtin)."""
    assert issubclass(error, isolation.IsolationError)
    if builtin is not None:
        assert issubclass(error, builtin)
    return pytest.raises(error)


# -- every error the reference documents is raised here (or where its server is) ----

RAISED_HERE = {
    "UsageError",
    "ConfigurationError",
    "CrossContextAccessError",
    "NoContextError",
    "ScopeEndedError",
    "InvalidContextError",
    "ContextSwitchError",
    "ContextExpiredError",
    "CleanupTimeoutError",
    "MalformedTokenError",
    "TokenSignatureError",
    "TokenPurposeError",
    "TokenExpiredError",
    "TokenReplayedError",
    "SharedStateError",
    "PoolExhaustedError",
    "UnsupportedBackendError",
    "ConnectionLimitError",
    "EventTooLargeError",
    "QueueFullError",
    "ConnectionClosedError",
}
ELSEWHERE = {"BackendUnavailableError", "DatabaseConnectionLostError", "SessionInUseError"}
BASES = {
    "IsolationError",
    "ContextError",
    "TokenError",
    "FactoryError",
    "SessionError",
    "EventError",
}


def test_every_documented_error_is_covered() -> None:
    """The reference's tables list exactly the errors raised here, elsewhere, or never
    raised themselves (the bases), and each is an error of isolation.errors."""
    documented = set(re.findall(r"^\| `(\w+Error)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == RAISED_HERE | ELSEWHERE | BASES
    assert documented == {n for n in isolation.errors.__all__ if not n.endswith("Warning")}


# -- base and argument errors --------------------------------------------------------


def test_usage_error_is_a_type_error() -> None:
    with expect(isolation.UsageError, TypeError):
        isolation.scope("alice")  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with expect(isolation.ConfigurationError, ValueError):
        isolation.scope(UserContext.new("alice"), cleanup_timeout=-1)


def test_cross_context_access_error_is_a_permission_error() -> None:
    @isolation.owned
    class Cart:
        def total(self) -> int:
            return 0

    with isolation.scope(UserContext.new("alice")):
        cart = Cart()
    with (
        isolation.scope(UserContext.new("bob")),
        expect(isolation.CrossContextAccessError, PermissionError),
    ):
        cart.total()


# -- contexts and scopes -------------------------------------------------------------


def test_no_context_error_is_a_lookup_error() -> None:
    with expect(isolation.NoContextError, LookupError):
        contextvars.Context().run(isolation.current_context)


def test_scope_ended_error_is_not_a_no_context_error() -> None:
    with isolation.scope(UserContext.new("alice")):
        escaped = contextvars.copy_context()
    with expect(isolation.ScopeEndedError):
        escaped.run(isolation.current_context)
    assert not issubclass(isolation.ScopeEndedError, LookupError | isolation.NoContextError)


def test_invalid_context_error_is_a_value_error() -> None:
    with expect(isolation.InvalidContextError, ValueError) as info:
        UserContext.new("alice\u202e")
    assert info.value.field == "user_id"  # type: ignore[attr-defined]


def test_context_switch_error_carries_the_two_principals_redacted() -> None:
    """entered and bound are isolation.Principal objects; their repr and the message go
    through the redactor, so neither shows a raw id once one is installed."""
    previous = isolation.logging.set_redactor(lambda value: "<id>")
    try:
        with isolation.scope(UserContext.new("alice", tenant_id="acme")):
            with expect(isolation.ContextSwitchError) as info:
                with isolation.scope(UserContext.new("bob")):
                    pass
        err: Any = info.value
        assert err.entered == Principal(None, "bob")
        assert type(err.entered) is Principal
        assert err.bound == Principal("acme", "alice")
        assert type(err.bound) is Principal
        for text in (str(err), repr(err.entered), repr(err.bound)):
            assert "alice" not in text
            assert "bob" not in text
            assert "acme" not in text
    finally:
        isolation.logging.set_redactor(previous)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_router_context_switch_error_carries_the_principals(anyio_backend: str) -> None:
    """Connecting as another principal inside a bound scope names both principals."""
    router = EventRouter()
    async with isolation.scope(UserContext.new("alice", tenant_id="acme")):
        with expect(isolation.ContextSwitchError) as info:
            await router.connect(UserContext.new("bob"))
    err: Any = info.value
    assert (err.entered, err.bound) == (Principal(None, "bob"), Principal("acme", "alice"))
    await router.aclose()


def test_context_expired_error_is_a_timeout_error(fake_clock: isolation.testing.FakeClock) -> None:
    ctx = UserContext.new("alice", ttl=5)
    fake_clock.advance(6)
    with expect(isolation.ContextExpiredError, TimeoutError), isolation.scope(ctx):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cleanup_timeout_error_is_a_timeout_error(anyio_backend: str) -> None:
    async def stuck(exc: BaseException | None) -> None:
        await anyio.Event().wait()

    with anyio.fail_after(10), expect(isolation.CleanupTimeoutError, TimeoutError) as info:
        async with isolation.scope(UserContext.new("alice"), cleanup_timeout=0.01) as s:
            s.on_close(stuck)
    err: Any = info.value
    assert err.finalizer.endswith("stuck")
    assert err.timeout == 0.01


# -- tokens --------------------------------------------------------------------------


def test_token_errors_are_value_errors(fake_clock: isolation.testing.FakeClock) -> None:
    token = tokens.dumps(UserContext.new("alice"), key=KEY, purpose="job", ttl=60)
    with expect(isolation.MalformedTokenError, ValueError):
        tokens.loads("not a token", keys=[KEY], purpose="job")
    with expect(isolation.TokenSignatureError, ValueError):
        tokens.loads(token, keys=[tokens.generate_key()], purpose="job")
    with expect(isolation.TokenPurposeError, ValueError):
        tokens.loads(token, keys=[KEY], purpose="ws-connect")
    fake_clock.advance(61)
    with expect(isolation.TokenExpiredError, ValueError):
        tokens.loads(token, keys=[KEY], purpose="job")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_token_replayed_error_is_a_token_error(anyio_backend: str) -> None:
    router = EventRouter(keys=[KEY])
    ticket = router.issue_ticket(UserContext.new("alice"))
    await router.connect(token=ticket)
    with expect(isolation.TokenReplayedError, ValueError):
        await router.connect(token=ticket)
    await router.aclose()


# -- factories -----------------------------------------------------------------------


class _Leaky:
    cache: dict[str, int] = {}  # noqa: RUF012  # the shared state under test

    def __init__(self) -> None:
        self.cache = _Leaky.cache


def test_shared_state_error_carries_principals() -> None:
    make = isolation.request_scoped(_Leaky)
    with isolation.scope(UserContext.new("alice", tenant_id="acme")):
        make()

        def bob() -> None:
            with isolation.scope(UserContext.new("bob")):
                make()

        with expect(isolation.SharedStateError) as info:
            contextvars.Context().run(bob)
    err: Any = info.value
    assert err.principals == (Principal(None, "bob"), Principal("acme", "alice"))
    assert all(type(p) is Principal for p in err.principals)


# -- sessions ------------------------------------------------------------------------


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Any]:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        yield engine
    finally:
        engine.dispose()


def test_pool_exhausted_error_is_a_timeout_error_with_its_fields(sync_engine: Any) -> None:
    from sqlalchemy import text

    from isolation.sessions import SessionManager

    manager = SessionManager(sync_engine, per_user_limit=1, acquire_timeout=0.05)

    def second_block() -> None:
        with isolation.scope(UserContext.new("alice")), manager.session():
            pass

    with isolation.scope(UserContext.new("alice")), manager.session() as s:
        s.execute(text("SELECT 1"))
        with expect(isolation.PoolExhaustedError, TimeoutError) as info:
            contextvars.Context().run(second_block)
    err: Any = info.value
    assert err.limit == "per_user"
    assert (err.held, err.capacity, err.timeout) == (1, 1, 0.05)
    assert 0.05 <= err.waited < 5
    manager.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_unsupported_backend_error_is_a_runtime_error(
    anyio_backend: str, tmp_path: Path
) -> None:
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    from isolation.sessions import SessionManager

    manager = SessionManager(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"))
    async with isolation.scope(UserContext.new("alice")):
        with expect(isolation.UnsupportedBackendError, RuntimeError):
            async with manager.session():
                pass


# -- events --------------------------------------------------------------------------


def _run(fn: Callable[[], Any]) -> None:
    anyio.run(fn)


def test_event_errors() -> None:
    alice = UserContext.new("alice")

    async def main() -> None:
        router = EventRouter(
            max_connections_per_user=1,
            max_event_bytes=64,
            queue_size=1,
            overflow=Overflow.BLOCK,
            publish_timeout=0.01,
        )
        conn = await router.connect(alice)
        with expect(isolation.ConnectionLimitError) as limit:
            await router.connect(alice)
        assert limit.value.limit == 1  # type: ignore[attr-defined]
        with expect(isolation.EventTooLargeError, ValueError):
            await router.publish(alice.principal, "x" * 100)
        await router.publish(alice.principal, 1)
        with expect(isolation.QueueFullError):
            await router.publish(alice.principal, 2)
        conn.close()
        with expect(isolation.ConnectionClosedError):
            await conn.receive()
        await router.aclose()

    _run(main)
