"""The hook that redacts user ids in log lines and error messages.

User ids are often e-mail addresses. Every place in :mod:`isolation` that
writes a user or tenant id into a log record or an exception message passes it
through :func:`redact`; :func:`isolation.logging.set_redactor` installs the
function it applies.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["redact", "redact_principal", "set_redactor"]

Redactor = Callable[[str], str]

_redactor: Redactor | None = None


def set_redactor(redactor: Redactor | None) -> Redactor | None:
    """Install ``redactor`` (``None`` shows ids as they are); return the previous one."""
    global _redactor
    previous, _redactor = _redactor, redactor
    return previous


def redact(value: str | None) -> str:
    """Return ``value`` as it may appear in a log line or an error message."""
    if value is None:
        return "-"
    if _redactor is None:
        return value
    return _redactor(value)


def redact_principal(principal: tuple[str | None, str]) -> str:
    """Render a ``(tenant_id, user_id)`` pair for messages, redacted."""
    tenant, user = principal
    if tenant is None:
        return repr(redact(user))
    return f"{redact(user)!r} of tenant {redact(tenant)!r}"
