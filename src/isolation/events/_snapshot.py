"""Payload snapshots: what a publish hands each recipient is fixed at publish, per recipient.

:func:`freeze` is called once per publish: it refuses what the Redis backend
refuses (anything JSON cannot carry: ``UsageError``) and returns a snapshot
the publisher no longer holds. Each recipient's connection turns the snapshot
into its own copy with :func:`thaw` when its consumer takes the event, so
mutating the published object afterwards, or one recipient's copy, changes
nothing anyone else receives. The copy is the payload's JSON form, as a
Redis round trip gives it (tuples arrive as lists, dict keys as strings,
enum members as their values).

A snapshot is one of: an immutable scalar (a ``str``, ``None``, a ``bool``,
an ``int`` of at most 63 bits, a finite ``float``) kept as is; a flat ``dict`` or
``list`` of such scalars and ``str`` (string keys), copied once here and
copied again per recipient, the common case and the cheap one; anything else
as its compact JSON text (a :class:`Json`), decoded per recipient.
"""

from __future__ import annotations

import json
from json import encoder as _json_encoder
from typing import Any, Final

from isolation._errors import UsageError

__all__ = ["INT_MAX", "INT_MIN", "Json", "freeze", "thaw"]

_INT_LIMIT: Final = 1 << 63
INT_MIN: Final = -_INT_LIMIT
"""Integers above ``INT_MIN`` and below ``INT_MAX`` are their own snapshot."""
INT_MAX: Final = _INT_LIMIT


class Json(str):
    """The compact JSON text of a snapshot: marked, so that a ``str`` payload is kept as is."""

    __slots__ = ()


def _make_encode() -> Any:
    """The C encoder, made once (``JSONEncoder.encode`` builds one per call), else the class."""
    make = getattr(_json_encoder, "c_make_encoder", None)
    fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    if make is None:  # pragma: no cover - CPython has it
        return fallback
    try:
        # No circular-reference markers: a cycle ends in RecursionError, refused like
        # any payload too deep to encode; a shared markers dict would keep stale ids
        # after a failed encode.
        c_encode = make(
            None,
            json.JSONEncoder().default,  # raises TypeError naming the type
            _json_encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )
        if "".join(c_encode({"a": [1, 2.5, None, True, "x"]}, 0)) != (
            '{"a":[1,2.5,null,true,"x"]}'
        ):  # pragma: no cover - a changed private signature
            return fallback
    except TypeError:  # pragma: no cover - a changed private signature
        return fallback

    def encode(payload: Any, _join: Any = "".join, _c: Any = c_encode) -> str:
        return _join(_c(payload, 0))  # type: ignore[no-any-return]

    return encode


_encode: Final = _make_encode()
# The decoder's scanner: json.loads() minus its checks, for text made by _encode.
_scan: Final[Any] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def freeze(
    payload: Any,
    _dict: type = dict,
    _list: type = list,
    _str: type = str,
    _int: type = int,
    _float: type = float,
    _bool: type = bool,
    _low: int = -_INT_LIMIT,
    _high: int = _INT_LIMIT,
) -> Any:
    """Return the snapshot of ``payload`` taken now (see the module docstring).

    (The defaults are local bindings for the hot path, never arguments.)

    Raises:
        UsageError: JSON cannot carry the payload (an object of another type,
            a non-string key JSON cannot convert, ``NaN`` or infinity, a cycle,
            nesting too deep, an integer too long to print).
    """
    kind = type(payload)
    if kind is _dict:
        for key, value in payload.items():
            if type(key) is not _str:
                break
            # _flat(value), inlined: this loop is the hot path of most publishes.
            of = type(value)
            if of is _str or of is _bool or value is None:
                continue
            if of is _int:
                if _low < value < _high:
                    continue
            elif of is _float and value - value == 0.0:  # finite
                continue
            break
        else:
            return payload.copy()
    elif kind is _list:
        for value in payload:
            if not _flat(value):
                break
        else:
            return payload.copy()
    elif kind is _str or payload is None or kind is _bool:
        return payload
    elif kind is _int:
        if _low < payload < _high:
            return payload
    elif kind is _float and payload - payload == 0.0:
        return payload
    try:
        return Json(_encode(payload))
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "it nests too deep or refers to itself" if type(exc) is RecursionError else exc
        raise UsageError(
            f"the payload cannot be published: JSON cannot carry it ({reason})",
            hint="Publish dicts, lists, str, int, float, bool and None only",
        ) from None


def _flat(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    return kind is float and value - value == 0.0


def thaw(snapshot: Any) -> Any:
    """Return a recipient's own copy of a :func:`freeze` snapshot.

    The connection's hot path inlines this; it is the reference.
    """
    kind = type(snapshot)
    if kind is dict or kind is list:
        return snapshot.copy()
    if kind is Json:
        return _scan(snapshot, 0)[0]
    return snapshot
