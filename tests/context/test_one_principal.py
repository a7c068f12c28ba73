"""One id, one principal (issue 16, finding 4): no layer folds two spellings into one.

``"\\u00c5lice"`` and ``"\\u212blice"`` are two accounts in an application. An id
that is not already NFC is refused with ``InvalidContextError`` everywhere a
principal is built, and an NFC id is kept exactly, so no layer (contexts,
tokens, tickets, the router, the ORM on SQLite) may treat two ids as one.
"""

from __future__ import annotations

import base64
import json
import tempfile
import unicodedata
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings

import isolation
from isolation import InvalidContextError, MalformedTokenError, Principal, UserContext, tokens
from isolation.events import EventRouter
from isolation.testing.strategies import confusable_pairs

KEY = b"k" * 16 + bytes(range(16))
TENANT = "acme"


def _accepted(ids: tuple[str, ...], *, as_tenant: bool) -> dict[str, UserContext]:
    """The contexts of the ids the validation accepts; each is kept exactly as given."""
    made: dict[str, UserContext] = {}
    for spelling in ids:
        try:
            ctx = (
                UserContext.new("user", tenant_id=spelling)
                if as_tenant
                else UserContext.new(spelling, tenant_id=TENANT)
            )
        except InvalidContextError as exc:
            refused = exc
        else:
            assert (ctx.tenant_id if as_tenant else ctx.user_id) == spelling, "rewritten"
            made[spelling] = ctx
            continue
        assert not unicodedata.is_normalized("NFC", spelling)
        assert "NFC" in refused.rule
        assert str(refused).isascii()
    return made


async def _router_layer(
    ids: tuple[str, ...], made: dict[str, UserContext], as_tenant: bool
) -> None:
    """Tickets, connect, Principal, publish, connections and principal_stats keep ids apart.

    A spelling the rules refuse is refused by ``Principal`` and by the deprecated
    ``(user_id, tenant_id=)`` form of the router's methods alike.
    """

    def where(spelling: str) -> tuple[str, str]:
        return (spelling, "user") if as_tenant else (TENANT, spelling)

    async with EventRouter(keys=[KEY]) as router:
        conns = {}
        for spelling, ctx in made.items():
            conns[spelling] = await router.connect(token=router.issue_ticket(ctx))
            assert conns[spelling].principal == ctx.principal
        for spelling in ids:
            tenant, user = where(spelling)
            if spelling in made:
                to = Principal(tenant, user)
                assert to == made[spelling].principal
                result = await router.publish(to, spelling)
                assert result.delivered == 1
                assert router.connections(to) == (conns[spelling],)
                stats = router.principal_stats(to)
                assert stats is not None
                assert stats.connections == 1
            else:
                with pytest.raises(InvalidContextError):
                    Principal(tenant, user)
                with (
                    pytest.warns(DeprecationWarning, match="is deprecated"),
                    pytest.raises(InvalidContextError),
                ):
                    await router.publish(user, spelling, tenant_id=tenant)
                with (
                    pytest.warns(DeprecationWarning, match="is deprecated"),
                    pytest.raises(InvalidContextError),
                ):
                    router.connections(user, tenant_id=tenant)
                with (
                    pytest.warns(DeprecationWarning, match="is deprecated"),
                    pytest.raises(InvalidContextError),
                ):
                    router.principal_stats(user, tenant_id=tenant)
        for spelling, conn in conns.items():
            with anyio.fail_after(5):
                event = await conn.receive()
            assert event.payload == spelling
            assert conn.stats().delivered == 1


async def _orm_layer(made: dict[str, UserContext]) -> None:
    """protect() stamps and filters by the exact ids on SQLite: each reads only its own."""
    pytest.importorskip("aiosqlite")
    from sqlalchemy import select

    from _support.databases import Note, create_tables, sqlite_engine
    from isolation.sessions import SessionManager

    with tempfile.TemporaryDirectory() as directory:
        engine = sqlite_engine(str(Path(directory) / "db.sqlite"))
        try:
            await create_tables(engine)
            manager = SessionManager(engine)
            manager.protect(Note, user_column="owner", tenant_column="tenant")
            for spelling, ctx in made.items():
                async with isolation.scope(ctx), manager.session() as s:
                    s.add(Note(body=spelling))
            for spelling, ctx in made.items():
                async with isolation.scope(ctx), manager.session() as s:
                    rows = (await s.scalars(select(Note))).all()
                    assert [(r.body, r.owner, r.tenant) for r in rows] == [
                        (spelling, ctx.user_id, ctx.tenant_id)
                    ]
        finally:
            await engine.dispose()


class TestConfusableIds:
    @settings(max_examples=25)
    @given(confusable_pairs())
    def test_no_two_accepted_ids_are_one_principal(self, pair: tuple[str, str]) -> None:
        """Over confusable pairs (NFC/NFD, U+212B-like signs, case, fullwidth), as user
        and as tenant ids: a spelling that is not NFC is refused; accepted ones are kept
        exactly and stay two principals in contexts, tokens, tickets, the router and the
        ORM."""
        for as_tenant in (False, True):
            made = _accepted(pair, as_tenant=as_tenant)
            principals = {ctx.principal for ctx in made.values()}
            assert len(principals) == len(made)
            for ctx in made.values():
                token = tokens.dumps(ctx, key=KEY, purpose="job")
                loaded = tokens.loads(token, keys=[KEY], purpose="job")
                assert loaded.principal == ctx.principal
            anyio.run(_router_layer, pair, made, as_tenant)
            anyio.run(_orm_layer, made)

    @pytest.mark.anyio
    async def test_attack_shape_two_accounts(self) -> None:
        """The attack: the attacker's account "\\u212blice" cannot become the victim
        "\\u00c5lice": no context, no publish to the folded id, no look-up."""
        victim = UserContext.new("\u00c5lice")
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("\u212blice")
        assert info.value.field == "user_id"
        assert "\u212b" not in str(info.value)
        for spelling in ("\u212blice", "A\u030alice"):
            with pytest.raises(InvalidContextError):
                Principal(None, spelling)
        async with EventRouter() as router:
            conn = await router.connect(ctx=victim)
            with (
                pytest.warns(DeprecationWarning, match="is deprecated"),
                pytest.raises(InvalidContextError),
            ):
                await router.publish("\u212blice", {"x": 1}, tenant_id=None)
            with (
                pytest.warns(DeprecationWarning, match="is deprecated"),
                pytest.raises(InvalidContextError),
            ):
                router.connections("A\u030alice", tenant_id=None)
            assert router.connections(Principal(None, "\u00c5lice")) == (conn,)
            assert router.connections(victim) == (conn,)


class TestTokens:
    def test_signed_token_with_a_non_nfc_id_refused(self) -> None:
        """A correctly signed token whose id is not NFC (from another signer) is refused,
        never normalised into another user's context."""
        payload = {
            "u": "\u212blice",
            "t": None,
            "r": [],
            "a": {},
            "ce": None,
            "exp": 4e9,
            "iat": 0,
            "rid": "0" * 32,
        }
        body = json.dumps(payload, ensure_ascii=True).encode("ascii")

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

        head = f"iso1.{b64(b'job')}.{b64(body)}"
        token = f"{head}.{tokens._signature(KEY, 'job', head.encode('ascii'))}"
        with pytest.raises(MalformedTokenError) as info:
            tokens.loads(token, keys=[KEY], purpose="job")
        assert isinstance(info.value.__cause__, InvalidContextError)
        assert "NFC" in str(info.value)


class TestTypedOwnerColumns:
    """protect() with an integer or UUID owner column: the database converts the id,
    so "123", "0123" and "+123" (or a UUID's upper and lower case) would be one owner;
    only the column type's canonical text is accepted."""

    @staticmethod
    async def _rows_seen(ids: list[str], typed: str) -> dict[str, object]:
        pytest.importorskip("aiosqlite")
        import uuid

        from sqlalchemy import Integer, String, Uuid, select
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.orm import DeclarativeBase, mapped_column

        from isolation.sessions import SessionManager

        class Base(DeclarativeBase):
            pass

        class Owned(Base):
            __tablename__ = "typed_owned"
            # Not annotated: the annotations of a class made in a function would not
            # resolve under `from __future__ import annotations`.
            id = mapped_column(Integer, primary_key=True)
            owner = mapped_column(Integer if typed == "int" else Uuid)
            body = mapped_column(String(80))

        seen: dict[str, object] = {}
        with tempfile.TemporaryDirectory() as directory:
            engine = create_async_engine(f"sqlite+aiosqlite:///{directory}/typed.sqlite")
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                manager = SessionManager(engine)
                manager.protect(Owned, user_column="owner")
                for who in ids:
                    try:
                        async with isolation.scope(UserContext.new(who)), manager.session() as s:
                            s.add(Owned(body=who))
                    except InvalidContextError:
                        seen[who] = "refused"
                for who in ids:
                    if seen.get(who) == "refused":
                        continue
                    async with isolation.scope(UserContext.new(who)), manager.session() as s:
                        rows = (await s.scalars(select(Owned))).all()
                        seen[who] = sorted(r.body for r in rows)
                        expected = int(who) if typed == "int" else uuid.UUID(who)
                        assert all(r.owner == expected for r in rows)
            finally:
                await engine.dispose()
        return seen

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_integer_owner_ids_are_canonical(self, anyio_backend: str) -> None:
        """ "0123", "+123" and fullwidth digits are refused (InvalidContextError), not
        folded into user 123's rows."""
        seen = await self._rows_seen(["123", "0123", "+123", "\uff11\uff12\uff13", "-7"], "int")
        assert seen == {
            "123": ["123"],
            "0123": "refused",
            "+123": "refused",
            "\uff11\uff12\uff13": "refused",
            "-7": ["-7"],
        }

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_uuid_owner_ids_are_canonical(self, anyio_backend: str) -> None:
        """A UUID owner column takes the canonical lowercase form; other spellings of the
        same UUID are refused, not one owner."""
        import uuid

        canonical = str(uuid.uuid4())
        upper, bare = canonical.upper(), canonical.replace("-", "")
        seen = await self._rows_seen([canonical, upper, bare], "uuid")
        assert seen == {canonical: [canonical], upper: "refused", bare: "refused"}
