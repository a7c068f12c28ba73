"""The failure-mode registry: sixteen modes, their checks, and each check's mutant.

A :class:`Check` is a scenario plus a property: ``run(subject, settings)`` drives
``subject`` (an implementation of some interface of the library) and returns
the violations it found, as short lines. Each check names two ways to build its
subject: ``library`` (the real code path) and ``mutant`` (a separate,
deliberately broken re-implementation of the same interface, never wired into
the library). The check must find no violation in the first and at least one
in the second, every run: that is what proves it can fail.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Literal, final

import attrs

from isolation._errors import ConfigurationError

__all__ = [
    "CATALOG",
    "Backend",
    "Check",
    "CheckFn",
    "FailureMode",
    "ModeRegistry",
    "Settings",
    "register_on_databases",
]


class Backend(enum.StrEnum):
    """Where a check runs its scenario."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    POSTGRES = "postgres"
    REDIS = "redis"


@attrs.frozen(kw_only=True)
class Settings:
    """What a run of the checks may use.

    Attributes:
        quick: Fewer Hypothesis examples (never below the seed's scenario sizes).
        postgres_url: A PostgreSQL URL whose role can create roles, or ``None``.
        redis_url: A Redis URL, or ``None``.
    """

    quick: bool = False
    postgres_url: str | None = None
    redis_url: str | None = None

    @property
    def examples(self) -> int:
        """Hypothesis examples per property."""
        return 10 if self.quick else 50


CheckFn = Callable[[Any, Settings], Sequence[str] | Awaitable[Sequence[str]]]


def lazy_check(make: Callable[[], CheckFn]) -> CheckFn:
    """A check built when it first runs: registering it must not import an extra (the
    report lists every check, and marks those whose extra is missing as not run)."""

    async def check(subject: Any, settings: Settings) -> Sequence[str]:
        result = make()(subject, settings)
        if isinstance(result, Awaitable):
            return await result
        return result

    return check


@final
@attrs.frozen(kw_only=True)
class Check:
    """One named check of a failure mode.

    Attributes:
        name: Short and unique within its mode, for example ``"weakrefs-dead"``.
        backend: Where the scenario runs.
        run: ``run(subject, settings)`` returns the violations found (sync or async).
        library: Builds the subject from the library's real code path.
        mutant: Builds the deliberately broken subject the check must catch.
            Either factory may take one argument: it is then given the run's
            :class:`Settings` (a mutant that needs the Redis URL, say).
        requires: Modules the check imports (an extra); missing ones mean "not run".
        description: One line: the scenario and the property.
    """

    name: str
    backend: Backend
    run: CheckFn
    library: Callable[[], Any] | Callable[[Settings], Any]
    mutant: Callable[[], Any] | Callable[[Settings], Any]
    requires: tuple[str, ...] = ()
    description: str = ""

    def subject(self, target: Literal["library", "mutant"], settings: Settings) -> Any:
        """Build the library's subject or the mutant, passing ``settings`` to a factory
        that takes an argument."""
        factory = self.library if target == "library" else self.mutant
        if _takes_argument(factory):
            return factory(settings)  # type: ignore[call-arg]
        return factory()  # type: ignore[call-arg]


def _takes_argument(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` has a positional parameter without a default."""
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in inspect.signature(factory).parameters.values()
    )


@final
@attrs.frozen(kw_only=True)
class FailureMode:
    """A failure mode of ``FAILURE_MODES.md`` with its registered checks."""

    id: int
    name: str
    scenario: str
    checks: tuple[Check, ...] = ()


CATALOG: Final[tuple[tuple[int, str, str], ...]] = (
    (1, "DB sessions not isolated between users", "interleaved requests of several principals"),
    (2, "connection pool exhaustion under concurrent load", "20 users x 5 sessions"),
    (3, "sessions leak when user contexts expire", "10 sessions"),
    (4, "transactions not rolled back on user-context errors", "failures at random points"),
    (5, "factory instances share internal state", "random object graphs, one shared object"),
    (6, "user contexts not garbage collected", "100 contexts (here 10,000 scopes)"),
    (7, "races in concurrent factory use, duplicate context ids", "10 workers x 20 requests"),
    (8, "validation skipped under load (empty user_id accepted)", "50 batches"),
    (9, "agent execution state bleeds between users", "5 users"),
    (10, "WebSocket events delivered to the wrong user under load", "8 users"),
    (11, "one execution engine serves several users", "6 users, 3 engines"),
    (12, "memory corruption in multi-threaded processing", "8 threads x 50 ops"),
    (13, "connection pooling mixes events between connections", "8 users x 3 connections"),
    (14, "corrupted session/routing state misroutes messages", "6 sessions"),
    (15, "queue overflow drops or misroutes messages", "capacity 10, burst 50"),
    (16, "auth tokens reused across users in WebSocket delivery", "6 users"),
)


class ModeRegistry:
    """The sixteen failure modes and the checks registered for each.

    Args:
        catalog: ``(id, name, scenario)`` rows; the library's sixteen by default.
    """

    def __init__(self, catalog: Iterable[tuple[int, str, str]] = CATALOG) -> None:
        self._modes: dict[int, tuple[str, str]] = {}
        self._checks: dict[int, list[Check]] = {}
        for mode_id, name, scenario in catalog:
            self._modes[mode_id] = (name, scenario)
            self._checks[mode_id] = []

    def register(self, mode_id: int, check: Check) -> Check:
        """Add ``check`` to mode ``mode_id``; names are unique within a mode."""
        if mode_id not in self._modes:
            raise ConfigurationError(f"no failure mode {mode_id!r} in this registry")
        if any(existing.name == check.name for existing in self._checks[mode_id]):
            raise ConfigurationError(f"mode {mode_id} already has a check named {check.name!r}")
        self._checks[mode_id].append(check)
        return check

    def modes(self) -> list[FailureMode]:
        """Every mode, in order, with its checks."""
        return [
            FailureMode(
                id=mode_id, name=name, scenario=scenario, checks=tuple(self._checks[mode_id])
            )
            for mode_id, (name, scenario) in sorted(self._modes.items())
        ]

    def mode(self, mode_id: int) -> FailureMode:
        """The mode ``mode_id`` with its checks."""
        for mode in self.modes():
            if mode.id == mode_id:
                return mode
        raise ConfigurationError(f"no failure mode {mode_id!r} in this registry")


for _cls in (Backend, Check, FailureMode, ModeRegistry, Settings):
    _cls.__module__ = "isolation.report"
del _cls


def register_on_databases(
    registry: ModeRegistry,
    mode_id: int,
    name: str,
    *,
    run_for: Callable[[str], CheckFn],
    library: Callable[[], Any] | Callable[[Settings], Any],
    mutant: Callable[[], Any] | Callable[[Settings], Any],
    requires: tuple[str, ...],
    description: str,
    postgres_requires: tuple[str, ...] = ("asyncpg",),
) -> None:
    """Register a database check twice: on SQLite (embedded) and on PostgreSQL (``-postgres``).

    ``run_for(backend)`` returns the check's ``run`` for ``"sqlite"`` or
    ``"postgres"``; the PostgreSQL variant also requires ``postgres_requires``
    (the drivers: asyncpg, and psycopg for a sync face's check), and runs only
    when the report is given a PostgreSQL URL.
    """
    for backend, suffix, extra in (
        (Backend.SQLITE, "", ()),
        (Backend.POSTGRES, "-postgres", postgres_requires),
    ):
        registry.register(
            mode_id,
            Check(
                name=f"{name}{suffix}",
                backend=backend,
                run=run_for(str(backend)),
                library=library,
                mutant=mutant,
                requires=(*requires, *extra),
                description=description,
            ),
        )
