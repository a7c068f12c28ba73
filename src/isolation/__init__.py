"""Multi-tenant isolation primitives for async Python services.

Everything a request does on behalf of a user happens inside a scope::

    ctx = isolation.UserContext.new("alice", tenant_id="acme", ttl=30)
    async with isolation.scope(ctx):
        ...  # isolation.current_context() is ctx here, and in child tasks

This module only re-exports the public names; see the docs for the guide.
"""

from isolation import tokens as tokens
from isolation._clock import Clock as Clock
from isolation._errors import BackendUnavailableError as BackendUnavailableError
from isolation._errors import CleanupTimeoutError as CleanupTimeoutError
from isolation._errors import ConfigurationError as ConfigurationError
from isolation._errors import ConnectionClosedError as ConnectionClosedError
from isolation._errors import ConnectionLimitError as ConnectionLimitError
from isolation._errors import ContextError as ContextError
from isolation._errors import ContextExpiredError as ContextExpiredError
from isolation._errors import ContextSwitchError as ContextSwitchError
from isolation._errors import CrossContextAccessError as CrossContextAccessError
from isolation._errors import DatabaseConnectionLostError as DatabaseConnectionLostError
from isolation._errors import EventError as EventError
from isolation._errors import EventTooLargeError as EventTooLargeError
from isolation._errors import FactoryError as FactoryError
from isolation._errors import InvalidContextError as InvalidContextError
from isolation._errors import IsolationError as IsolationError
from isolation._errors import MalformedTokenError as MalformedTokenError
from isolation._errors import NoContextError as NoContextError
from isolation._errors import PoolExhaustedError as PoolExhaustedError
from isolation._errors import QueueFullError as QueueFullError
from isolation._errors import ScopeEndedError as ScopeEndedError
from isolation._errors import SessionError as SessionError
from isolation._errors import SessionInUseError as SessionInUseError
from isolation._errors import SharedStateError as SharedStateError
from isolation._errors import TokenError as TokenError
from isolation._errors import TokenExpiredError as TokenExpiredError
from isolation._errors import TokenPurposeError as TokenPurposeError
from isolation._errors import TokenReplayedError as TokenReplayedError
from isolation._errors import TokenSignatureError as TokenSignatureError
from isolation._errors import UnsupportedBackendError as UnsupportedBackendError
from isolation._errors import UsageError as UsageError
from isolation._lifetime import Lifetime as Lifetime
from isolation.context._local import ContextLocal as ContextLocal
from isolation.context._model import Attributes as Attributes
from isolation.context._model import UserContext as UserContext
from isolation.context._principal import Principal as Principal
from isolation.context._propagation import ContextThreadPoolExecutor as ContextThreadPoolExecutor
from isolation.context._propagation import to_thread as to_thread
from isolation.context._scope import Scope as Scope
from isolation.context._scope import ScopeStats as ScopeStats
from isolation.context._scope import current_context as current_context
from isolation.context._scope import current_context_or_none as current_context_or_none
from isolation.context._scope import current_scope as current_scope
from isolation.context._scope import scope_stats as scope_stats
from isolation.factories._graph import WalkTruncatedWarning as WalkTruncatedWarning
from isolation.factories._owned import owned as owned
from isolation.factories._registry import Registry as Registry
from isolation.factories._registry import RegistryStats as RegistryStats
from isolation.factories._request_scoped import request_scoped as request_scoped
from isolation.factories._shareable import shareable as shareable

scope = Scope
"""``isolation.scope(ctx)`` is :class:`Scope`: bind ``ctx`` with ``with`` or ``async with``."""

__version__ = "0.1.0.dev0"

__all__ = [
    "Attributes",
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
    "RegistryStats",
    "Scope",
    "ScopeEndedError",
    "ScopeStats",
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
    "tokens",
]
