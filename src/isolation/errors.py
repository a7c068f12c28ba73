"""Every error :mod:`isolation` raises, in one tree (also importable as ``isolation.X``).

Each error also inherits the builtin whose meaning it shares, so existing
``except LookupError`` or ``except TimeoutError`` blocks keep working::

    IsolationError(Exception)
    ├── UsageError(TypeError)                 an API called the wrong way
    ├── ConfigurationError(ValueError)        a bad setting or argument value
    ├── UnsupportedBackendError(RuntimeError) an asyncio-only part used under trio
    ├── CrossContextAccessError(PermissionError)
    │                                         an object used outside the scope that owns it
    ├── ContextError                          who is asking, and until when
    │   ├── NoContextError(LookupError)       no scope is bound here
    │   ├── ScopeEndedError                   code outlived its scope (fail closed)
    │   ├── InvalidContextError(ValueError)   a field failed validation
    │   ├── ContextSwitchError                another principal inside a bound scope
    │   ├── ContextExpiredError(TimeoutError) the deadline passed
    │   └── CleanupTimeoutError(TimeoutError) a finalizer overran its cleanup time
    ├── TokenError(ValueError)                a token to carry a context was refused
    │   ├── MalformedTokenError
    │   ├── TokenSignatureError
    │   ├── TokenExpiredError
    │   ├── TokenPurposeError
    │   └── TokenReplayedError
    ├── FactoryError                          what is built per scope
    │   └── SharedStateError                  mutable state reachable from two principals
    ├── SessionError                          database sessions
    │   ├── PoolExhaustedError(TimeoutError)
    │   ├── SessionInUseError(RuntimeError)
    │   └── DatabaseConnectionLostError(ConnectionError)
    └── EventError                            the event router
        ├── ConnectionClosedError
        ├── ConnectionLimitError
        ├── QueueFullError
        ├── EventTooLargeError(ValueError)
        └── BackendUnavailableError(ConnectionError)

:class:`WalkTruncatedWarning` (a ``UserWarning``, not an error) is here too:
a shared-state walk stopped at one of its bounds.

Messages render from fields in ``__str__`` and end with what to do. They never
contain token material; user ids pass through the redaction hook of
:mod:`isolation.logging`.
"""

from isolation._errors import (
    BackendUnavailableError,
    CleanupTimeoutError,
    ConfigurationError,
    ConnectionClosedError,
    ConnectionLimitError,
    ContextError,
    ContextExpiredError,
    ContextSwitchError,
    CrossContextAccessError,
    DatabaseConnectionLostError,
    EventError,
    EventTooLargeError,
    FactoryError,
    InvalidContextError,
    IsolationError,
    MalformedTokenError,
    NoContextError,
    PoolExhaustedError,
    QueueFullError,
    ScopeEndedError,
    SessionError,
    SessionInUseError,
    SharedStateError,
    TokenError,
    TokenExpiredError,
    TokenPurposeError,
    TokenReplayedError,
    TokenSignatureError,
    UnsupportedBackendError,
    UsageError,
    WalkTruncatedWarning,
)

__all__ = [
    "BackendUnavailableError",
    "CleanupTimeoutError",
    "ConfigurationError",
    "ConnectionClosedError",
    "ConnectionLimitError",
    "ContextError",
    "ContextExpiredError",
    "ContextSwitchError",
    "CrossContextAccessError",
    "DatabaseConnectionLostError",
    "EventError",
    "EventTooLargeError",
    "FactoryError",
    "InvalidContextError",
    "IsolationError",
    "MalformedTokenError",
    "NoContextError",
    "PoolExhaustedError",
    "QueueFullError",
    "ScopeEndedError",
    "SessionError",
    "SessionInUseError",
    "SharedStateError",
    "TokenError",
    "TokenExpiredError",
    "TokenPurposeError",
    "TokenReplayedError",
    "TokenSignatureError",
    "UnsupportedBackendError",
    "UsageError",
    "WalkTruncatedWarning",
]
