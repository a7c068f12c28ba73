"""Pure validation of the text fields of a :class:`~isolation.UserContext`.

Rules for ids, roles and attribute keys and values: a ``str``, **already in
Unicode NFC form**, non-empty, no leading or trailing white space, no character
of the Unicode categories Cc, Cf, Cs, Co, Cn, Zl or Zp, and at most a bounded
length. Refusals raise :class:`~isolation.InvalidContextError` naming the field
and the rule, quoting only a short, ASCII-escaped prefix of the value.

Nothing is ever rewritten: a value that passes is returned as given. Rewriting
(normalising, folding case or width) would make two spellings the application
keeps apart — two accounts — into one principal here. So ``"\u212blice"`` (with
the Angstrom sign) is refused, not turned into ``"\u00c5lice"``, and
``"\uff41lice"`` (fullwidth) is accepted and stays distinct from ``"alice"``.
:class:`~isolation.Principal` checks its ids with :func:`check_text` as a
context does, so a principal named anywhere (the router's ``publish`` and
look-ups included) follows the same rules.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
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
    "owner_refusal",
    "owner_value",
    "check_roles",
    "check_text",
    "check_timestamp",
    "check_ttl",
]

MAX_ID_LENGTH = 256
"""Longest user id, tenant id, role or attribute key, in code points."""
MAX_ATTRIBUTE_VALUE_LENGTH = 4096
"""Longest attribute value, in code points."""
MAX_ROLES = 64
"""Most roles a context may carry."""
MAX_ATTRIBUTES = 64
"""Most attributes a context may carry."""

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PREFIX = 16
NFC_RULE = (
    "must already be in Unicode NFC form (it is never rewritten: two spellings "
    "would become one principal)"
)
"""The rule an id breaks when it is not NFC (a decomposed or compatibility spelling)."""


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


def check_text(field: str, value: object, max_length: int = MAX_ID_LENGTH) -> str:
    """Return ``value`` unchanged if it follows the rules, or raise naming ``field``.

    Raises:
        InvalidContextError: Not a ``str``, too long, empty, padded with white
            space, holding a control, format (bidi, zero-width), surrogate,
            private-use, unassigned or line/paragraph separator character, or
            not already NFC.
    """
    if type(value) is not str:
        if not isinstance(value, str):
            raise _refuse(field, "must be a str", value)
        value = str(value)  # a subclass could override __eq__ or __hash__
    if len(value) > max_length:
        raise _refuse(field, f"must be at most {max_length} characters", value)
    if value.isascii():
        # ASCII is its own NFC form, and its only bad characters are Cc.
        if not value.isprintable():
            raise _refuse(field, "must not contain control characters (Cc)", value)
    else:
        # isprintable() is False exactly for categories C* and Z* except U+0020,
        # so the per-character scan runs only for the rare text that needs it.
        if not value.isprintable():
            for char in value:
                category = unicodedata.category(char)
                if category in _BAD_CATEGORIES:
                    raise _refuse(
                        field,
                        f"must not contain characters of category {category} "
                        f"(found U+{ord(char):04X})",
                        value,
                    )
        if not unicodedata.is_normalized("NFC", value):
            raise _refuse(field, NFC_RULE, value)
    if not value:
        raise _refuse(field, "must not be empty", value)
    if value[0].isspace() or value[-1].isspace():
        raise _refuse(field, "must not start or end with white space", value)
    return value


def owner_refusal(field: str, rule: str, value: object) -> InvalidContextError:
    """The refusal of an id that does not fit an owner column (``rule`` says why)."""
    return _refuse(field, rule, value)


def owner_value(field: str, value: str, python_type: type) -> object:
    """Return the id as the value of an owner column of ``python_type``, or refuse it.

    A ``str`` column takes the id as it is. An integer or UUID column takes it
    only in that type's one canonical text (``str(int(x)) == x``, lowercase
    hyphenated UUID): otherwise ``"123"``, ``"0123"`` and ``"+123"`` (or a UUID
    in upper and lower case) would be three users to the application and one
    owner to the database, which converts them all to the same value.

    Raises:
        InvalidContextError: The id is not the canonical text of ``python_type``.
    """
    if python_type is int:
        if value.isascii():
            try:
                number = int(value)
            except ValueError:
                number = None
            if number is not None and str(number) == value:
                return number
        raise _refuse(
            field,
            "must be an integer in canonical decimal form (no sign, leading zero, "
            "separator or non-ASCII digit) for an integer owner column",
            value,
        )
    if python_type is uuid.UUID:
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            parsed = None
        if parsed is not None and str(parsed) == value:
            return parsed
        raise _refuse(
            field,
            "must be a UUID in canonical lowercase hyphenated form for a UUID owner column",
            value,
        )
    return value


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
