"""FM8 and FM16, one id is one principal: confusable ids are refused, never folded.

Subject: a constructor ``make(user_id, tenant_id=None)`` with the signature of
:meth:`isolation.UserContext.new`. Hypothesis draws pairs of spellings of one
id (NFC and NFD, compatibility signs such as U+212B ANGSTROM SIGN, case,
fullwidth forms; :func:`isolation.testing.strategies.confusable_pairs`), as
user ids and as tenant ids. The property: an accepted id is kept exactly as
given, two distinct accepted ids are two principals, and so they stay through a
token round trip and through the router (a ticket each, then a publish to each
id reaches exactly its own connection). The mutant normalises ids to NFC
instead of refusing them, the behaviour before issue 16: ``"\\u212blice"``
becomes ``"\\u00c5lice"`` and receives her events.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any, Final

from isolation import tokens
from isolation._errors import InvalidContextError
from isolation.context._model import Principal, UserContext
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

Maker = Callable[..., Any]

KEY = bytes(range(32))
TENANT = "fm8-acme"


def generate_pairs(count: int) -> list[tuple[str, str]]:
    """Draw ``count`` confusable pairs with Hypothesis, deterministically."""
    from hypothesis import HealthCheck, Phase, given, settings

    from isolation.testing.strategies import confusable_pairs

    pairs: list[tuple[str, str]] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(confusable_pairs())
    def collect(pair: tuple[str, str]) -> None:
        pairs.append(pair)

    collect()
    # The two spellings that make the attack, always.
    return [("\u00c5lice", "\u212blice"), *pairs]


def _made(make: Maker, pair: tuple[str, str], as_tenant: bool, found: list[str]) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for spelling in pair:
        try:
            ctx = (
                make("user", tenant_id=spelling) if as_tenant else make(spelling, tenant_id=TENANT)
            )
        except InvalidContextError:
            continue
        kept = ctx.tenant_id if as_tenant else ctx.user_id
        if kept != spelling:
            found.append(f"the id {spelling!a} was accepted and rewritten to {kept!a}")
        made[spelling] = ctx
    return made


async def check_confusable_ids_refused(make: Maker, settings: Settings) -> list[str]:
    """No two distinct accepted ids are one principal in contexts, tokens or the router."""
    from isolation.events import EventRouter

    found: list[str] = []
    for pair in generate_pairs(max(settings.examples, 20)):
        for as_tenant in (False, True):
            made = _made(make, pair, as_tenant, found)
            if len({ctx.principal for ctx in made.values()}) != len(made):
                found.append(f"{pair[0]!a} and {pair[1]!a} were made one principal")
            for ctx in made.values():
                loaded = tokens.loads(
                    tokens.dumps(ctx, key=KEY, purpose="fm8"), keys=[KEY], purpose="fm8"
                )
                if loaded.principal != ctx.principal:
                    found.append(f"a token round trip changed {ctx.principal!a}")
            async with EventRouter(keys=[KEY]) as router:
                conns = [
                    (ctx, await router.connect(token=router.issue_ticket(ctx)))
                    for ctx in made.values()
                ]
                for ctx, _ in conns:
                    # The ids through the public constructor: the same checks again.
                    to = Principal(ctx.tenant_id, ctx.user_id)
                    result = await router.publish(to, ctx.principal)
                    if result.delivered != 1:
                        found.append(
                            f"a publish to {ctx.principal!a} reached {result.delivered} "
                            f"connections of {len(conns)} principals"
                        )
    return found


# -- the mutant: ids normalised, not refused -------------------------------------------


def _normalising_new(user_id: str, *, tenant_id: str | None = None) -> UserContext:
    """Mutant: rewrites ids to NFC, so two accounts' spellings become one principal."""
    return UserContext.new(
        unicodedata.normalize("NFC", user_id),
        tenant_id=None if tenant_id is None else unicodedata.normalize("NFC", tenant_id),
    )


def _library() -> Maker:
    return UserContext.new


def _mutant() -> Maker:
    return _normalising_new


_NAMES: Final = {8: "confusable-ids-refused", 16: "confusable-ids-tokens"}


def register(registry: ModeRegistry, mode: int = 8) -> None:
    """Register the confusable-ids check under FM8 (validation), or FM16 (tokens).

    One property, two modes: an id refused at validation (8) is what keeps a
    token or ticket of one spelling from opening the other's connection (16); the
    package of mode 16 registers it there too.
    """
    for name in (_NAMES[mode],):
        add_check(
            registry,
            mode,
            name,
            check_confusable_ids_refused,
            library=_library,
            mutant=_mutant,
            requires=("hypothesis",),
            description=(
                "NFC/NFD, compatibility-sign, case and fullwidth pairs: ids not NFC are "
                "refused, the rest stay two principals through tokens and the router"
            ),
        )
