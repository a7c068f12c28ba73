"""Assertions for users' own factories: exactly-once creation per scope."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from isolation.context._model import Principal, UserContext
from isolation.context._propagation import ContextThreadPoolExecutor
from isolation.context._scope import Scope

__all__ = ["assert_exactly_once", "assert_no_shared_state"]


def assert_exactly_once(
    factory: Callable[[], Any],
    *,
    scopes: int = 20,
    threads: int = 10,
    count_calls: Callable[[], int],
) -> None:
    """Assert that ``factory()`` called from ``threads`` threads at once yields one instance per scope.

    In each of ``scopes`` scopes, ``threads`` threads call ``factory()`` at the
    same moment (a barrier releases them together, through an executor that
    carries the scope); every call in a scope must return the same object, and
    ``count_calls()`` — your count of how often the underlying factory really
    ran — must have grown by exactly ``scopes``.

    Raises:
        AssertionError: Naming the scope and what was seen.
    """
    before = count_calls()
    with ContextThreadPoolExecutor(threads) as pool:
        for i in range(scopes):
            barrier = threading.Barrier(threads, timeout=60)

            def call(start: threading.Barrier = barrier) -> Any:
                start.wait()
                return factory()

            with Scope(UserContext.new(f"exactly-once-{i}")):
                results = [
                    f.result(timeout=60) for f in [pool.submit(call) for _ in range(threads)]
                ]
            distinct = {id(r) for r in results}
            if len(distinct) != 1:
                raise AssertionError(
                    f"scope {i}: {threads} concurrent calls returned {len(distinct)} different instances"
                )
    ran = count_calls() - before
    if ran != scopes:
        raise AssertionError(f"the factory ran {ran} times for {scopes} scopes (expected {scopes})")


def assert_no_shared_state(
    factory: Any,
    *,
    users: int = 20,
    threads: int = 4,
    principals: Callable[[int], UserContext | Principal | tuple[str | None, str] | str]
    | None = None,
) -> None:
    """Assert that ``factory`` gives each user instances that share no mutable state.

    Runs ``isolation audit`` on ``factory`` (a ``@request_scoped`` factory, a
    plain function or class, or a :class:`~isolation.Registry`): ``users``
    synthetic users with overlapping scopes, ``threads`` concurrent callers
    each, the full shared-state walk, exactly-once and ownership checks.

    Args:
        factory: What to audit.
        users: Synthetic users, all with live scopes at once (at least 2).
        threads: Concurrent callers in each scope.
        principals: Makes synthetic user ``i`` (called with 0, 1, ...): a
            ``UserContext``, an :class:`~isolation.Principal`, a
            ``(tenant_id or None, user_id)`` pair or a user id. By default, UUID strings in two tenants; pass one for a
            factory that parses ids another way (``lambda i: str(i + 1)``).

    Raises:
        AssertionError: Listing every violation, with the attribute paths.
        ConfigurationError: ``principals`` raised, returned something else,
            an invalid id, or one principal for two users.
    """
    from isolation.factories._audit import audit, default_principal

    report = audit(
        factory,
        users=users,
        threads=threads,
        principals=default_principal if principals is None else principals,
    )
    if report.violations:
        lines = [f"{f.name}: {v.kind}: {v.message}" for f in report.factories for v in f.violations]
        raise AssertionError(
            f"{report.violations} isolation violation(s) in {report.target}:\n" + "\n".join(lines)
        )
