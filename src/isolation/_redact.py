"""The hook that redacts user ids in log lines and error messages.

User ids are often e-mail addresses. Every place in :mod:`isolation` that
writes a user or tenant id into a log record or an exception message passes it
through :func:`redact`; :func:`isolation.logging.set_redactor` installs the
function it applies.
"""

from __future__ import annotations

from collections.abc import Callable

from isolation._errors import UsageError

__all__ = ["UNREDACTABLE", "redact", "redact_principal", "set_redactor"]

Redactor = Callable[[str], str]

_redactor: Redactor | None = None


UNREDACTABLE = "<unredactable id>"
"""Shown instead of an id when the installed redactor raises or returns a non-``str``."""


def set_redactor(redactor: Redactor | None) -> Redactor | None:
    """Install ``redactor`` (``None`` shows ids as they are); return the previous one.

    Raises:
        UsageError: ``redactor`` is neither callable nor ``None`` (refused here,
            not at the next error message, which it would turn into a ``TypeError``).
    """
    global _redactor
    if redactor is not None and not callable(redactor):
        raise UsageError(
            f"set_redactor() takes a callable from str to str, or None; got "
            f"{type(redactor).__name__}",
            hint="Pass a function such as isolation.logging.hmac_redactor(key)",
        )
    previous, _redactor = _redactor, redactor
    return previous


def redact(value: str | None) -> str:
    """Return ``value`` as it may appear in a log line or an error message.

    A redactor that raises or returns a non-``str`` gives :data:`UNREDACTABLE`:
    a failing redactor must neither leak the id nor replace the error being
    reported with its own.
    """
    if value is None:
        return "-"
    redactor = _redactor
    if redactor is None:
        return value
    try:
        shown = redactor(value)
    except Exception:
        return UNREDACTABLE
    return shown if type(shown) is str else UNREDACTABLE


def redact_tenant_repr(tenant_id: str | None) -> str:
    """A tenant id as a ``repr`` shows it, redacted (``None`` for a single-tenant one)."""
    return "None" if tenant_id is None else repr(redact(tenant_id))


def redact_principal(principal: tuple[str | None, str]) -> str:
    """Render a ``(tenant_id, user_id)`` pair for messages, redacted."""
    tenant, user = principal
    if tenant is None:
        return repr(redact(user))
    return f"{redact(user)!r} of tenant {redact(tenant)!r}"
