"""Signed tokens: round trip, every refusal with its own error, rotation, re-validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import isolation
from isolation import UserContext, tokens
from isolation.testing import FakeClock

KEY = b"k" * 32
OTHER = b"o" * 32


def _ctx(**kwargs: object) -> UserContext:
    return UserContext.new(
        "alice", tenant_id="acme", roles=["admin"], attributes={"plan": "pro"}, **kwargs
    )  # type: ignore[arg-type]


def _forge(payload: dict[str, object], *, key: bytes = KEY, purpose: str = "job") -> str:
    """Sign an arbitrary payload the way the library does (a valid key, bad content)."""
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    head = f"iso1.{enc(purpose.encode())}.{enc(json.dumps(payload).encode())}"
    derived = hmac.new(key, b"isolation.tokens/iso1/" + purpose.encode(), hashlib.sha256).digest()
    return f"{head}.{enc(hmac.new(derived, head.encode(), hashlib.sha256).digest())}"


class TestRoundTrip:
    def test_round_trip(self) -> None:
        """loads(dumps(ctx)) gives the same principal, roles, attributes and deadline."""
        ctx = _ctx(ttl=60)
        loaded = tokens.loads(tokens.dumps(ctx, key=KEY, purpose="job"), keys=[KEY], purpose="job")
        assert loaded.principal == ctx.principal
        assert loaded.roles == ctx.roles
        assert loaded.expires_at == ctx.expires_at
        assert loaded.attributes["plan"] == "pro"

    def test_new_request_id_and_parent(self) -> None:
        """The loaded context has a new request id; the original is parent_request_id."""
        ctx = _ctx()
        loaded = tokens.loads(tokens.dumps(ctx, key=KEY, purpose="job"), keys=[KEY], purpose="job")
        assert loaded.request_id != ctx.request_id
        assert loaded.attributes["parent_request_id"] == ctx.request_id

    def test_bytes_token_accepted(self) -> None:
        """A token given as ASCII bytes loads like the str."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job").encode()
        assert tokens.loads(token, keys=[KEY], purpose="job").user_id == "alice"

    def test_scope_from_token(self) -> None:
        """Scope.from_token (also isolation.scope.from_token) binds the token's context."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        with isolation.scope.from_token(token, keys=[KEY], purpose="job"):
            assert isolation.current_context().principal == ("acme", "alice")

    @given(st.text(min_size=1, max_size=20).filter(lambda s: s == s.strip()))
    def test_round_trip_any_valid_id(self, user_id: str) -> None:
        """Every id the constructor accepts survives the round trip unchanged."""
        try:
            ctx = UserContext.new(user_id)
        except isolation.InvalidContextError:
            return
        loaded = tokens.loads(tokens.dumps(ctx, key=KEY, purpose="job"), keys=[KEY], purpose="job")
        assert loaded.user_id == ctx.user_id


class TestRefusals:
    def test_tampering_anywhere_refused(self) -> None:
        """Changing any single character of the token is refused with a TokenError."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        for i in range(len(token)):
            for replacement in ("A", "_"):
                if token[i] == replacement:
                    continue
                tampered = token[:i] + replacement + token[i + 1 :]
                with pytest.raises(isolation.TokenError):
                    tokens.loads(tampered, keys=[KEY], purpose="job")

    def test_tampered_payload_is_a_signature_error(self) -> None:
        """A changed payload (still base64url) fails the signature check."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        version, purpose, payload, sig = token.split(".")
        middle = len(payload) // 2
        flipped = "B" if payload[middle] != "B" else "C"
        tampered = ".".join(
            [version, purpose, payload[:middle] + flipped + payload[middle + 1 :], sig]
        )
        with pytest.raises(isolation.TokenSignatureError):
            tokens.loads(tampered, keys=[KEY], purpose="job")

    def test_wrong_key(self) -> None:
        """A token signed with a key not in keys is a TokenSignatureError."""
        token = tokens.dumps(_ctx(), key=OTHER, purpose="job")
        with pytest.raises(isolation.TokenSignatureError):
            tokens.loads(token, keys=[KEY], purpose="job")

    def test_wrong_purpose(self) -> None:
        """A ticket for a WebSocket connect is never a job token, and the reverse."""
        ticket = tokens.dumps(_ctx(), key=KEY, purpose="ws-connect")
        job = tokens.dumps(_ctx(), key=KEY, purpose="job")
        with pytest.raises(isolation.TokenPurposeError):
            tokens.loads(ticket, keys=[KEY], purpose="job")
        with pytest.raises(isolation.TokenPurposeError):
            tokens.loads(job, keys=[KEY], purpose="ws-connect")

    def test_purpose_swapped_in_clear_fails_signature(self) -> None:
        """Rewriting the clear purpose to the expected one breaks the signature."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="ws-connect")
        enc = base64.urlsafe_b64encode(b"job").rstrip(b"=").decode()
        version, _, payload, sig = token.split(".")
        with pytest.raises(isolation.TokenSignatureError):
            tokens.loads(".".join([version, enc, payload, sig]), keys=[KEY], purpose="job")

    def test_expired(self, fake_clock: FakeClock) -> None:
        """A token past its expiry (plus the leeway) is a TokenExpiredError."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=10)
        fake_clock.advance(10 + tokens.LEEWAY / 2)
        assert tokens.loads(token, keys=[KEY], purpose="job")
        fake_clock.advance(tokens.LEEWAY)
        with pytest.raises(isolation.TokenExpiredError):
            tokens.loads(token, keys=[KEY], purpose="job")

    def test_default_ttl(self, fake_clock: FakeClock) -> None:
        """Without ttl or a context deadline, a token lives DEFAULT_TTL seconds."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        fake_clock.advance(tokens.DEFAULT_TTL - 1)
        tokens.loads(token, keys=[KEY], purpose="job")
        fake_clock.advance(2 + tokens.LEEWAY)
        with pytest.raises(isolation.TokenExpiredError):
            tokens.loads(token, keys=[KEY], purpose="job")

    def test_expiry_is_the_earlier_of_context_and_ttl(self, fake_clock: FakeClock) -> None:
        """A context expiring in 5 s makes a 60 s token expire in 5 s."""
        token = tokens.dumps(_ctx(ttl=5), key=KEY, purpose="job", ttl=60)
        fake_clock.advance(5)
        with pytest.raises(isolation.TokenExpiredError):
            tokens.loads(token, keys=[KEY], purpose="job")

    def test_dumps_refuses_expired_context(self, fake_clock: FakeClock) -> None:
        """An expired context cannot be put in a token."""
        ctx = _ctx(ttl=1)
        fake_clock.advance(2)
        with pytest.raises(isolation.ContextExpiredError):
            tokens.dumps(ctx, key=KEY, purpose="job")

    def test_oversized(self) -> None:
        """A token over MAX_TOKEN_BYTES is refused before any parsing."""
        with pytest.raises(isolation.MalformedTokenError, match="larger"):
            tokens.loads("iso1." + "a" * tokens.MAX_TOKEN_BYTES, keys=[KEY], purpose="job")
        with pytest.raises(isolation.MalformedTokenError, match="larger"):
            tokens.loads(b"a" * (tokens.MAX_TOKEN_BYTES + 1), keys=[KEY], purpose="job")

    @pytest.mark.parametrize(
        "garbage",
        [
            "",
            "iso1",
            "iso1.a.b",
            "iso2.a.b.c",
            "iso1.!!.b.c",
            "iso1.a.b.c.d",
            "x" * 100,
            "iso1.a.b.c",
        ],
    )
    def test_garbage(self, garbage: str) -> None:
        """Strings that are not tokens are MalformedTokenError (or a purpose mismatch)."""
        with pytest.raises((isolation.MalformedTokenError, isolation.TokenPurposeError)):
            tokens.loads(garbage, keys=[KEY], purpose="job")

    def test_non_utf8_and_non_str(self) -> None:
        """Non-ASCII bytes and non-str input are MalformedTokenError."""
        with pytest.raises(isolation.MalformedTokenError):
            tokens.loads(b"\xff\xfe\x00", keys=[KEY], purpose="job")
        with pytest.raises(isolation.MalformedTokenError):
            tokens.loads(12345, keys=[KEY], purpose="job")  # type: ignore[arg-type]

    def test_signed_payload_with_invalid_id_is_revalidated(self) -> None:
        """A payload signed with a valid key but holding an invalid id is refused."""
        payload = {
            "u": "evil\u202e",
            "t": None,
            "r": [],
            "a": {},
            "ce": None,
            "exp": 4e9,
            "iat": 0,
            "rid": "0" * 32,
        }
        with pytest.raises(isolation.MalformedTokenError, match="user_id") as info:
            tokens.loads(_forge(payload), keys=[KEY], purpose="job")
        assert isinstance(info.value.__cause__, isolation.InvalidContextError)

    @pytest.mark.parametrize(
        "payload",
        [
            [],
            {"exp": "soon"},
            {"exp": 4e9, "a": []},
            {"exp": 4e9, "a": {}, "rid": None},
            {"exp": 4e9, "a": {}, "rid": "r", "u": "a", "r": "admin"},
        ],
    )
    def test_signed_payload_of_wrong_shape(self, payload: object) -> None:
        """Signed but malformed payloads are MalformedTokenError."""
        with pytest.raises(isolation.MalformedTokenError):
            tokens.loads(_forge(payload), keys=[KEY], purpose="job")  # type: ignore[arg-type]

    def test_signed_payload_not_json(self) -> None:
        """A signed payload that is not JSON is MalformedTokenError."""
        enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
        head = f"iso1.{enc(b'job')}.{enc(b'not json')}"
        derived = hmac.new(KEY, b"isolation.tokens/iso1/job", hashlib.sha256).digest()
        token = f"{head}.{enc(hmac.new(derived, head.encode(), hashlib.sha256).digest())}"
        with pytest.raises(isolation.MalformedTokenError, match="JSON"):
            tokens.loads(token, keys=[KEY], purpose="job")

    def test_context_expired_inside_leeway(self, fake_clock: FakeClock) -> None:
        """A token still inside its leeway whose context has expired is TokenExpiredError."""
        token = tokens.dumps(_ctx(ttl=5), key=KEY, purpose="job")
        fake_clock.advance(5 + tokens.LEEWAY / 2)
        with pytest.raises(isolation.TokenExpiredError):
            tokens.loads(token, keys=[KEY], purpose="job")


class TestKeys:
    def test_rotation(self) -> None:
        """A token signed by the old key verifies while the old key is still listed."""
        old, new = b"1" * 32, b"2" * 32
        token = tokens.dumps(_ctx(), key=old, purpose="job")
        assert tokens.loads(token, keys=[new, old], purpose="job")
        with pytest.raises(isolation.TokenSignatureError):
            tokens.loads(token, keys=[new], purpose="job")

    def test_short_key_refused(self) -> None:
        """Keys shorter than 32 bytes are refused on both sides."""
        with pytest.raises(isolation.ConfigurationError, match="32"):
            tokens.dumps(_ctx(), key=b"short", purpose="job")
        with pytest.raises(isolation.ConfigurationError, match="32"):
            tokens.loads("x", keys=[b"short"], purpose="job")

    @pytest.mark.parametrize("keys", [KEY, bytearray(KEY), "k" * 32, [], None, ["k" * 32]])
    def test_bad_keys_argument(self, keys: object) -> None:
        """A bare bytes, an empty list or non-bytes keys are ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError):
            tokens.loads("x", keys=keys, purpose="job")  # type: ignore[arg-type]

    @pytest.mark.parametrize("purpose", ["", "has space", "é", "x" * 65, None])
    def test_bad_purpose(self, purpose: object) -> None:
        """Purposes are 1 to 64 characters of a small ASCII alphabet."""
        with pytest.raises(isolation.ConfigurationError):
            tokens.dumps(_ctx(), key=KEY, purpose=purpose)  # type: ignore[arg-type]

    def test_dumps_type_and_ttl_checked(self) -> None:
        """dumps takes a UserContext and a positive finite ttl."""
        with pytest.raises(isolation.UsageError):
            tokens.dumps("alice", key=KEY, purpose="job")  # type: ignore[arg-type]
        with pytest.raises(isolation.InvalidContextError):
            tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=float("nan"))

    def test_generate_key(self) -> None:
        """generate_key returns 32 fresh random bytes."""
        assert len(tokens.generate_key()) == 32
        assert tokens.generate_key() != tokens.generate_key()

    def test_messages_hold_no_token_material(self) -> None:
        """Refusals never quote the token or the signature."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        signature = token.rsplit(".", 1)[1]
        with pytest.raises(isolation.TokenSignatureError) as info:
            tokens.loads(token, keys=[OTHER], purpose="job")
        assert signature not in str(info.value)
        assert token not in str(info.value)

    def test_oversized_dumps_refused(self) -> None:
        """A context too big for a token is refused at dumps."""
        ctx = UserContext.new("alice", attributes={f"k{i}": "v" * 4000 for i in range(5)})
        with pytest.raises(isolation.ConfigurationError, match="bytes"):
            tokens.dumps(ctx, key=KEY, purpose="job")
