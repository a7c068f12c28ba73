"""Multi-tenant isolation primitives for async Python services.

Everything a request does on behalf of a user happens inside a scope::

    ctx = isolation.UserContext.new("alice", tenant_id="acme", ttl=30)
    async with isolation.scope(ctx):
        ...  # isolation.current_context() is ctx here, and in child tasks

This module only re-exports the public names; see the docs for the guide. The
errors live in :mod:`isolation.errors` and are re-exported here too
(``isolation.NoContextError`` is ``isolation.errors.NoContextError``); the
tokens are :mod:`isolation.tokens`.
"""

from isolation import errors as errors
from isolation import tokens as tokens
from isolation._clock import Clock as Clock
from isolation._deprecated import moved as _moved
from isolation._lifetime import Lifetime as Lifetime
from isolation.context._local import ContextLocal as ContextLocal
from isolation.context._model import UserContext as UserContext
from isolation.context._principal import Principal as Principal
from isolation.context._propagation import ContextThreadPoolExecutor as ContextThreadPoolExecutor
from isolation.context._propagation import to_thread as to_thread
from isolation.context._scope import Scope as Scope
from isolation.context._scope import current_context as current_context
from isolation.context._scope import current_context_or_none as current_context_or_none
from isolation.context._scope import current_scope as current_scope
from isolation.context._scope import scope_stats as scope_stats
from isolation.errors import BackendUnavailableError as BackendUnavailableError
from isolation.errors import CleanupTimeoutError as CleanupTimeoutError
from isolation.errors import ConfigurationError as ConfigurationError
from isolation.errors import ConnectionClosedError as ConnectionClosedError
from isolation.errors import ConnectionLimitError as ConnectionLimitError
from isolation.errors import ContextError as ContextError
from isolation.errors import ContextExpiredError as ContextExpiredError
from isolation.errors import ContextSwitchError as ContextSwitchError
from isolation.errors import CrossContextAccessError as CrossContextAccessError
from isolation.errors import DatabaseConnectionLostError as DatabaseConnectionLostError
from isolation.errors import EventError as EventError
from isolation.errors import EventTooLargeError as EventTooLargeError
from isolation.errors import FactoryError as FactoryError
from isolation.errors import InvalidContextError as InvalidContextError
from isolation.errors import IsolationError as IsolationError
from isolation.errors import MalformedTokenError as MalformedTokenError
from isolation.errors import NoContextError as NoContextError
from isolation.errors import PoolExhaustedError as PoolExhaustedError
from isolation.errors import QueueFullError as QueueFullError
from isolation.errors import ScopeEndedError as ScopeEndedError
from isolation.errors import SessionError as SessionError
from isolation.errors import SessionInUseError as SessionInUseError
from isolation.errors import SharedStateError as SharedStateError
from isolation.errors import TokenError as TokenError
from isolation.errors import TokenExpiredError as TokenExpiredError
from isolation.errors import TokenPurposeError as TokenPurposeError
from isolation.errors import TokenReplayedError as TokenReplayedError
from isolation.errors import TokenSignatureError as TokenSignatureError
from isolation.errors import UnsupportedBackendError as UnsupportedBackendError
from isolation.errors import UsageError as UsageError
from isolation.errors import WalkTruncatedWarning as WalkTruncatedWarning
from isolation.factories._owned import owned as owned
from isolation.factories._registry import Registry as Registry
from isolation.factories._request_scoped import request_scoped as request_scoped
from isolation.factories._shareable import shareable as shareable

scope = Scope
"""``isolation.scope(ctx)`` is :class:`Scope`: bind ``ctx`` with ``with`` or ``async with``."""

__version__ = "0.1.0.dev0"

# Names that left the top level (issue 19): they warn for one release.
__getattr__ = _moved(
    __name__,
    {
        "Attributes": ("isolation.context._model", "Attributes"),
        "RegistryStats": ("isolation.factories._registry", "RegistryStats"),
        "ScopeStats": ("isolation.context._scope", "ScopeStats"),
    },
)

__all__ = [
    "BackendUnavailableError",
    "CleanupTimeoutError",
    "Clock",
    "ConfigurationError",
    "ConnectionClosedError",
    "ConnectionLimitError",
    "ContextError",
    "ContextExpiredError",
    "ContextLocal",
    "ContextSwitchError",
    "ContextThreadPoolExecutor",
    "CrossContextAccessError",
    "DatabaseConnectionLostError",
    "EventError",
    "EventTooLargeError",
    "FactoryError",
    "InvalidContextError",
    "IsolationError",
    "Lifetime",
    "MalformedTokenError",
    "NoContextError",
    "PoolExhaustedError",
    "Principal",
    "QueueFullError",
    "Registry",
    "Scope",
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
    "UserContext",
    "WalkTruncatedWarning",
    "current_context",
    "current_context_or_none",
    "current_scope",
    "owned",
    "request_scoped",
    "scope",
    "scope_stats",
    "shareable",
    "to_thread",
]
