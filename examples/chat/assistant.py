"""The assistant: a request-scoped product of the registry, checked for shared state.

Each request gets its own ``Assistant`` (``Lifetime.REQUEST``, the default),
built for the request's user. Its ``notes`` list is mutable per-user state:
the registry's shared-state walk (``check="full"``) refuses to hand out an
assistant whose mutable state another user's live assistant can also reach,
so a class-level ``notes = []`` or a module-level cache would be refused with
``SharedStateError`` naming the attribute path, not served to two users.
``Persona`` is an ``APP`` product: shared by every user, by declaration, and
immutable.
"""

from __future__ import annotations

from typing import Final

import attrs

from isolation import Lifetime, Registry, UserContext

__all__ = ["TRIGGER", "Assistant", "Persona", "make_registry"]

TRIGGER: Final = "@assistant"
"""A message starting with this gets a reply."""


@attrs.frozen
class Persona:
    """How the assistant answers: settings every user shares (immutable)."""

    name: str = "assistant"
    prefix: str = "You said"


class Assistant:
    """Replies to the messages addressed to it, for one user, in one request."""

    def __init__(self, ctx: UserContext, persona: Persona) -> None:
        self.user_id = ctx.user_id
        self.persona = persona
        self.notes: list[str] = []

    def reply_to(self, text: str) -> str | None:
        """The reply to ``text``, or ``None`` when it is not addressed to the assistant."""
        if not text.startswith(TRIGGER):
            return None
        question = text.removeprefix(TRIGGER).strip()
        self.notes.append(question)
        return f"{self.persona.prefix}: {question}" if question else "How can I help?"


def make_registry() -> Registry:
    """The registry of one app: the persona (``APP``) and the assistant (``REQUEST``)."""
    registry = Registry(check="full")
    registry.provide(Persona, lifetime=Lifetime.APP)
    registry.provide(Assistant)
    return registry
