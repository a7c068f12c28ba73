"""Issue 16, finding 8: payloads are snapshotted at publish, one copy per recipient.

The attack: a publisher reuses one dict for every user
(``payload["text"] = f"private digest of {u}"; await router.publish(u, payload)``)
and, before the fix, every recipient read the last user's text. Now each
recipient gets its own copy of the payload as it was at its publish, in the
JSON form the Redis backend delivers; what JSON cannot carry is refused at
publish with ``UsageError``, as on Redis.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isolation import Principal, UsageError, UserContext
from isolation.events import EventRouter, Overflow
from isolation.events._model import Envelope
from isolation.events._snapshot import freeze, thaw
from isolation.events.backends._envelope import Codec

pytestmark = pytest.mark.anyio

USERS = [f"user-{i}" for i in range(5)]
KEY = b"snapshot-test-key-0123456789abcdef"


async def test_reused_payload_dict_reaches_each_user_with_their_own_text() -> None:
    """The issue's exact shape: one dict mutated between publishes, one text per user."""
    async with EventRouter() as router:
        conns = {u: await router.connect(UserContext.new(u)) for u in USERS}
        payload: dict[str, Any] = {"type": "digest"}
        for u in USERS:
            payload["text"] = f"private digest of {u}"
            await router.publish(Principal(None, u), payload)
        for u, conn in conns.items():
            event = await conn.receive()
            assert event.payload == {"type": "digest", "text": f"private digest of {u}"}


@pytest.mark.parametrize(
    "make",
    [
        lambda u: {"text": f"private digest of {u}"},  # flat
        lambda u: {"text": {"body": f"private digest of {u}"}, "tags": [u]},  # nested
        lambda u: [f"private digest of {u}"],  # flat list
        lambda u: [[f"private digest of {u}"]],  # nested list
    ],
    ids=["flat-dict", "nested-dict", "flat-list", "nested-list"],
)
async def test_mutating_a_queued_payload_changes_nothing_delivered(make: Any) -> None:
    """Mutated after publish, while queued: the recipient gets the publish-time value."""
    async with EventRouter() as router:
        conn = await router.connect(UserContext.new("alice"))
        payload = make("alice")
        await router.publish(Principal(None, "alice"), payload)
        expected = make("alice")
        _scribble(payload)
        assert (await conn.receive()).payload == expected


async def test_recipients_of_one_publish_cannot_change_each_others_copy() -> None:
    """Two connections of one user: what one consumer does to its copy, the other never sees."""
    async with EventRouter() as router:
        ctx = UserContext.new("alice")
        first, second = await router.connect(ctx), await router.connect(ctx)
        for payload in ({"n": 1}, {"n": {"deep": [1]}}, [1, 2], [[1], 2]):
            await router.publish(Principal(None, "alice"), payload)
            mine = (await first.receive()).payload
            _scribble(mine)
            assert (await second.receive()).payload == payload
            # The consumer's own copy is not the published object either.
            assert mine is not payload


async def test_blocked_publish_is_snapshotted_before_it_waits() -> None:
    """A BLOCK publish waiting for room already holds its snapshot."""
    import anyio

    async with EventRouter(queue_size=1, overflow=Overflow.BLOCK) as router:
        conn = await router.connect(UserContext.new("alice"))
        await router.publish(Principal(None, "alice"), {"n": 0})
        payload = {"text": "first"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.publish, Principal(None, "alice"), payload)
            await anyio.wait_all_tasks_blocked()
            payload["text"] = "changed while waiting"
            assert (await conn.receive()).payload == {"n": 0}
        assert (await conn.receive()).payload == {"text": "first"}


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


REFUSED = [
    pytest.param(object(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(math.nan, id="nan"),
    pytest.param({"x": math.inf}, id="inf-in-dict"),
    pytest.param([-math.inf], id="inf-in-list"),
    pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
    pytest.param(Colour.RED, id="plain-enum"),
    pytest.param({"a": {"b": object()}}, id="nested-object"),
    pytest.param(_circular(), id="circular"),
    pytest.param(_deep(), id="too-deep"),
    pytest.param(10**5000, id="int-too-long"),
]


@pytest.mark.parametrize("payload", REFUSED)
async def test_payloads_json_cannot_carry_are_refused_at_publish(payload: Any) -> None:
    """Refused with UsageError, before anything is queued; the Redis codec refuses it too."""
    async with EventRouter() as router:
        conn = await router.connect(UserContext.new("alice"))
        with pytest.raises(UsageError, match="JSON cannot carry"):
            await router.publish(Principal(None, "alice"), payload)
        assert conn.stats().seq == 0
        with pytest.raises(UsageError):
            Codec(keys=[KEY]).encode(_envelope(payload), origin="o", now=1.0)


async def test_the_payload_arrives_in_its_json_form_as_on_redis() -> None:
    """Tuples arrive as lists, keys as strings, enum members as their values."""
    async with EventRouter() as router:
        conn = await router.connect(UserContext.new("alice"))
        sent: Any = {"pair": (1, 2), 3: "int key", "level": Level.HIGH, "s": "x"}
        await router.publish(Principal(None, "alice"), sent)
        got = (await conn.receive()).payload
        assert got == {"pair": [1, 2], "3": "int key", "level": 3, "s": "x"}
        assert type(got["level"]) is int


def _envelope(payload: Any) -> Envelope:
    return Envelope(
        id="e-1", recipient="alice", tenant_id=None, kind="message", created_at=1.0, payload=payload
    )


def _redis_form(payload: Any) -> Any:
    """What a recipient gets through the Redis backend: the codec's round trip."""
    data = Codec(keys=[KEY]).encode(_envelope(payload), origin="o", now=1.0)
    decoded = Codec(keys=[KEY]).decode(data, principal=(None, "alice"), now=1.0)
    assert not isinstance(decoded, str), decoded
    return decoded[0].payload


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from([Level.HIGH, Colour.RED])
)
payloads = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5) | st.none(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(payloads)
def test_memory_accepts_and_delivers_exactly_what_redis_does(payload: Any) -> None:
    """For any payload: refused by both, or delivered by both as the same value (JSON equal)."""
    try:
        snapshot = freeze(payload)
    except UsageError:
        with pytest.raises(UsageError):
            _redis_form(payload)
        return
    expected = _redis_form(payload)
    first, second = thaw(snapshot), thaw(snapshot)
    assert json.dumps(first, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert first == expected
    # Each thaw is a copy of its own: changing one changes no other.
    _scribble(first)
    assert second == expected


def _scribble(value: Any) -> None:
    """Mutate every container reachable from ``value``."""
    if type(value) is dict:
        for item in list(value.values()):
            _scribble(item)
        value["scribbled"] = True
    elif type(value) is list:
        for item in value:
            _scribble(item)
        value.append("scribbled")


def test_publish_inlines_the_snapshot_bounds() -> None:
    """publish() inlines freeze()'s integer bounds as literals: they must agree."""
    from isolation.events import _snapshot

    assert _snapshot.INT_MIN == -0x8000000000000000
    assert _snapshot.INT_MAX == 0x8000000000000000
