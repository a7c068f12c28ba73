"""Pure validation of the text fields of a :class:`~isolation.UserContext`.

Rules for ids, roles and attribute keys and values: a ``str``, NFC-normalised,
non-empty, no leading or trailing white space, no character of the Unicode
categories Cc, Cf, Cs, Co, Cn, Zl or Zp, and at most a bounded length counted
after normalisation. Refusals raise :class:`~isolation.InvalidContextError`
naming the field and the rule, quoting only a short escaped prefix of the value.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from isolation._errors import InvalidContextError
from isolation._redact import redact

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_VALUE_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_ROLES",
    "check_attributes",
    "check_roles",
    "check_text",
    "check_timestamp",
    "check_ttl",
]

MAX_ID_LENGTH = 256
"""Longest user id, tenant id, role or attribute key, in code points after NFC."""
MAX_ATTRIBUTE_VALUE_LENGTH = 4096
"""Longest attribute value, in code points after NFC."""
MAX_ROLES = 64
"""Most roles a context may carry."""
MAX_ATTRIBUTES = 64
"""Most attributes a context may carry."""

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# NFC composes at most a few code points into one; anything this much longer
# than the limit cannot normalise below it, so refuse it before normalising.
_PRECHECK_FACTOR = 16
_PREFIX = 16


def _prefix(field: str, value: object) -> str:
    if isinstance(value, str):
        shown = value[:_PREFIX]
        if field in ("user_id", "tenant_id"):
            shown = redact(shown)
        text = repr(shown).encode("ascii", "backslashreplace").decode("ascii")
        return text + ("..." if len(value) > _PREFIX else "")
    return f"a {type(value).__name__}"


def _refuse(field: str, rule: str, value: object) -> InvalidContextError:
    return InvalidContextError(field=field, rule=rule, value_prefix=_prefix(field, value))


def check_text(field: str, value: Any, max_length: int = MAX_ID_LENGTH) -> str:
    """Return ``value`` NFC-normalised, or raise ``InvalidContextError`` naming ``field``."""
    if not isinstance(value, str):
        raise _refuse(field, "must be a str", value)
    if len(value) > max_length * _PRECHECK_FACTOR:
        raise _refuse(field, f"must be at most {max_length} characters", value)
    if value.isascii():
        # ASCII is its own NFC form, and its only bad characters are Cc.
        text = value
        if not text.isprintable():
            raise _refuse(field, "must not contain control characters (Cc)", value)
    else:
        try:
            text = unicodedata.normalize("NFC", value)
        except UnicodeError:  # pragma: no cover - CPython normalises lone surrogates as is
            raise _refuse(field, "must be valid Unicode", value) from None
        # isprintable() is False exactly for categories C* and Z* except U+0020,
        # so the per-character scan runs only for the rare text that needs it.
        if not text.isprintable():
            for char in text:
                category = unicodedata.category(char)
                if category in _BAD_CATEGORIES:
                    raise _refuse(
                        field,
                        f"must not contain characters of category {category} "
                        f"(found U+{ord(char):04X})",
                        value,
                    )
    if not text:
        raise _refuse(field, "must not be empty", value)
    if len(text) > max_length:
        raise _refuse(field, f"must be at most {max_length} characters", value)
    if text[0].isspace() or text[-1].isspace():
        raise _refuse(field, "must not start or end with white space", value)
    return str(text)


def check_roles(value: Any) -> frozenset[str]:
    """Return the roles as a frozenset of checked strings."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _refuse("roles", "must be an iterable of str (not a single str)", value)
    roles = frozenset(check_text("roles", role) for role in value)
    if len(roles) > MAX_ROLES:
        raise _refuse("roles", f"must hold at most {MAX_ROLES} roles", value)
    return roles


def check_attributes(value: Any) -> dict[str, str]:
    """Return the attributes as a new dict of checked keys and values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _refuse("attributes", "must be a mapping of str to str", value)
    if len(value) > MAX_ATTRIBUTES:
        raise _refuse("attributes", f"must hold at most {MAX_ATTRIBUTES} entries", value)
    checked: dict[str, str] = {}
    for key, item in value.items():
        name = check_text("attributes", key)
        checked[name] = check_text(f"attributes[{name!r}]", item, MAX_ATTRIBUTE_VALUE_LENGTH)
    if len(checked) != len(value):
        raise _refuse("attributes", "must not hold keys equal after NFC normalisation", value)
    return checked


def check_timestamp(field: str, value: Any) -> float:
    """Return ``value`` as a finite float of epoch seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(field, "must be a number of epoch seconds", value)
    result = float(value)
    if not math.isfinite(result):
        raise InvalidContextError(field=field, rule="must be finite", value_prefix=repr(value))
    return result


def check_ttl(value: Any) -> float:
    """Return ``value`` as a finite, positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("ttl", "must be a number of seconds", value)
    result = float(value)
    if not (math.isfinite(result) and result > 0):
        raise InvalidContextError(
            field="ttl", rule="must be finite and > 0", value_prefix=repr(value)
        )
    return result
