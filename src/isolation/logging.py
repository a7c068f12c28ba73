"""Logging for :mod:`isolation`: named loggers, a context filter, and id redaction.

The library logs under ``isolation.context``, ``isolation.factories``,
``isolation.sessions``, ``isolation.events`` and ``isolation.report``, with
structured ``extra`` keys (``event``, plus whatever names the thing involved).
:class:`ContextFilter` stamps ``user_id``, ``tenant_id`` and ``request_id`` of
the current scope on every record it sees, so your own log lines carry them too.

User ids are often e-mail addresses: :func:`set_redactor` installs one function
that every log line and error message of the library applies to user and tenant
ids; :func:`hmac_redactor` builds a keyed-hash one.

Tokens and tickets in URLs reach a server's access log: :class:`SecretsFilter`
masks them, and :func:`install_secrets_filter` attaches it to uvicorn's loggers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from isolation._deprecated import moved as _moved
from isolation._errors import ConfigurationError, IsolationError
from isolation._log_secrets import REDACTED, SecretsFilter, install_secrets_filter, redact_secrets
from isolation._redact import Redactor as _Redactor
from isolation._redact import redact as _redact_id
from isolation._redact import set_redactor

__all__ = [
    "ContextFilter",
    "REDACTED",
    "SecretsFilter",
    "hmac_redactor",
    "install_secrets_filter",
    "redact_secrets",
    "set_redactor",
]

# Names that left the surface (issue 19): they warn for one release. The loggers are
# logging.getLogger("isolation.<part>").
__getattr__ = _moved(
    __name__,
    {
        "Redactor": ("isolation._redact", "Redactor"),
        "get_logger": ("isolation.logging", "_get_logger"),
        "redact": ("isolation._redact", "redact"),
    },
)

_PARTS = frozenset({"context", "factories", "sessions", "events", "report", "tokens"})


def _get_logger(part: str) -> logging.Logger:
    """Return the library's logger for ``part`` (``"context"``, ``"sessions"``, ...)."""
    if part not in _PARTS:
        raise ConfigurationError(f"unknown logger part {part!r}; expected one of {sorted(_PARTS)}")
    return logging.getLogger(f"isolation.{part}")


class ContextFilter(logging.Filter):
    """Stamp ``user_id``, ``tenant_id`` and ``request_id`` on each record.

    Outside a scope (or in a copy of a scope that has ended) the fields are
    ``"-"``, so format strings that use them never fail. A scope past its
    deadline but still exiting (its finalizers) keeps its ids, so cleanup lines
    stay attributable. Ids go through the redaction hook. Attach it to a handler::

        handler.addFilter(isolation.logging.ContextFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from isolation.context._interface import bound_scope, is_held
        from isolation.context._scope import current_scope

        scope = bound_scope()
        ctx = None
        if scope is not None:
            try:
                ctx = scope.context if scope.active else None
                if ctx is None and is_held(scope):
                    # Held across a yield: the scope seen here (its parent), if any.
                    ctx = current_scope().context
            except IsolationError:  # refused: no user stamped
                ctx = None
        if ctx is None:
            record.user_id = record.tenant_id = record.request_id = "-"
        else:
            record.user_id = _redact_id(ctx.user_id)
            record.tenant_id = _redact_id(ctx.tenant_id)
            record.request_id = ctx.request_id
        return True


def hmac_redactor(key: bytes, *, prefix: str = "u:", length: int = 16) -> _Redactor:
    """Build a redactor that shows ids as a keyed hash: stable, but not reversible.

    Args:
        key: A secret of at least 16 bytes, so ids cannot be guessed from hashes.
        prefix: Put before each hash, so redacted ids are recognisable.
        length: Hex characters kept of the HMAC-SHA256 digest (8 to 64).
    """
    given: object = key  # checked at run time too: callers need not be type-checked
    if not isinstance(given, bytes) or len(given) < 16:
        raise ConfigurationError("hmac_redactor() needs a key of at least 16 bytes")
    if not 8 <= length <= 64:
        raise ConfigurationError(f"hmac_redactor() length must be 8 to 64, got {length}")

    def _redact(value: str) -> str:
        digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return prefix + digest.hexdigest()[:length]

    return _redact
