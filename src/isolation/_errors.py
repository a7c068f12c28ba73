"""The error classes of :mod:`isolation.errors` (their public home, where the tree is drawn).

Core: every part imports its errors from here, and nothing here imports a part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


def _rebuild(cls: type[IsolationError], state: dict[str, Any]) -> IsolationError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, state.get("message", ""))
    return err


class IsolationError(Exception):
    """The base of every error :mod:`isolation` raises.

    Args:
        message: What went wrong, naming the values involved.
        hint: What to do about it; defaults to the class's ``hint``.
    """

    hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint  # type: ignore[misc]  # an instance may override the class hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}. {self.hint}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only fields, so the default (cls, args) fails.
        return (_rebuild, (type(self), dict(self.__dict__)))


class UsageError(IsolationError, TypeError):
    """An API of :mod:`isolation` was called the wrong way."""


class ConfigurationError(IsolationError, ValueError):
    """A setting or argument has a value :mod:`isolation` cannot accept."""


class UnsupportedBackendError(IsolationError, RuntimeError):
    """An asyncio-only part (sessions, Redis) was used under another event loop."""

    hint = "Run this part under asyncio, or use the in-memory alternative"


class CrossContextAccessError(IsolationError, PermissionError):
    """An object was used outside the scope that owns it."""

    hint = "Build the object inside the scope that uses it; never keep it across requests"


class ContextError(IsolationError):
    """Who is asking, and until when: the base of the context errors."""


class NoContextError(ContextError, LookupError):
    """No scope is bound where a user context is required."""

    hint = "Run this code inside `with isolation.scope(ctx):` or `async with isolation.scope(ctx):`"


class ScopeEndedError(ContextError):
    """Code still runs in a copy of a scope that has ended (an escaped task or thread).

    This is deliberately not a :class:`NoContextError`: the work started on behalf
    of a user outlived that user's request, and must not silently continue
    unauthenticated either.
    """

    hint = (
        "Await the work before the scope ends (use a task group), "
        "or give it its own scope, for example from a token"
    )


class InvalidContextError(ContextError, ValueError):
    """A field of a :class:`~isolation.UserContext` failed validation.

    Attributes:
        field: The field name, for example ``"user_id"`` or ``"roles"``.
        rule: The rule broken, for example ``"must not be empty"``.
        value_prefix: A short ``repr()`` of the start of the bad value.
    """

    def __init__(self, *, field: str, rule: str, value_prefix: str) -> None:
        self.field = field
        self.rule = rule
        self.value_prefix = value_prefix
        super().__init__(
            f"invalid {field}: {rule} (got {value_prefix})",
            hint="Validate input at the edge and refuse the request",
        )


class ContextSwitchError(ContextError):
    """A scope for another principal was entered while one is bound.

    Attributes:
        entered: The principal that was refused (an :class:`isolation.Principal`,
            whose ``repr`` goes through the installed redactor, as the message does).
        bound: The principal bound at the time, the same way.
    """

    hint = (
        "Run work for another user in its own scope outside this one, "
        "or pass allow_switch=True if this is deliberate"
    )

    def __init__(
        self,
        message: str,
        *,
        entered: tuple[str | None, str] | None = None,
        bound: tuple[str | None, str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.entered = entered
        self.bound = bound
        super().__init__(message, hint=hint)


class ContextExpiredError(ContextError, TimeoutError):
    """The context's deadline passed: the work inside was cancelled, nothing committed."""

    hint = "Give the request a longer ttl, or do less inside one scope"


class CleanupTimeoutError(ContextError, TimeoutError):
    """A scope's finalizer overran its cleanup time and was abandoned.

    Reported (logged, and raised from the scope's exit when the body raised
    nothing else) like any failing finalizer.

    Attributes:
        finalizer: The finalizer's qualified name.
        timeout: The scope's ``cleanup_timeout``, in seconds.
    """

    hint = "Give the scope a longer cleanup_timeout, or make the finalizer do less"

    def __init__(self, message: str, *, finalizer: str = "", timeout: float = 0.0) -> None:
        self.finalizer = finalizer
        self.timeout = timeout
        super().__init__(message)


class TokenError(IsolationError, ValueError):
    """A token carrying a context was refused."""


class MalformedTokenError(TokenError):
    """The token is not a well-formed token of this library (or is too large)."""


class TokenSignatureError(TokenError):
    """The token's signature does not verify with any of the given keys."""


class TokenExpiredError(TokenError):
    """The token's expiry has passed, or it was issued further in the future than the
    clock-skew tolerance allows."""


class TokenPurposeError(TokenError):
    """The token was made for another purpose."""


class TokenReplayedError(TokenError):
    """A single-use token (a ticket) was presented a second time."""


class FactoryError(IsolationError):
    """What is built per scope: the base of the factory errors."""


class SharedStateError(FactoryError):
    """Mutable state is reachable from the instances of two principals.

    Attributes:
        principals: The two principals (:class:`isolation.Principal`, a
            ``(tenant_id, user_id)`` tuple whose ``repr`` is redacted): this build's,
            then the other's.
        paths: The attribute path on each side, for example ``(("Engine", "cache"),) * 2``.
    """

    hint = "Build the shared object per scope, or declare it with isolation.shareable(obj)"

    def __init__(
        self,
        message: str,
        *,
        principals: tuple[tuple[str | None, str], ...] = (),
        paths: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.principals = principals
        self.paths = paths
        super().__init__(message)


class SessionError(IsolationError):
    """Database sessions: the base of the session errors."""


class PoolExhaustedError(SessionError, TimeoutError):
    """No connection could be admitted within the acquire timeout.

    Attributes:
        limit: ``"per_user"`` (the principal held ``per_user_limit`` blocks) or
            ``"pool"`` (every connection of the pool was in use).
        held: Blocks the principal held when it gave up.
        capacity: The bound that was full (``per_user_limit`` or the pool's size).
        waited: Seconds it waited.
        timeout: The manager's ``acquire_timeout``.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str = "",
        held: int = 0,
        capacity: int | None = None,
        waited: float = 0.0,
        timeout: float = 0.0,
        hint: str | None = None,
    ) -> None:
        self.limit = limit
        self.held = held
        self.capacity = capacity
        self.waited = waited
        self.timeout = timeout
        super().__init__(message, hint=hint)


class SessionInUseError(SessionError, RuntimeError):
    """Another task of the same scope is inside a session block."""


class DatabaseConnectionLostError(SessionError, ConnectionError):
    """A session block's database connection was closed by the server or the network.

    For example an idle pooled connection whose backend was terminated (a
    restart, an idle timeout, ``pg_terminate_backend``). The block's work was
    rolled back and the connection discarded; the driver's error is the
    ``__cause__``.
    """


class EventError(IsolationError):
    """The event router: the base of the event errors."""


class ConnectionClosedError(EventError):
    """The connection (or the whole router) is closed.

    Attributes:
        reason: Why, an :class:`isolation.events.CloseReason`.
    """

    hint = "Open a new connection; a closed one is never reopened"

    # Typed Any: the error tree sits below the events layer (a CloseReason at run time).
    def __init__(self, message: str, *, reason: Any, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, hint=hint)


class ConnectionLimitError(EventError):
    """The principal has as many open connections as allowed.

    Attributes:
        limit: The router's ``max_connections_per_user``.
    """

    hint = "Close a connection of this user first, or raise max_connections_per_user"

    def __init__(self, message: str, *, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


class QueueFullError(EventError):
    """A ``BLOCK`` publish waited ``publish_timeout`` and some queues were still full.

    Attributes:
        result: The partial :class:`isolation.events.PublishResult`: the
            connections with room got the event, the timed-out ones count as dropped.
        connections: The connections that timed out.
    """

    hint = "Consume faster, raise queue_size or publish_timeout, or choose another Overflow policy"

    # Typed Any: the error tree sits below the events layer (a PublishResult and
    # Connections at run time).
    def __init__(self, message: str, *, result: Any, connections: Sequence[Any]) -> None:
        self.result = result
        self.connections = tuple(connections)
        super().__init__(message)


class EventTooLargeError(EventError, ValueError):
    """The event is larger than the router accepts."""


class BackendUnavailableError(EventError, ConnectionError):
    """The event backend (for example Redis) cannot be reached."""


class WalkTruncatedWarning(UserWarning):
    """A shared-state walk stopped at a bound: the objects beyond it were not compared."""


# Every error prints and pickles under its public path, `isolation.errors.X`.
for _value in list(globals().values()):
    if isinstance(_value, type) and _value.__module__ == __name__:
        _value.__module__ = "isolation.errors"
del _value
