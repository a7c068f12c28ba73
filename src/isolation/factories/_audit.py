"""``isolation audit MODULE:ATTR``: build a service's factories for many users at once, and judge.

The walk of ``@request_scoped`` only compares users whose scopes overlap, and a
test suite rarely runs two users at the same moment. The audit makes them
overlap on purpose: it imports the factory, opens the scopes of ``--users``
synthetic users together, calls the factory from ``--threads`` threads (a sync
factory) or as many tasks (an async one) in each scope at once, and then:

* runs the full shared-state walk on every build (whatever ``check=`` the
  factory declares), and once more at the end of the round, while every scope
  is still live, so state attached to an instance after its build is seen;
* checks that each scope's factory ran exactly once and its callers got one
  instance;
* checks that an ``@owned`` instance is owned by the scope that built it;
* opens a second request for each user, and checks that no instance of the
  first outlived its scope (the same object handed out again).

What it accepts: a ``@request_scoped`` wrapper, a plain function or class
(sync or async), or any object with an ``__isolation_factories__()`` method
returning ``(name, factory)`` pairs (how a registry plugs in; a factory that
resolves a provider names it in ``__isolation_provider__``, so that a class
provider is reported as a class).

The synthetic users' ids are UUID strings in two tenants by default, valid for
a factory that parses them as UUIDs as well as for one that takes any string;
``--principals MODULE:CALLABLE`` (``principals=``) makes them instead, for
factories that parse ids another way (integers).

Exit codes: 0 clean, 1 a violation, 2 a usage error. The report goes to
stdout, progress to stderr.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import anyio.to_thread
import attrs

from isolation._errors import (
    ConfigurationError,
    InvalidContextError,
    IsolationError,
    SharedStateError,
    UsageError,
)
from isolation._lifetime import Lifetime
from isolation._redact import redact_principal
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.factories._graph import render_path, walk
from isolation.factories._index import SharedStateIndex
from isolation.factories._owned import _MARK, owner_of
from isolation.factories._request_scoped import (
    ScopedFactory,
    scoped_factory_of,
    shared_state_error,
)

__all__ = [
    "AuditReport",
    "AuditUsageError",
    "FactoryAudit",
    "PrincipalMaker",
    "Violation",
    "audit",
    "audit_contexts",
    "default_principal",
    "load_target",
]

DEFAULT_USERS: Final = 20
DEFAULT_THREADS: Final = 4
ROUNDS: Final = 2

EXIT_CLEAN: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_USAGE: Final = 2


PrincipalMaker = Callable[[int], "UserContext | Principal | tuple[str | None, str] | str"]
"""Makes the synthetic user of each index (0, 1, ...): a ``UserContext``, a
``Principal``, a ``(tenant_id or None, user_id)`` pair, or a user id alone (no tenant)."""


class AuditUsageError(ConfigurationError):
    """The audit was asked for something it cannot do (exit code 2)."""


@attrs.frozen(kw_only=True)
class Violation:
    """One thing the audit refuses.

    Attributes:
        kind: ``"shared-state"``, ``"exactly-once"``, ``"ownership"``,
            ``"outlived-scope"`` or ``"error"``.
        message: What happened, naming the users and the paths.
        principals: The principals involved.
        paths: The attribute path on each side (shared state only).
    """

    kind: str
    message: str
    principals: tuple[tuple[str | None, str], ...] = ()
    paths: tuple[tuple[str, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The violation as a JSON object."""
        return {
            "kind": self.kind,
            "message": self.message,
            "principals": [list(p) for p in self.principals],
            "paths": [render_path(p) for p in self.paths],
        }


@attrs.frozen(kw_only=True)
class FactoryAudit:
    """What the audit found for one factory."""

    name: str
    kind: str
    declared_check: str | None
    scopes: int
    built: int
    instance_types: tuple[str, ...]
    owned: bool
    walked_objects_max: int
    walked_mutable_max: int
    depth_max: int
    truncated: tuple[str, ...]
    violations: tuple[Violation, ...]

    def to_json(self) -> dict[str, Any]:
        """The factory's audit as a JSON object."""
        return {
            "name": self.name,
            "kind": self.kind,
            "declared_check": self.declared_check,
            "scopes": self.scopes,
            "built": self.built,
            "instance_types": list(self.instance_types),
            "owned": self.owned,
            "walked": {
                "objects_max": self.walked_objects_max,
                "mutable_max": self.walked_mutable_max,
                "depth_max": self.depth_max,
                "truncated": list(self.truncated),
            },
            "violations": [v.to_json() for v in self.violations],
        }


@attrs.frozen(kw_only=True)
class AuditReport:
    """The result of ``isolation audit``."""

    target: str
    users: int
    threads: int
    factories: tuple[FactoryAudit, ...]

    @property
    def violations(self) -> int:
        """The number of violations over every factory."""
        return sum(len(f.violations) for f in self.factories)

    @property
    def exit_code(self) -> int:
        """0 clean, 1 a violation."""
        return EXIT_VIOLATION if self.violations else EXIT_CLEAN

    def to_json(self) -> dict[str, Any]:
        """The report as the ``--json`` object."""
        return {
            "target": self.target,
            "users": self.users,
            "threads": self.threads,
            "rounds": ROUNDS,
            "factories": [f.to_json() for f in self.factories],
            "violations": self.violations,
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        """The report as text."""
        lines = [
            f"isolation audit {self.target}: {self.users} users over {self.threads} threads, "
            f"{ROUNDS} requests each, overlapping scopes",
        ]
        for f in self.factories:
            declared = (
                f" (declared check={f.declared_check!r}; audited in full)"
                if (f.declared_check not in (None, "full"))
                else ""
            )
            lines.append("")
            lines.append(f"factory {f.name} ({f.kind}){declared}")
            types = ", ".join(f.instance_types) or "nothing"
            lines.append(f"  built:   {f.built} instances of {types} in {f.scopes} scopes")
            lines.append(
                f"  walked:  up to {f.walked_objects_max} objects per instance "
                f"({f.walked_mutable_max} mutable), depth up to {f.depth_max}"
            )
            for line in f.truncated:
                lines.append(f"  truncated: {line}")
            lines.append(f"  owned:   {'yes' if f.owned else 'no (not @owned)'}")
            if not f.violations:
                lines.append("  clean")
            for v in f.violations:
                lines.append(f"  VIOLATION [{v.kind}] {v.message}")
        lines.append("")
        count = self.violations
        lines.append(
            "result: clean" if not count else f"result: {count} violation{'s' * (count != 1)}"
        )
        return "\n".join(lines)


# -- the synthetic users ---------------------------------------------------------


def default_principal(index: int) -> Principal:
    """The principal of synthetic user ``index``: UUID strings, in two tenants.

    Deterministic, in the version 4 layout (``00000000-0000-4000-8000-000000000001``
    for user 0; tenants start ``00000001-``), so that a factory parsing ids with
    ``uuid.UUID`` (or a ``UUID4`` field) accepts them, as one taking any string does.
    """
    user = uuid.UUID(int=index + 1, version=4)
    tenant = uuid.UUID(int=(1 << 96) | (index % 2 + 1), version=4)
    return Principal(str(tenant), str(user))


def _made_context(made: object) -> UserContext | None:
    """The context a principals function's result stands for; None for another shape."""
    if isinstance(made, UserContext):
        return made
    if type(made) is str:
        return UserContext.new(made)
    if type(made) is Principal:
        return UserContext.new(made.user_id, tenant_id=made.tenant_id)
    if (
        type(made) is tuple
        and len(made) == 2
        and (made[0] is None or type(made[0]) is str)
        and type(made[1]) is str
    ):
        return UserContext.new(made[1], tenant_id=made[0])
    return None


def _shape(made: object) -> str:
    if type(made) is tuple:
        return f"tuple of ({', '.join(type(item).__name__ for item in made)})"
    return type(made).__name__


def audit_contexts(
    users: int, principals: PrincipalMaker = default_principal, *, label: str | None = None
) -> list[UserContext]:
    """The contexts of the ``users`` synthetic users: ``principals(0)``, ``principals(1)``, ...

    Raises:
        AuditUsageError: ``principals`` is not callable, raised, returned
            something else than a context, a ``Principal``, a ``(tenant_id or
            None, user_id)`` pair of strings or a user id, an invalid id, or the same principal
            for two users (they would never be compared with each other).
    """
    name = label or getattr(principals, "__qualname__", None) or repr(principals)
    if not callable(principals):
        raise AuditUsageError(
            f"principals must be a function of the user's index, got {type(principals).__name__}"
        )
    contexts: list[UserContext] = []
    first: dict[Principal, int] = {}
    for index in range(users):
        try:
            made = principals(index)
        except Exception as exc:
            raise AuditUsageError(
                f"the principals function {name} raised for user {index}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            ctx = _made_context(made)
        except InvalidContextError as exc:
            raise AuditUsageError(
                f"the principals function {name} returned an invalid {exc.field} for user "
                f"{index}: it {exc.rule}"
            ) from None
        if ctx is None:
            raise AuditUsageError(
                f"the principals function {name} returned a {_shape(made)} for user {index}: "
                "expected a UserContext, a (tenant_id or None, user_id) pair of str, or a "
                "user id str"
            )
        other = first.setdefault(ctx.principal, index)
        if other != index:
            raise AuditUsageError(
                f"the principals function {name} returned the same principal, "
                f"{redact_principal(ctx.principal)}, for users {other} and {index}: "
                "each synthetic user needs its own, or they are never compared"
            )
        contexts.append(ctx)
    return contexts


# -- finding the factories ------------------------------------------------------


def load_target(spec: str) -> object:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted) and return the object.

    Raises:
        AuditUsageError: a malformed spec, an unknown module or attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AuditUsageError(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AuditUsageError(f"no module named {module_name!r}") from None
        raise AuditUsageError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise AuditUsageError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AuditUsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _factories(obj: object, label: str) -> list[tuple[str, Callable[..., Any], str | None]]:
    """``(name, raw factory, declared check mode)`` for each factory ``obj`` stands for."""
    hook = getattr(obj, "__isolation_factories__", None)
    if hook is not None and callable(hook) and not isinstance(obj, type):
        found: list[tuple[str, Callable[..., Any], str | None]] = []
        for name, fn in hook():
            wrapped = scoped_factory_of(fn)
            if wrapped is not None:
                found.append((name, wrapped.fn, wrapped.check))
            else:
                found.append((name, fn, None))
        if not found:
            raise AuditUsageError(f"{label} declares no factories")
        return found
    wrapped = scoped_factory_of(obj)
    if wrapped is not None:
        return [(wrapped.name, wrapped.fn, wrapped.check)]
    if callable(obj) and not inspect.ismodule(obj):
        name = getattr(obj, "__qualname__", None) or label
        return [(name, obj, None)]
    raise AuditUsageError(
        f"{label} is not a factory: expected a @request_scoped factory, a function or a class, "
        f"got {type(obj).__name__}"
    )


def _kind(fn: Callable[..., Any], factory: ScopedFactory[Any]) -> str:
    # A registry's factory resolves a provider, and names it (see __isolation_factories__).
    provider = getattr(fn, "__isolation_provider__", None)
    if isinstance(fn, type) or isinstance(provider, type):
        return "class"
    if inspect.isasyncgenfunction(provider):
        return "async generator function"
    if inspect.isgeneratorfunction(provider):
        return "generator function"
    return "async function" if factory.is_async else "sync function"


def _what(instance: object) -> str:
    """The name of what a factory built: ``Engine``, or ``class Engine`` for a class itself."""
    if isinstance(instance, type):
        return f"class {instance.__qualname__}"
    return type(instance).__qualname__


# -- one factory --------------------------------------------------------------------


@attrs.define
class _Outcome:
    principal: Principal
    scope: Scope
    instances: list[object]
    errors: list[BaseException]
    runs: int = 0


class _FactoryRun:
    """The audit of one factory: its rounds, and what they found."""

    def __init__(
        self,
        name: str,
        raw: Callable[..., Any],
        contexts: Sequence[UserContext],
        threads: int,
        progress: Callable[[str], None],
        lifetime: Lifetime = Lifetime.REQUEST,
    ) -> None:
        self.name = name
        self.lifetime = lifetime
        self.contexts = contexts
        self.threads = threads
        self.progress = progress
        self.index = SharedStateIndex()
        try:
            self.factory: ScopedFactory[Any] = ScopedFactory(
                raw, check="full", index=self.index, warn_truncated=False
            )
        except UsageError as exc:
            raise AuditUsageError(str(exc)) from None
        self.kind = _kind(raw, self.factory)
        self.runs: dict[Scope, int] = {}
        self._runs_lock = threading.Lock()
        self.factory.fn = self._counting(raw)
        self.violations: list[Violation] = []
        self._seen: set[object] = set()
        self.truncated: list[str] = []
        self.types: set[str] = set()
        self.owned = False
        self.built = 0
        self.scopes = 0
        self.objects_max = 0
        self.mutable_max = 0
        self.depth_max = 0

    def _count(self) -> None:
        from isolation.context._scope import current_scope

        scope = current_scope()
        with self._runs_lock:
            self.runs[scope] = self.runs.get(scope, 0) + 1

    def _counting(self, raw: Callable[..., Any]) -> Callable[..., Any]:
        if self.factory.is_async:

            async def counting_async(*args: Any, **kwargs: Any) -> Any:
                self._count()
                return await raw(*args, **kwargs)

            return counting_async

        def counting(*args: Any, **kwargs: Any) -> Any:
            self._count()
            return raw(*args, **kwargs)

        return counting

    def _violation(self, violation: Violation) -> None:
        # One line per shared path (whichever users met it), else per message.
        key: object = (violation.kind, violation.message)
        if violation.kind == "shared-state":
            key = (violation.kind, violation.paths)
        if key not in self._seen:
            self._seen.add(key)
            self.violations.append(violation)

    def _shared(self, err: SharedStateError) -> None:
        self._violation(
            Violation(
                kind="shared-state",
                message=err.message,
                principals=err.principals,
                paths=err.paths,
            )
        )

    async def run(self) -> FactoryAudit:
        previous: list[_Outcome] | None = None
        for round_number in range(1, ROUNDS + 1):
            self.progress(f"  {self.name}: request {round_number} of {ROUNDS} for each user")
            outcomes = await self._round(self.contexts)
            if previous is not None:
                self._outlived(previous, outcomes)
            previous = outcomes
        return FactoryAudit(
            name=self.name,
            kind=self.kind,
            declared_check=None,
            scopes=self.scopes,
            built=self.built,
            instance_types=tuple(sorted(self.types)),
            owned=self.owned,
            walked_objects_max=self.objects_max,
            walked_mutable_max=self.mutable_max,
            depth_max=self.depth_max,
            truncated=tuple(self.truncated),
            violations=tuple(self.violations),
        )

    async def _round(self, contexts: Sequence[UserContext]) -> list[_Outcome]:
        n = len(contexts)
        outcomes: list[_Outcome | None] = [None] * n
        counters = {"entered": 0, "built": 0}
        all_entered = anyio.Event()
        all_built = anyio.Event()
        judged = anyio.Event()
        limiter = anyio.CapacityLimiter(self.threads)
        factory = self.factory

        async def call(outcome: _Outcome) -> None:
            try:
                if factory.is_async:
                    outcome.instances.append(await factory.aget())
                else:
                    outcome.instances.append(
                        await anyio.to_thread.run_sync(factory.get, limiter=limiter)
                    )
            except Exception as exc:
                outcome.errors.append(exc)

        async def user(i: int) -> None:
            async with Scope(contexts[i], lifetime=self.lifetime) as scope:
                outcome = _Outcome(contexts[i].principal, scope, [], [])
                outcomes[i] = outcome
                counters["entered"] += 1
                if counters["entered"] == n:
                    all_entered.set()
                await all_entered.wait()  # every scope is live before anyone builds
                async with anyio.create_task_group() as tg:
                    for _ in range(self.threads):
                        tg.start_soon(call, outcome)
                outcome.runs = self.runs.pop(scope, 0)
                counters["built"] += 1
                if counters["built"] == n:
                    all_built.set()
                await judged.wait()  # every scope stays live while the round is judged

        async def judge() -> None:
            await all_built.wait()
            self._judge([o for o in outcomes if o is not None])
            judged.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(judge)
            for i in range(n):
                tg.start_soon(user, i)
        return [o for o in outcomes if o is not None]

    def _judge(self, outcomes: list[_Outcome]) -> None:
        rewalk = SharedStateIndex()
        for outcome in outcomes:
            self.scopes += 1
            who = redact_principal(outcome.principal)
            for err in outcome.errors:
                if isinstance(err, SharedStateError):
                    self._shared(err)
                else:
                    shown = "".join(traceback.format_exception_only(err)).strip()
                    self._violation(
                        Violation(
                            kind="error",
                            message=f"the factory raised for {who}: {shown}",
                            principals=(outcome.principal,),
                        )
                    )
            distinct = {id(i): i for i in outcome.instances}
            if outcome.errors and not outcome.instances:
                continue
            if outcome.runs != 1 and not outcome.errors:
                self._violation(
                    Violation(
                        kind="exactly-once",
                        message=(
                            f"the factory ran {outcome.runs} times in one scope of {who} "
                            f"({self.threads} concurrent callers): expected exactly once"
                        ),
                        principals=(outcome.principal,),
                    )
                )
            if len(distinct) > 1:
                self._violation(
                    Violation(
                        kind="exactly-once",
                        message=(
                            f"{len(distinct)} different instances were handed to the callers "
                            f"of one scope of {who}"
                        ),
                        principals=(outcome.principal,),
                    )
                )
            if not outcome.instances:
                continue
            instance = outcome.instances[0]
            self.built += 1
            self.types.add(_what(instance))
            if _MARK in type(instance).__dict__ or any(
                _MARK in k.__dict__ for k in type(instance).__mro__
            ):
                self.owned = True
                if owner_of(instance) is not outcome.scope:
                    self._violation(
                        Violation(
                            kind="ownership",
                            message=(
                                f"the @owned {type(instance).__qualname__} handed to {who} is "
                                "not owned by the scope that asked for it"
                            ),
                            principals=(outcome.principal,),
                        )
                    )
            # The end-of-round walk: state attached since the build is seen here.
            result = walk(instance)
            self.objects_max = max(self.objects_max, result.visited)
            self.mutable_max = max(self.mutable_max, len(result.mutable))
            self.depth_max = max(self.depth_max, result.depth)
            if result.truncated is not None:
                line = (
                    f"the walk of the {_what(instance)} built for {who} stopped "
                    f"at {result.truncated}: what lies beyond was not compared"
                )
                if len(self.truncated) < 5:
                    self.truncated.append(line)
            record = rewalk.new_record(outcome.principal, outcome.scope)
            conflict = rewalk.add(record, result, self.name)
            if conflict is not None:
                self._shared(shared_state_error(conflict))

    def _outlived(self, before: list[_Outcome], after: list[_Outcome]) -> None:
        earlier = {o.principal: o.instances[0] for o in before if o.instances}
        for outcome in after:
            if not outcome.instances:
                continue
            old = earlier.get(outcome.principal)
            if old is not None and old is outcome.instances[0]:
                self._violation(
                    Violation(
                        kind="outlived-scope",
                        message=(
                            f"the same {_what(old)} was handed to two requests of "
                            f"{redact_principal(outcome.principal)}: an instance must not "
                            "outlive the scope that built it"
                        ),
                        principals=(outcome.principal,),
                    )
                )


def audit(
    target: str | object,
    *,
    users: int = DEFAULT_USERS,
    threads: int = DEFAULT_THREADS,
    progress: Callable[[str], None] = lambda line: None,
    principals: PrincipalMaker | str = default_principal,
) -> AuditReport:
    """Audit the factory (or factories) of ``target``; return the report.

    Args:
        target: ``"MODULE:ATTR"``, or the object itself.
        users: Synthetic users, all with live scopes at once (at least 2).
        threads: Concurrent callers in each scope (threads for a sync
            factory, tasks for an async one).
        progress: Called with a line of progress at each step.
        principals: Makes synthetic user ``i`` (called with 0, 1, ...): a
            ``UserContext``, a ``(tenant_id or None, user_id)`` pair, or a
            user id; or its ``"MODULE:ATTR"``. The default gives UUID strings
            in two tenants (:func:`default_principal`).

    Raises:
        AuditUsageError: the target cannot be imported or is not a factory;
            ``principals`` cannot be imported, raised, returned something
            else, an invalid id, or one principal for two users.
    """
    if users < 2:
        raise AuditUsageError(f"--users must be at least 2, got {users}")
    if threads < 1:
        raise AuditUsageError(f"--threads must be at least 1, got {threads}")
    label = target if isinstance(target, str) else repr(target)
    maker_label = principals if isinstance(principals, str) else None
    maker: Any = load_target(principals) if isinstance(principals, str) else principals
    contexts = audit_contexts(users, maker, label=maker_label)
    obj = load_target(target) if isinstance(target, str) else target
    found = _factories(obj, label)
    # A registry's CONNECTION products need a connection scope; REQUEST ones resolve there too.
    lifetime = getattr(obj, "__isolation_scope_lifetime__", Lifetime.REQUEST)
    runs = [
        (_FactoryRun(name, raw, contexts, threads, progress, lifetime), check)
        for name, raw, check in found
    ]
    progress(
        f"isolation audit: {label}: {len(runs)} "
        f"factor{'ies' if len(runs) != 1 else 'y'}, {users} users over {threads} threads"
    )
    results = []
    for run, declared in runs:
        result = anyio.run(run.run, backend="asyncio")
        results.append(attrs.evolve(result, declared_check=declared))
    return AuditReport(target=label, users=users, threads=threads, factories=tuple(results))


def audit_main(
    target: str,
    *,
    users: int,
    threads: int,
    as_json: bool,
    out: Any,
    err: Any,
    principals: str | None = None,
) -> int:
    """The ``isolation audit`` command: print the report; return the exit code."""
    import json

    def progress(line: str) -> None:
        print(line, file=err, flush=True)

    try:
        report = audit(
            target,
            users=users,
            threads=threads,
            progress=progress,
            principals=default_principal if principals is None else principals,
        )
    except AuditUsageError as exc:
        print(f"isolation audit: {exc}", file=err)
        return EXIT_USAGE
    except IsolationError as exc:
        print(f"isolation audit: {type(exc).__name__}: {exc}", file=err)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(report.render(), file=out)
    return report.exit_code
