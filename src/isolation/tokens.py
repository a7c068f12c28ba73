"""Signed tokens that carry a :class:`~isolation.UserContext` across processes.

A token is four dot-separated ASCII fields::

    iso1.<purpose, base64url>.<payload, base64url JSON>.<signature, base64url>

* ``iso1`` is the version tag.
* The **purpose** (for example ``"ws-connect"`` or ``"job"``) is written in
  clear and checked first, so a token made for one purpose is refused for any
  other with :class:`~isolation.TokenPurposeError`; it also selects the signing
  key: HMAC-SHA256 over ``iso1.<purpose>.<payload>`` with a key derived from the
  secret and the purpose, so a signature never verifies for another purpose.
* The **payload** is JSON (never pickle): user and tenant ids, roles,
  attributes, the context's own deadline, the token's expiry and the request id
  of the context that made it.

Every token expires: at the earlier of the context's ``expires_at`` and
``now + ttl``, or :data:`DEFAULT_TTL` seconds from now when neither is given.
``loads`` refuses a token once that instant has passed, and one issued more
than :data:`LEEWAY` seconds in the future (a clock too far behind). It
re-validates the context through ``UserContext``'s constructor and gives it a
**new** ``request_id`` (the original travels as the attribute
``parent_request_id``) and the token's expiry as its deadline, so work run from
a token never outlives it.

Malformed input of any shape (not ASCII, wrong fields, bad base64url or JSON,
wrong types, larger than 16 KiB) is a :class:`~isolation.MalformedTokenError` whose
message, ``repr``, ``args`` and exception chain hold no token material.

Keys: random secrets of at least 32 bytes with at least
8 distinct byte values (``generate_key()``, kept in
your secret store); the second rule refuses placeholders such as ``b"k" * 32``
or ``bytes(32)``, it does not measure a key's strength. ``dumps`` signs with one
key; ``loads`` accepts a sequence of keys, so rotation is: add the new key to
every verifier's list, then sign with it, then drop the old key once its tokens
have expired.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Final

from isolation import _clock
from isolation._deprecated import moved as _moved
from isolation._errors import (
    ConfigurationError,
    ContextExpiredError,
    InvalidContextError,
    MalformedTokenError,
    TokenExpiredError,
    TokenPurposeError,
    TokenSignatureError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._model import UserContext

__all__ = [
    "DEFAULT_TTL",
    "LEEWAY",
    "dumps",
    "generate_key",
    "loads",
]

# Names that left the surface (issue 19): they warn for one release.
__getattr__ = _moved(
    __name__,
    {
        name: ("isolation.tokens", f"_{name}")
        for name in (
            "MAX_TOKEN_BYTES",
            "MIN_KEY_BYTES",
            "MIN_KEY_DISTINCT_BYTES",
            "PARENT_REQUEST_ID",
            "VERSION",
        )
    },
)

_VERSION: Final = "iso1"
"""The version tag every token starts with."""
DEFAULT_TTL: Final = 900.0
"""Seconds a token lives when neither the context nor the caller sets a shorter time."""
LEEWAY: Final = 1.0
"""Seconds of clock skew tolerated: how far in the future a token's issue time may be."""
_MAX_TOKEN_BYTES: Final = 16 * 1024
"""Longest token accepted (and produced), in bytes."""
_MIN_KEY_BYTES: Final = 32
"""Shortest key accepted, in bytes."""
_MIN_KEY_DISTINCT_BYTES: Final = 8
"""Fewest distinct byte values a key may hold (a random 32-byte key has about 30)."""

_PARENT_REQUEST_ID: Final = "parent_request_id"

_PURPOSE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
_DERIVE_LABEL = b"isolation.tokens/" + _VERSION.encode() + b"/"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    # The regex admits only text that decodes: no decoding error (which would
    # carry the token's text in its args) can be chained to the refusal.
    if not _B64_RE.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedTokenError(f"the token's {what} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_purpose(purpose: object) -> str:
    if not isinstance(purpose, str) or not _PURPOSE_RE.fullmatch(purpose):
        raise ConfigurationError(
            f"purpose must be 1 to 64 characters of [A-Za-z0-9._:-], got {purpose!r:.40}"
        )
    return purpose


def _check_key(key: object, name: str = "key") -> bytes:
    if not isinstance(key, bytes):
        raise ConfigurationError(f"{name} must be bytes, got {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{name} must be at least {_MIN_KEY_BYTES} bytes, got {len(key)}",
            hint="Generate one with isolation.tokens.generate_key() and keep it in your secret store",
        )
    # The prefix settles it for a random key at a third of the cost (keys are checked per call).
    if len(set(key[:12])) < _MIN_KEY_DISTINCT_BYTES and len(set(key)) < _MIN_KEY_DISTINCT_BYTES:
        # Never the count or any byte: the message must not describe a secret.
        raise ConfigurationError(
            f"{name} is a placeholder, not a random secret: it has fewer than "
            f"{_MIN_KEY_DISTINCT_BYTES} distinct byte values",
            hint="Generate one with isolation.tokens.generate_key() and keep it in your secret store",
        )
    return key


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
        raise ConfigurationError(f"ttl must be finite seconds > 0, or None, got {ttl!r:.40}")
    return float(ttl)


def _check_keys(keys: object) -> tuple[bytes, ...]:
    if isinstance(keys, bytes | bytearray | str):
        raise ConfigurationError(
            "keys must be a sequence of keys, not a single key",
            hint="Pass keys=[key] (the list is how keys rotate)",
        )
    if not isinstance(keys, Sequence) or not keys:
        raise ConfigurationError("keys must be a non-empty sequence of bytes")
    return tuple(_check_key(key, f"keys[{i}]") for i, key in enumerate(keys))


def _signature(key: bytes, purpose: str, signed: bytes) -> str:
    derived = hmac.new(key, _DERIVE_LABEL + purpose.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(hmac.new(derived, signed, hashlib.sha256).digest())


def dumps(ctx: UserContext, *, key: bytes, purpose: str, ttl: float | None = None) -> str:
    """Sign ``ctx`` into a token for ``purpose``, valid until the earlier of its deadline and ``ttl``.

    Args:
        ctx: The context to carry.
        key: The signing secret, at least 32 bytes.
        purpose: What the token is for, for example ``"job"`` or ``"ws-connect"``.
        ttl: Seconds the token lives at most; :data:`DEFAULT_TTL` when neither
            this nor the context's deadline is set.

    Raises:
        UsageError: ``ctx`` is not a :class:`~isolation.UserContext`.
        ContextExpiredError: ``ctx`` has already expired.
        ConfigurationError: A bad key, purpose or ttl (named in the message).
    """
    if type(ctx) is not UserContext:
        raise UsageError(f"dumps() takes an isolation.UserContext, got {type(ctx).__name__}")
    _check_key(key)
    _check_purpose(purpose)
    now = _clock._now()
    expires = math.inf if ctx.expires_at is None else ctx.expires_at
    if ttl is not None:
        expires = min(expires, now + _check_ttl(ttl))
    elif ctx.expires_at is None:
        expires = now + DEFAULT_TTL
    if expires <= now:
        raise ContextExpiredError(
            f"the context of {redact_principal(ctx.principal)} has expired; "
            "it cannot be put in a token"
        )
    payload = {
        "u": ctx.user_id,
        "t": ctx.tenant_id,
        "r": sorted(ctx.roles),
        "a": dict(ctx.attributes),
        "ce": ctx.expires_at,
        "exp": expires,
        "iat": now,
        "rid": ctx.request_id,
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    head = f"{_VERSION}.{_b64encode(purpose.encode('ascii'))}.{_b64encode(body.encode('ascii'))}"
    token = f"{head}.{_signature(key, purpose, head.encode('ascii'))}"
    if len(token) > _MAX_TOKEN_BYTES:
        raise ConfigurationError(
            f"the token would be {len(token)} bytes, more than {_MAX_TOKEN_BYTES}",
            hint="Carry fewer or shorter attributes",
        )
    return token


def loads(token: str | bytes, *, keys: Sequence[bytes], purpose: str) -> UserContext:
    """Verify ``token`` and return a new, re-validated context from it.

    The context gets a new ``request_id``; the one of the context that made the
    token is in ``attributes["parent_request_id"]``. Its ``expires_at`` is the
    token's expiry (the earlier of the signing context's deadline and the
    token's ttl), so a scope entered from it ends when the token does.

    Raises:
        MalformedTokenError: Not ASCII, not a token of this library, too large,
            or its payload does not make a valid context. Never quotes the token.
        TokenPurposeError: Made for another purpose.
        TokenSignatureError: No key in ``keys`` verifies it (tampered or foreign).
        TokenExpiredError: Its expiry (or its context's) has passed, or it was
            issued more than :data:`LEEWAY` seconds in the future.
        ConfigurationError: Bad ``keys`` or ``purpose`` arguments.
    """
    verifying = _check_keys(keys)
    _check_purpose(purpose)
    token = _ascii_text(token)
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        raise MalformedTokenError(f"not an {_VERSION} token")
    _, purpose_part, payload_part, signature = parts
    raw_purpose = _b64decode(purpose_part, "purpose")
    # Only a purpose dumps() could have written is quoted back in an error.
    token_purpose = raw_purpose.decode("ascii") if raw_purpose.isascii() else ""
    if not _PURPOSE_RE.fullmatch(token_purpose):
        raise MalformedTokenError("the token's purpose is not a valid purpose")
    if not hmac.compare_digest(token_purpose.encode("ascii"), purpose.encode("ascii")):
        raise TokenPurposeError(
            f"the token was made for purpose {token_purpose!r:.70}, not {purpose!r}",
            hint="Each purpose needs its own token; never reuse one across purposes",
        )
    signed = token[: len(token) - len(signature) - 1].encode("ascii")
    # Compare the signature as text, in constant time, against each key: a
    # lenient base64 decode of the signature would let edited text pass.
    matched = False
    for candidate in verifying:
        matched |= hmac.compare_digest(
            _signature(candidate, purpose, signed).encode("ascii"), signature.encode("ascii")
        )
    if not matched:
        raise TokenSignatureError(
            "the token's signature does not verify with any of the keys given",
            hint="It was tampered with, or signed with a key that is not in keys",
        )
    return _context_from(_json(_b64decode(payload_part, "payload")))


def _ascii_text(token: object) -> str:
    """Return ``token`` as ASCII text, or refuse it without quoting any of it."""
    if isinstance(token, bytes):
        if len(token) > _MAX_TOKEN_BYTES:
            raise MalformedTokenError(f"the token is larger than {_MAX_TOKEN_BYTES} bytes")
        if not token.isascii():
            raise MalformedTokenError("the token is not ASCII")
        return token.decode("ascii")
    if not isinstance(token, str):
        raise MalformedTokenError(f"a token is a str, got {type(token).__name__}")
    text = str.__str__(token)  # a plain str: no overridden method of a subclass runs on it
    if len(text) > _MAX_TOKEN_BYTES:
        raise MalformedTokenError(f"the token is larger than {_MAX_TOKEN_BYTES} bytes")
    if not text.isascii():
        # Checked here, not left to an encode(): a UnicodeEncodeError quotes the text.
        raise MalformedTokenError("the token is not ASCII")
    return text


_NOT_JSON: Final = object()


def _no_constant(name: str) -> Any:
    raise MalformedTokenError("the token's payload is not JSON")  # caught by _json


# Made once: json.loads(..., parse_constant=...) would build a decoder per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)


def _json(raw: bytes) -> Any:
    payload: Any = _NOT_JSON
    if raw.isascii():
        # JSONDecodeError and the int-digit limit are ValueErrors.
        with contextlib.suppress(ValueError, RecursionError):
            payload = _DECODER.decode(raw.decode("ascii"))
    # Raised outside the handler: the parser's error, which quotes the payload, is not chained.
    if payload is _NOT_JSON:
        raise MalformedTokenError("the token's payload is not JSON")
    return payload


def _timestamp(value: object) -> float | None:
    """``value`` as finite epoch seconds, or ``None`` if it is not a usable number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value) if isinstance(value, float) or abs(value) < 2**53 else math.inf
    return seconds if math.isfinite(seconds) else None


def _context_from(payload: Any) -> UserContext:
    if not isinstance(payload, dict):
        raise MalformedTokenError("the token's payload is not a JSON object")
    expires = _timestamp(payload.get("exp"))
    if expires is None:
        raise MalformedTokenError("the token has no expiry")
    issued = _timestamp(payload.get("iat"))
    if issued is None:
        raise MalformedTokenError("the token has no issue time")
    context_expires = payload.get("ce")
    if context_expires is not None:
        context_expires = _timestamp(context_expires)
        if context_expires is None:
            raise MalformedTokenError("the token's context deadline is not a number")
    now = _clock._now()
    if issued > now + LEEWAY:
        raise TokenExpiredError(
            "the token was issued in the future, beyond the clock-skew leeway",
            hint="Check the clocks of the hosts that issue and verify tokens",
        )
    # The context lives exactly as long as the token: the earlier of the two deadlines.
    deadline = expires if context_expires is None else min(expires, context_expires)
    if now >= deadline:
        which = "token" if deadline == expires else "context in the token"
        raise TokenExpiredError(f"the {which} has expired", hint="Ask for a new token")
    attributes = payload.get("a")
    if not isinstance(attributes, dict):
        raise MalformedTokenError("the token's attributes are not an object")
    parent = payload.get("rid")
    if not isinstance(parent, str):
        raise MalformedTokenError("the token has no request id")
    try:
        return UserContext(
            user_id=payload.get("u"),
            tenant_id=payload.get("t"),
            roles=_list(payload.get("r")),
            attributes={**attributes, _PARENT_REQUEST_ID: parent},
            expires_at=deadline,
            issued_at=now,
        )
    except InvalidContextError as exc:
        raise MalformedTokenError(
            f"the token's context is invalid: {exc.field} {exc.rule}",
            hint="It was signed with a valid key: check what the signing side accepts",
        ) from exc


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedTokenError("the token's roles are not a list")
    return value


def generate_key() -> bytes:
    """Return a new random 32-byte key (``os.urandom``)."""
    return os.urandom(_MIN_KEY_BYTES)
