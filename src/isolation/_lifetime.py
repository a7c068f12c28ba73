"""``Lifetime``: how long a product lives, ordered ``APP > CONNECTION > REQUEST``.

A WebSocket connection is a long scope and each message a short one, as
dishka orders them. Scopes are ``CONNECTION`` or ``REQUEST``; ``APP`` products
live in a :class:`~isolation.Registry` and are shared by declaration.
"""

from __future__ import annotations

import enum

__all__ = ["Lifetime"]


class Lifetime(enum.IntEnum):
    """How long a product lives; a longer lifetime compares greater."""

    REQUEST = 1
    """One request, or one message of a connection: the default."""
    CONNECTION = 2
    """One WebSocket connection, holding many requests of its user."""
    APP = 3
    """The whole application: shared by every user, by declaration."""


Lifetime.__module__ = "isolation"
