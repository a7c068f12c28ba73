"""Signed event envelopes and channel names for backends between processes: pure code.

No I/O and no event loop, so every rule here is tested on its own. An
envelope on the wire is ASCII framing around compact UTF-8 JSON (never
pickle)::

    iev1.<HMAC-SHA256, base64url, 43 characters>.<JSON body>

The body carries the event id, the recipient principal, the kind, the issue
time, the expiry, the sending backend's random origin id and the payload. The
signature is made with a key derived from the first of ``keys`` for the
purpose :data:`EVENT_PURPOSE`, as in :mod:`isolation.tokens` (so an event
signature never verifies as a token, or the reverse), and verified with any of
them. A channel name is ``{namespace}:`` and a SHA-256 digest of the principal
in an unambiguous encoding: it does not depend on the keys (rotating them
renames nothing) and two principals never share a channel, whatever their ids.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import hmac
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

from isolation._errors import ConfigurationError, EventTooLargeError, UsageError
from isolation.context._model import Principal
from isolation.events._model import GAP, Envelope
from isolation.tokens import _DERIVE_LABEL, LEEWAY, _check_keys

__all__ = [
    "DEFAULT_EVENT_TTL",
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "EVENT_PURPOSE",
    "Codec",
    "Drop",
    "ReplayWindow",
    "channel_name",
    "check_namespace",
]

EVENT_PURPOSE: Final = "isolation.event"
"""The purpose the envelope signing key is derived for."""
DEFAULT_EVENT_TTL: Final = 10.0
"""Seconds an envelope stays valid after it is published (the replay window)."""
DEFAULT_MAX_ENVELOPE_BYTES: Final = 64 * 1024
"""The largest envelope sent or accepted, in bytes."""

_MAGIC: Final = b"iev1."
_SIG_LEN: Final = 43  # base64url of 32 bytes, unpadded
_HEADER: Final = len(_MAGIC) + _SIG_LEN + 1
_CHANNEL_LABEL: Final = b"isolation.events/channel/v1\x00"
_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_ID: Final = 128
# Made once: json.dumps() with options builds a new encoder on every call.
_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Drop(enum.StrEnum):
    """Why a received envelope was dropped; each reason is counted on its own."""

    TOO_LARGE = "too_large"
    """Larger than the size limit (checked before anything else)."""
    MALFORMED = "malformed"
    """Not an envelope of this library: no ``iev1.`` framing, unsigned, not ASCII framing."""
    SIGNATURE = "signature"
    """The signature does not verify with any key: forged, tampered, or an unknown key."""
    NOT_JSON = "not_json"
    """Signed, but the body is not a JSON object."""
    INVALID = "invalid"
    """Signed JSON with a missing or ill-typed field, or a reserved kind."""
    WRONG_RECIPIENT = "wrong_recipient"
    """For another principal than the channel it arrived on."""
    EXPIRED = "expired"
    """Past its expiry (or issued further in the future than the clock leeway)."""
    REPLAYED = "replayed"
    """An event id already received within the replay window."""
    UNKNOWN_CHANNEL = "unknown_channel"
    """Arrived on a channel this process does not (or no longer) listen to."""


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is 1 to 64 characters of ``[A-Za-z0-9._-]``."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace must be 1 to 64 characters of [A-Za-z0-9._-], got {namespace!r:.40}",
            hint="Use a short name per deployment, for example 'chat-prod'",
        )
    return namespace


def channel_name(namespace: str, principal: Principal) -> str:
    """The channel of ``principal``: ``{namespace}:`` and 64 hex digits.

    The digest is over a JSON array ``[tenant_id, user_id]``, an injective
    encoding (``null`` differs from ``"null"``, separators cannot be forged),
    under a fixed label; it uses no key, so rotating keys renames no channel.
    """
    encoded = json.dumps(list(principal), ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(_CHANNEL_LABEL + encoded.encode("utf-8", "surrogatepass"))
    return f"{namespace}:{digest.hexdigest()}"


def _derive(key: bytes) -> bytes:
    return hmac.digest(key, _DERIVE_LABEL + EVENT_PURPOSE.encode("ascii"), "sha256")


def _sign(derived: bytes, body: bytes) -> bytes:
    return base64.urlsafe_b64encode(hmac.digest(derived, _MAGIC + body, "sha256"))[:_SIG_LEN]


class Codec:
    """Encode envelopes for the wire and verify what arrives.

    Args:
        keys: Secrets of 32+ bytes; the first signs, any verifies.
        ttl: Seconds an envelope is valid after it is issued.
        max_bytes: The largest envelope sent or accepted.
    """

    __slots__ = ("_derived", "max_bytes", "ttl")

    def __init__(
        self,
        keys: Sequence[bytes],
        *,
        ttl: float = DEFAULT_EVENT_TTL,
        max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    ) -> None:
        self._derived = tuple(_derive(key) for key in _check_keys(keys))
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
            raise ConfigurationError(f"event_ttl must be finite seconds > 0, got {ttl!r}")
        if type(max_bytes) is not int or max_bytes < 256:
            raise ConfigurationError(f"max_envelope_bytes must be an int >= 256, got {max_bytes!r}")
        self.ttl = float(ttl)
        self.max_bytes = max_bytes

    def encode(self, envelope: Envelope, *, origin: str, now: float) -> bytes:
        """Sign ``envelope`` into wire bytes, valid until ``now + ttl``.

        Raises:
            UsageError: The payload is not JSON-serialisable.
            EventTooLargeError: The envelope would exceed ``max_bytes``.
        """
        fields = {
            "id": envelope.id,
            "t": envelope.tenant_id,
            "u": envelope.recipient,
            "k": envelope.kind,
            "iat": now,
            "exp": now + self.ttl,
            "o": origin,
            "p": envelope.payload,
        }
        try:
            text = _JSON.encode(fields)
        except (TypeError, ValueError, RecursionError) as exc:
            raise UsageError(
                f"the payload is not JSON-serialisable: {exc}",
                hint="Publish dicts, lists, str, int, float, bool and None only",
            ) from None
        body = text.encode("utf-8", "surrogatepass")
        size = _HEADER + len(body)
        if size > self.max_bytes:
            raise EventTooLargeError(
                f"the event is {size} bytes as a signed envelope, more than "
                f"max_envelope_bytes={self.max_bytes}",
                hint="Send a reference to the data instead, or raise max_envelope_bytes",
            )
        return _MAGIC + _sign(self._derived[0], body) + b"." + body

    def decode(
        self, data: bytes, *, principal: Principal, now: float
    ) -> tuple[Envelope, float, str] | Drop:
        """Verify wire bytes that arrived on ``principal``'s channel.

        Returns ``(envelope, expires_at, origin)``, or why the bytes must be
        dropped. Checks, in order:
        size, framing, signature (constant time, every key), JSON, fields,
        recipient, expiry. Replays are the caller's (:class:`ReplayWindow`).
        """
        if len(data) > self.max_bytes:
            return Drop.TOO_LARGE
        if len(data) < _HEADER or data[: len(_MAGIC)] != _MAGIC or data[_HEADER - 1] != 0x2E:
            return Drop.MALFORMED
        signature = data[len(_MAGIC) : _HEADER - 1]
        body = data[_HEADER:]
        matched = False
        for derived in self._derived:
            matched |= hmac.compare_digest(_sign(derived, body), signature)
        if not matched:
            return Drop.SIGNATURE
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return Drop.NOT_JSON
        if not isinstance(fields, dict):
            return Drop.NOT_JSON
        event_id, tenant, user = fields.get("id"), fields.get("t"), fields.get("u")
        kind = fields.get("k")
        issued, expires, origin = fields.get("iat"), fields.get("exp"), fields.get("o")
        if (
            type(event_id) is not str
            or not 0 < len(event_id) <= _MAX_ID
            or type(user) is not str
            or not user
            or (tenant is not None and type(tenant) is not str)
            or type(kind) is not str
            or not kind
            or kind == GAP
            or not _is_time(issued)
            or not _is_time(expires)
            or type(origin) is not str
            or "p" not in fields
        ):
            return Drop.INVALID
        assert isinstance(issued, int | float)
        assert isinstance(expires, int | float)
        if (tenant, user) != principal:
            return Drop.WRONG_RECIPIENT
        if now > expires + LEEWAY or issued > now + LEEWAY:
            return Drop.EXPIRED
        envelope = Envelope(
            id=event_id,
            recipient=user,
            tenant_id=tenant,
            kind=kind,
            created_at=float(issued),
            payload=fields["p"],
        )
        return envelope, float(expires), origin


def _is_time(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class ReplayWindow:
    """Event ids seen recently, each kept until its envelope's expiry plus the leeway.

    Memory is bounded by the events received within one ``ttl``: an older
    envelope is refused as expired before it reaches the window.
    """

    __slots__ = ("_expiries", "_seen")

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, event_id: str, *, expires_at: float, now: float) -> bool:
        """Record ``event_id``; ``False`` if it was already seen within the window."""
        expiries = self._expiries
        while expiries and expiries[0][0] + LEEWAY < now:
            _, old = heapq.heappop(expiries)
            if self._seen.get(old, math.inf) + LEEWAY < now:
                del self._seen[old]
        if event_id in self._seen:
            return False
        self._seen[event_id] = expires_at
        heapq.heappush(expiries, (expires_at, event_id))
        return True
