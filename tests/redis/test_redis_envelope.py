"""Envelopes and channel names, as pure code: signing, every refusal, the replay window."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import isolation
from isolation.events.backends import Envelope
from isolation.events.backends._envelope import (
    Codec,
    Drop,
    ReplayWindow,
    channel_name,
    check_namespace,
)
from isolation.testing import strategies as iso_st

KEY = b"0123456789abcdef" * 2
NEW_KEY = b"ghijklmnopqrstuv" * 2
NOW = 1_000_000.0


def envelope(user: str = "alice", tenant: str | None = "acme", **changes: object) -> Envelope:
    fields: dict[str, object] = {
        "id": "e1",
        "recipient": user,
        "tenant_id": tenant,
        "kind": "message",
        "created_at": NOW,
        "payload": {"text": "hi"},
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def signed_body(codec: Codec, fields: dict[str, object]) -> bytes:
    """Wire bytes of an arbitrary body, signed with the codec's first key."""
    body = json.dumps(fields).encode()
    from isolation.events.backends._envelope import _MAGIC, _sign

    return _MAGIC + _sign(codec._derived[0], body) + b"." + body


class TestChannelName:
    def test_shape(self) -> None:
        """A channel is the namespace, a colon and 64 hex digits."""
        name = channel_name("chat", ("acme", "alice"))
        prefix, _, digest = name.partition(":")
        assert prefix == "chat"
        assert len(digest) == 64
        assert int(digest, 16) >= 0

    def test_no_key_involved(self) -> None:
        """The name depends on the namespace and the principal only (rotation renames nothing)."""
        assert channel_name("a", ("t", "u")) == channel_name("a", ("t", "u"))
        assert channel_name("a", ("t", "u")) != channel_name("b", ("t", "u"))

    @pytest.mark.parametrize(
        ("one", "two"),
        [
            ((None, "alice"), ("null", "alice")),
            (("a", "b:c"), ("a:b", "c")),
            (("a", 'b","c'), ("a", "b")),
            (("", "x"), (None, "x")),
            (("acme", "alice"), ("acme", "alice ")),
            (("acme", "\uff41lice"), ("acme", "alice")),  # a fullwidth "a"
        ],
    )
    def test_look_alikes_differ(
        self, one: tuple[str | None, str], two: tuple[str | None, str]
    ) -> None:
        """Look-alike principals (separators, null, spaces, confusables) get different channels."""
        assert channel_name("ns", one) != channel_name("ns", two)

    @given(
        iso_st.principals(),
        st.lists(
            st.tuples(
                st.one_of(st.none(), iso_st.hostile_ids().filter(lambda x: isinstance(x, str))),
                iso_st.hostile_ids().filter(lambda x: isinstance(x, str)),
            ),
            max_size=10,
        ),
    )
    def test_injective(
        self, principals: list[tuple[str | None, str]], hostile: list[tuple[str | None, str]]
    ) -> None:
        """Distinct principals, look-alike and hostile ids included, never share a channel."""
        unique = set(principals) | set(hostile)
        names = {channel_name("ns", p) for p in unique}
        assert len(names) == len(unique)

    @pytest.mark.parametrize("bad", ["", "a:b", "a b", "x" * 65, None, "*"])
    def test_namespace_checked(self, bad: object) -> None:
        """A namespace with separators, wildcards or the wrong type is refused."""
        with pytest.raises(isolation.ConfigurationError):
            check_namespace(bad)


class TestCodec:
    def test_round_trip(self) -> None:
        """What is encoded decodes to the same envelope on its recipient's channel."""
        codec = Codec([KEY])
        data = codec.encode(envelope(), origin="o1", now=NOW)
        decoded = codec.decode(data, principal=("acme", "alice"), now=NOW + 1)
        assert not isinstance(decoded, Drop)
        env, expires_at, origin = decoded
        assert env == envelope()
        assert (expires_at, origin) == (NOW + codec.ttl, "o1")

    def test_rotation(self) -> None:
        """Signed with the first key, verified with any: old senders keep working."""
        old = Codec([KEY])
        both = Codec([NEW_KEY, KEY])
        data = old.encode(envelope(), origin="o", now=NOW)
        assert not isinstance(both.decode(data, principal=("acme", "alice"), now=NOW), Drop)
        assert Codec([NEW_KEY]).decode(data, principal=("acme", "alice"), now=NOW) is Drop.SIGNATURE

    def test_not_a_token_signature(self) -> None:
        """The envelope key is derived for its purpose: the same bytes signed as a token differ."""
        from isolation.tokens import _signature

        codec = Codec([KEY])
        data = codec.encode(envelope(), origin="o", now=NOW)
        body = data[49:]
        assert _signature(KEY, "job", b"iev1." + body).encode() != data[5:48]

    @pytest.mark.parametrize(
        ("mutate", "reason"),
        [
            (lambda d: d[:-1] + bytes([d[-1] ^ 1]), Drop.SIGNATURE),
            (lambda d: d[:10] + (b"A" if d[10:11] != b"A" else b"B") + d[11:], Drop.SIGNATURE),
            (lambda d: b'{"id": "e1"}', Drop.MALFORMED),
            (lambda d: b"iev1." + d[49:], Drop.MALFORMED),
            (lambda d: b"", Drop.MALFORMED),
            (lambda d: b"\xff" * 100, Drop.MALFORMED),
        ],
        ids=[
            "tampered-body",
            "tampered-signature",
            "unsigned-json",
            "no-signature",
            "empty",
            "binary",
        ],
    )
    def test_refusals(self, mutate: object, reason: Drop) -> None:
        """Tampered, unsigned and foreign bytes are refused with their reason."""
        codec = Codec([KEY])
        data = codec.encode(envelope(), origin="o", now=NOW)
        assert codec.decode(mutate(data), principal=("acme", "alice"), now=NOW) is reason  # type: ignore[operator]

    def test_wrong_recipient(self) -> None:
        """A valid envelope for bob is refused on alice's channel, even in another tenant."""
        codec = Codec([KEY])
        for user, tenant in (("bob", "acme"), ("alice", "globex"), ("alice", None)):
            data = codec.encode(envelope(user, tenant), origin="o", now=NOW)
            assert codec.decode(data, principal=("acme", "alice"), now=NOW) is Drop.WRONG_RECIPIENT

    def test_expiry(self) -> None:
        """Past its expiry (plus leeway), or issued in the future, an envelope is refused."""
        codec = Codec([KEY], ttl=10)
        data = codec.encode(envelope(), origin="o", now=NOW)
        principal = ("acme", "alice")
        assert not isinstance(codec.decode(data, principal=principal, now=NOW + 10.5), Drop)
        assert codec.decode(data, principal=principal, now=NOW + 11.5) is Drop.EXPIRED
        assert codec.decode(data, principal=principal, now=NOW - 2) is Drop.EXPIRED

    def test_signed_garbage(self) -> None:
        """Signed bytes that are not a JSON object, or lack fields, are refused."""
        codec = Codec([KEY])
        from isolation.events.backends._envelope import _MAGIC, _sign

        raw = b"\x00not json"
        data = _MAGIC + _sign(codec._derived[0], raw) + b"." + raw
        assert codec.decode(data, principal=("acme", "alice"), now=NOW) is Drop.NOT_JSON
        assert (
            codec.decode(signed_body(codec, [1, 2]), principal=("acme", "alice"), now=NOW)
            is Drop.NOT_JSON
        )  # type: ignore[arg-type]
        good = {
            "id": "e",
            "t": "acme",
            "u": "alice",
            "k": "message",
            "iat": NOW,
            "exp": NOW + 5,
            "o": "x",
            "p": 1,
        }
        assert not isinstance(
            codec.decode(signed_body(codec, good), principal=("acme", "alice"), now=NOW), Drop
        )
        for field, value in [
            ("id", ""),
            ("u", 3),
            ("t", 4),
            ("k", "gap"),
            ("iat", True),
            ("exp", "soon"),
            ("o", None),
            ("id", "x" * 200),
        ]:
            bad = {**good, field: value}
            assert (
                codec.decode(signed_body(codec, bad), principal=("acme", "alice"), now=NOW)
                is Drop.INVALID
            ), field
        missing = {k: v for k, v in good.items() if k != "p"}
        assert (
            codec.decode(signed_body(codec, missing), principal=("acme", "alice"), now=NOW)
            is Drop.INVALID
        )

    def test_size_limits(self) -> None:
        """Too large is refused when sent (EventTooLargeError) and when received (counted)."""
        codec = Codec([KEY], max_bytes=300)
        with pytest.raises(isolation.EventTooLargeError):
            codec.encode(envelope(payload="x" * 300), origin="o", now=NOW)
        big = Codec([KEY]).encode(envelope(payload="x" * 300), origin="o", now=NOW)
        assert codec.decode(big, principal=("acme", "alice"), now=NOW) is Drop.TOO_LARGE

    def test_payload_must_be_json(self) -> None:
        """A payload JSON cannot carry is a UsageError at the sender."""
        with pytest.raises(isolation.UsageError):
            Codec([KEY]).encode(envelope(payload={1, 2}), origin="o", now=NOW)

    @pytest.mark.parametrize(
        "options",
        [{"ttl": 0}, {"ttl": float("inf")}, {"ttl": True}, {"max_bytes": 10}, {"max_bytes": 1.5}],
    )
    def test_settings_checked(self, options: dict[str, object]) -> None:
        """Out-of-range settings are refused."""
        with pytest.raises(isolation.ConfigurationError):
            Codec([KEY], **options)  # type: ignore[arg-type]

    def test_keys_checked(self) -> None:
        """Short keys and a bare key instead of a list are refused."""
        with pytest.raises(isolation.ConfigurationError):
            Codec([b"short"])
        with pytest.raises(isolation.ConfigurationError):
            Codec(KEY)  # type: ignore[arg-type]


class TestReplayWindow:
    def test_second_time_refused(self) -> None:
        """An id is accepted once within its window."""
        window = ReplayWindow()
        assert window.first_time("a", expires_at=NOW + 10, now=NOW)
        assert not window.first_time("a", expires_at=NOW + 10, now=NOW + 5)
        assert window.first_time("b", expires_at=NOW + 10, now=NOW + 5)

    def test_bounded_by_expiry(self) -> None:
        """Ids are forgotten once their envelope expired: memory follows the window."""
        window = ReplayWindow()
        for n in range(100):
            window.first_time(str(n), expires_at=NOW + 10, now=NOW)
        assert len(window) == 100
        window.first_time("late", expires_at=NOW + 30, now=NOW + 12)
        assert len(window) == 1
