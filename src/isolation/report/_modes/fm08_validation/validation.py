"""FM8, validation skipped under load: no invalid context is ever accepted.

Subject: a constructor ``make(**kwargs)`` with the signature of
:meth:`isolation.UserContext.new`. Hypothesis generates 50 batches (the seed's
size) of mixed valid and invalid inputs, hostile ones included (lone
surrogates, bidi and zero-width characters, 1 MiB strings); every batch is fed
at once from a worker thread and from an event-loop task. The property: every
invalid input is refused with :class:`~isolation.InvalidContextError`, every
valid one is accepted, and a context cannot be pickled. The mutant validates on
the main thread only, as "fast paths under load" do.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from isolation._errors import IsolationError
from isolation.context._model import UserContext
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

Maker = Callable[..., Any]
Batch = list[tuple[bool, dict[str, Any]]]

BATCHES = 50


def generate_batches(count: int, examples: int) -> list[Batch]:
    """Draw ``count`` batches of ``(valid, kwargs)`` with Hypothesis, deterministically."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from isolation.testing.strategies import _invalid_context_kwargs, _valid_context_kwargs

    item = st.one_of(
        st.tuples(st.just(False), _invalid_context_kwargs()),
        st.tuples(st.just(True), _valid_context_kwargs()),
    )
    batches: list[Batch] = []

    @settings(
        max_examples=max(count, examples),
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(st.lists(item, min_size=4, max_size=12))
    def collect(batch: Batch) -> None:
        batches.append(batch)

    collect()
    # Hypothesis may stop early when it runs out of distinct examples.
    while len(batches) < count:
        batches.extend(batches[: count - len(batches)])
    return batches[: max(count, examples)]


def _judge(make: Maker, batch: Batch, where: str) -> list[str]:
    found = []
    for valid, kwargs in batch:
        try:
            make(**kwargs)
        except IsolationError:
            if valid:
                found.append(f"valid input refused in a {where}: {sorted(kwargs)}")
            continue
        if not valid:
            field = next((k for k in kwargs if k != "user_id"), "user_id")
            shown = repr(kwargs.get(field))[:40]
            found.append(f"invalid {field} accepted in a {where}: {shown}")
    return found


async def check_no_invalid_accepted(make: Maker, settings: Settings) -> list[str]:
    """Feed each batch from a thread and a task at once; nothing invalid gets through."""
    batches = generate_batches(BATCHES, settings.examples)
    violations: list[str] = []
    lock = threading.Lock()

    def in_thread(batch: Batch) -> None:
        found = _judge(make, batch, "thread")
        with lock:
            violations.extend(found)

    async def in_task(batch: Batch) -> None:
        violations.extend(_judge(make, batch, "task"))

    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(anyio.to_thread.run_sync, in_thread, batch)
            tg.start_soon(in_task, batch)
    return violations


def check_pickling_refused(make: Maker, settings: Settings) -> list[str]:
    """A context made on the main thread or a worker cannot be pickled."""
    made: list[Any] = [make(user_id="alice", tenant_id="acme")]
    worker = threading.Thread(target=lambda: made.append(make(user_id="bob", tenant_id="acme")))
    worker.start()
    worker.join()
    violations = []
    for ctx, where in zip(made, ("the main thread", "a worker thread"), strict=True):
        try:
            pickle.dumps(ctx)
        except TypeError:
            continue
        violations.append(
            f"a context made on {where} was pickled: it could be restored unvalidated"
        )
    return violations


# -- the mutant: validation only on the main thread --------------------------------


@attrs.frozen(kw_only=True)
class _UncheckedContext:
    user_id: Any
    tenant_id: Any = None
    ttl: Any = None
    roles: Any = ()
    attributes: Any = None


def _validate_on_main_thread_only(**kwargs: Any) -> Any:
    """Mutant: skips validation off the main thread, where "the load" is."""
    if threading.current_thread() is threading.main_thread():
        return UserContext.new(**kwargs)
    return _UncheckedContext(**kwargs)


def _library() -> Maker:
    return UserContext.new


def _mutant() -> Maker:
    return _validate_on_main_thread_only


def register(registry: ModeRegistry) -> None:
    """Register FM8's checks."""
    add_check(
        registry,
        8,
        "no-invalid-accepted",
        check_no_invalid_accepted,
        library=_library,
        mutant=_mutant,
        requires=("hypothesis",),
        description="50 Hypothesis batches, hostile ids included, from threads and tasks at once",
    )
    add_check(
        registry,
        8,
        "pickling-refused",
        check_pickling_refused,
        library=_library,
        mutant=_mutant,
        description="a context cannot be pickled (use isolation.tokens)",
    )
