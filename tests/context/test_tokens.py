"""Signed tokens: round trip, every refusal with its own error, rotation, re-validation.

Also: a context from a token expires with the token; every malformed shape is a
typed error that quotes none of the token; placeholder keys and tokens from the
future are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import isolation
from isolation import UserContext, tokens
from isolation.testing import FakeClock

KEY = b"tokens test key 1, never for use"
OTHER = b"tokens test key 2, another one!!"


def _ctx(**kwargs: object) -> UserContext:
    return UserContext.new(
        "alice", tenant_id="acme", roles=["admin"], attributes={"plan": "pro"}, **kwargs
    )  # type: ignore[arg-type]


def _forge(
    payload: object, *, key: bytes = KEY, purpose: str = "job", raw: bytes | None = None
) -> str:
    """Sign an arbitrary payload the way the library does (a valid key, bad content)."""
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    body = json.dumps(payload).encode() if raw is None else raw
    head = f"iso1.{enc(purpose.encode())}.{enc(body)}"
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
        """A token is accepted until its expiry, and refused from that instant on."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=10)
        fake_clock.advance(10 - tokens.LEEWAY / 2)
        assert tokens.loads(token, keys=[KEY], purpose="job")
        fake_clock.advance(tokens.LEEWAY / 2)
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
            tokens.loads("iso1." + "a" * tokens._MAX_TOKEN_BYTES, keys=[KEY], purpose="job")
        with pytest.raises(isolation.MalformedTokenError, match="larger"):
            tokens.loads(b"a" * (tokens._MAX_TOKEN_BYTES + 1), keys=[KEY], purpose="job")

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
        """A token whose context has expired is TokenExpiredError, leeway or not."""
        token = tokens.dumps(_ctx(ttl=5), key=KEY, purpose="job")
        fake_clock.advance(5 + tokens.LEEWAY / 2)
        with pytest.raises(isolation.TokenExpiredError):
            tokens.loads(token, keys=[KEY], purpose="job")


class TestKeys:
    def test_rotation(self) -> None:
        """A token signed by the old key verifies while the old key is still listed."""
        old, new = tokens.generate_key(), tokens.generate_key()
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

    @pytest.mark.parametrize("ttl", [float("nan"), float("inf"), 0, -1, True, "60"])
    def test_dumps_type_and_ttl_checked(self, ttl: object) -> None:
        """dumps takes a UserContext and a positive finite ttl (ConfigurationError, as documented)."""
        with pytest.raises(isolation.UsageError):
            tokens.dumps("alice", key=KEY, purpose="job")  # type: ignore[arg-type]
        with pytest.raises(isolation.ConfigurationError, match="ttl"):
            tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=ttl)  # type: ignore[arg-type]

    @pytest.mark.parametrize("key", [None, "k" * 32, bytearray(KEY), memoryview(KEY)])
    def test_dumps_key_type(self, key: object) -> None:
        """dumps takes its key as bytes: anything else is ConfigurationError naming key."""
        with pytest.raises(isolation.ConfigurationError, match="key"):
            tokens.dumps(_ctx(), key=key, purpose="job")  # type: ignore[arg-type]

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


class TestExpiryCarried:
    """Medium 15/11: the context loaded from a token carries the token's expiry."""

    def test_context_gets_the_token_expiry(self, fake_clock: FakeClock) -> None:
        """A context without a deadline, in a 30 s token, loads with a deadline 30 s away."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=30)
        loaded = tokens.loads(token, keys=[KEY], purpose="job")
        assert loaded.expires_at == fake_clock.time() + 30

    def test_default_ttl_is_a_deadline_too(self, fake_clock: FakeClock) -> None:
        """Without ttl or a context deadline, the loaded context expires after DEFAULT_TTL."""
        loaded = tokens.loads(
            tokens.dumps(_ctx(), key=KEY, purpose="job"), keys=[KEY], purpose="job"
        )
        assert loaded.expires_at == fake_clock.time() + tokens.DEFAULT_TTL

    @pytest.mark.parametrize(("context_ttl", "token_ttl", "expected"), [(5, 60, 5), (60, 5, 5)])
    def test_earlier_of_the_two(
        self, fake_clock: FakeClock, context_ttl: float, token_ttl: float, expected: float
    ) -> None:
        """The deadline is min(token expiry, context expiry)."""
        token = tokens.dumps(_ctx(ttl=context_ttl), key=KEY, purpose="job", ttl=token_ttl)
        loaded = tokens.loads(token, keys=[KEY], purpose="job")
        assert loaded.expires_at == fake_clock.time() + expected

    def test_sync_scope_from_token_expires_with_the_token(self, fake_clock: FakeClock) -> None:
        """A worker's `with scope.from_token(...)` ends in ContextExpiredError at the token's exp."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=30)
        with (
            pytest.raises(isolation.ContextExpiredError),
            isolation.scope.from_token(token, keys=[KEY], purpose="job") as entered,
        ):
            assert entered.deadline == fake_clock.time() + 30
            fake_clock.advance(29.5)
            assert isolation.current_context().user_id == "alice"
            fake_clock.advance(0.5)
            with pytest.raises(isolation.ContextExpiredError):
                isolation.current_context()

    @pytest.mark.anyio
    async def test_async_scope_from_token_is_cancelled_at_the_token_exp(
        self, fake_clock: FakeClock
    ) -> None:
        """`async with scope.from_token(...)`: the body is cancelled when the token expires."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job", ttl=30)
        waiting = anyio.Event()
        resumed: list[bool] = []

        async def advance() -> None:
            await waiting.wait()
            fake_clock.advance(29)
            assert resumed == []
            fake_clock.advance(1)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(advance)
                with pytest.raises(isolation.ContextExpiredError):
                    async with isolation.scope.from_token(token, keys=[KEY], purpose="job"):
                        waiting.set()
                        await anyio.Event().wait()
                        resumed.append(True)
        assert resumed == []


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__]


def _assert_quotes_nothing(exc: BaseException, token: str | bytes) -> None:
    """The refusal is typed, and no error in its chain quotes the token or a long piece of it."""
    assert isinstance(exc, isolation.TokenError), repr(exc)
    text = token.decode("latin-1") if isinstance(token, bytes) else token
    # The token itself, and each of its fields long enough not to occur by chance.
    pieces = [text, *(part for part in text.split(".") if len(part) >= 12)]
    pieces = [piece for piece in pieces if len(piece) >= 12]
    for item in _chain(exc):
        assert isinstance(item, isolation.IsolationError), repr(item)
        shown = [str(item), repr(item), *map(repr, item.args)]
        for piece in pieces:
            assert not any(piece in part for part in shown), (piece, shown)


class TestMalformedShapes:
    """Medium 15: every malformed token is a typed error that quotes no token material."""

    def _bad(self, token: object) -> isolation.TokenError:
        with pytest.raises(isolation.TokenError) as info:
            tokens.loads(token, keys=[KEY], purpose="job")  # type: ignore[arg-type]
        return info.value

    @pytest.mark.parametrize("where", ["version", "purpose", "payload", "signature", "end"])
    def test_non_ascii_str_anywhere(self, where: str) -> None:
        """A str token with a non-ASCII character is MalformedTokenError, chained to nothing."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job")
        fields = token.split(".")
        index = {"version": 0, "purpose": 1, "payload": 2, "signature": 3}.get(where)
        if index is None:
            bad = token + "\u00e9"
        else:
            fields[index] = fields[index][:2] + "\u00e9" + fields[index][3:]
            bad = ".".join(fields)
        exc = self._bad(bad)
        assert isinstance(exc, isolation.MalformedTokenError)
        assert exc.__cause__ is None
        assert exc.__context__ is None
        _assert_quotes_nothing(exc, bad)

    def test_non_ascii_through_scope_from_token(self) -> None:
        """isolation.scope.from_token refuses it with the same typed error."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job") + "\u00e9"
        with pytest.raises(isolation.MalformedTokenError) as info:
            isolation.scope.from_token(token, keys=[KEY], purpose="job")
        _assert_quotes_nothing(info.value, token)

    @pytest.mark.anyio
    async def test_non_ascii_through_router_connect(self) -> None:
        """EventRouter.connect(token=) refuses a non-ASCII ticket with a TokenError."""
        from isolation.events import EventRouter

        async with EventRouter(keys=[KEY]) as router:
            ticket = router.issue_ticket(_ctx())
            bad = ticket[:-5] + "\u00e9" + ticket[-4:]  # in the signature
            with pytest.raises(isolation.MalformedTokenError) as info:
                await router.connect(token=bad)
        _assert_quotes_nothing(info.value, bad)

    def test_non_ascii_bytes_not_chained(self) -> None:
        """Non-ASCII bytes: no UnicodeDecodeError (which quotes the bytes) in the chain."""
        token = tokens.dumps(_ctx(), key=KEY, purpose="job").encode() + b"\xff"
        exc = self._bad(token)
        assert exc.__cause__ is None
        assert exc.__context__ is None

    @pytest.mark.parametrize(
        "token",
        [
            None,
            3.5,
            bytearray(b"iso1.a.b.c"),
            ["iso1", "a", "b", "c"],
            "iso1." + "A" * tokens._MAX_TOKEN_BYTES,
            "\u00e9" * (tokens._MAX_TOKEN_BYTES + 1),
        ],
    )
    def test_wrong_types_and_huge(self, token: object) -> None:
        """Wrong types and huge tokens are MalformedTokenError, before any parsing."""
        assert isinstance(self._bad(token), isolation.MalformedTokenError)

    def test_purpose_field_not_a_purpose(self) -> None:
        """A purpose field that dumps() could not have written is malformed, never quoted."""
        enc = base64.urlsafe_b64encode("sp ace\u00e9\n".encode()).rstrip(b"=").decode()
        exc = self._bad(f"iso1.{enc}.e30.sig")
        assert isinstance(exc, isolation.MalformedTokenError)
        assert "ace" not in str(exc)

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"exp": NaN}',
            b'{"exp": Infinity}',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"exp": ' + b"9" * 5000 + b"}",
            '{"u": "\u00e9"}'.encode(),
            b"\xff\xfe{}",
            b"\x00",
        ],
    )
    def test_signed_payload_not_json(self, raw: bytes) -> None:
        """A signed payload that is not strict ASCII JSON is malformed, with nothing chained."""
        token = _forge(None, raw=raw)
        exc = self._bad(token)
        assert isinstance(exc, isolation.MalformedTokenError)
        assert exc.__cause__ is None
        assert exc.__context__ is None
        _assert_quotes_nothing(exc, token)

    @pytest.mark.parametrize(
        "changes",
        [
            {"exp": float("inf")},
            {"exp": 10**400},
            {"exp": True},
            {"iat": None},
            {"iat": "now"},
            {"ce": "later"},
            {"ce": True},
            {"u": 5},
            {"t": ["acme"]},
            {"r": [1]},
            {"a": {"k": 1}},
        ],
    )
    def test_signed_payload_of_wrong_types(self, changes: dict[str, object]) -> None:
        """Every field of a signed payload is type-checked: MalformedTokenError."""
        payload = {
            "u": "alice",
            "t": None,
            "r": [],
            "a": {},
            "ce": None,
            "exp": 4e9,
            "iat": 1e9,
            "rid": "0" * 32,
        }
        # json.dumps writes inf as Infinity: sign that text as it is.
        raw = json.dumps({**payload, **changes}).encode()
        exc = self._bad(_forge(None, raw=raw))
        assert isinstance(exc, isolation.MalformedTokenError)

    @given(
        st.one_of(
            st.text(max_size=300),
            st.binary(max_size=300),
            st.builds(
                lambda parts, sep: sep.join(parts),
                st.lists(st.text(max_size=60), min_size=1, max_size=6),
                st.sampled_from([".", "%2E", ".."]),
            ),
            st.builds(
                lambda i, text, token: token[:i] + text + token[i:],
                st.integers(0, 400),
                st.text(min_size=1, max_size=5),
                st.just(tokens.dumps(UserContext.new("alice", ttl=1e6), key=KEY, purpose="job")),
            ),
        )
    )
    def test_any_input_is_a_context_or_a_typed_refusal(self, token: str | bytes) -> None:
        """loads() either returns a valid context or raises a TokenError quoting nothing."""
        try:
            ctx = tokens.loads(token, keys=[KEY], purpose="job")
        except isolation.TokenError as exc:
            _assert_quotes_nothing(exc, token)
        else:
            assert type(ctx) is UserContext
            assert ctx.user_id == "alice"


class TestKeyAndClockRules:
    """Low: placeholder keys refused at construction; tokens from the future refused."""

    @pytest.mark.parametrize(
        "key",
        [bytes(32), b"k" * 32, b"\xff" * 64, b"ab" * 16, b"0123456" * 5],
        ids=["all-zero", "one-byte", "one-byte-long", "two-values", "seven-values"],
    )
    def test_placeholder_keys_refused(self, key: bytes) -> None:
        """A key of one byte repeated, or of fewer than 8 distinct values, is ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError, match="placeholder") as info:
            tokens.dumps(_ctx(), key=key, purpose="job")
        assert key.decode("latin-1") not in str(info.value)
        with pytest.raises(isolation.ConfigurationError, match=r"keys\[1\]"):
            tokens.loads("x", keys=[KEY, key], purpose="job")

    def test_placeholder_key_refused_by_the_router(self) -> None:
        """EventRouter(keys=[bytes(32)]) is refused when it is made, not at the first ticket."""
        from isolation.events import EventRouter

        with pytest.raises(isolation.ConfigurationError, match="placeholder"):
            EventRouter(keys=[bytes(32)])

    @pytest.mark.parametrize("key", [tokens.generate_key(), b"0123456789abcdef" * 2])
    def test_random_and_hex_keys_accepted(self, key: bytes) -> None:
        """Random keys and hex-encoded ones (16 values) pass."""
        token = tokens.dumps(_ctx(), key=key, purpose="job")
        assert tokens.loads(token, keys=[key], purpose="job").user_id == "alice"

    def test_issued_in_the_future_refused(self, fake_clock: FakeClock) -> None:
        """A token whose iat is beyond LEEWAY in the future is refused; within it, accepted."""
        now = fake_clock.time()
        payload = {"u": "alice", "t": None, "r": [], "a": {}, "ce": None, "rid": "0" * 32}
        ahead = {**payload, "iat": now + tokens.LEEWAY + 1, "exp": now + 60}
        with pytest.raises(isolation.TokenExpiredError, match="future"):
            tokens.loads(_forge(ahead), keys=[KEY], purpose="job")
        skewed = {**payload, "iat": now + tokens.LEEWAY / 2, "exp": now + 60}
        assert tokens.loads(_forge(skewed), keys=[KEY], purpose="job").user_id == "alice"
