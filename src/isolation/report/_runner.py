"""Run the registered checks against the library and, on request, their mutants."""

from __future__ import annotations

import gc
import importlib.util
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import anyio
import attrs

from isolation.report._registry import Backend, Check, FailureMode, ModeRegistry, Settings
from isolation.report._servers import Probe, is_connection_failure, probe_server

__all__ = ["CheckResult", "ModeResult", "Report", "run_check", "run_report"]

logger = logging.getLogger("isolation.report")

Status = Literal["passed", "failed", "not_run", "error"]

EXIT_OK: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUN: Final = 3
EXIT_MUTANT_MISSED: Final = 4
EXIT_SERVER_ERROR: Final = 5

_MAX_DETAILS = 5


@attrs.frozen(kw_only=True)
class CheckResult:
    """What one check found."""

    name: str
    backend: str
    status: Status
    violations: int
    details: tuple[str, ...]
    seconds: float
    reason: str | None = None
    mutant_caught: bool | None = None
    mutant_details: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ModeResult:
    """What the checks of one mode found, together."""

    id: int
    name: str
    status: Status
    violations: int
    details: tuple[str, ...]
    seconds: float
    checks: tuple[CheckResult, ...]
    reason: str | None = None
    mutant_caught: bool | None = None

    @property
    def passed(self) -> bool | None:
        """``True``/``False``, or ``None`` when the mode did not run or could not reach a server."""
        return None if self.status in ("not_run", "error") else self.status == "passed"


@attrs.frozen(kw_only=True)
class Report:
    """The result of a run over every mode."""

    modes: tuple[ModeResult, ...]
    check_mutants: bool

    @property
    def exit_code(self) -> int:
        """1 a violation, else 5 a server error, else 4 a mutant not caught, else 3 not run, else 0.

        A server error (a PostgreSQL or Redis given to the report that did not
        answer, or refused the connection) is never a violation, and never 0.
        """
        if any(mode.status == "failed" for mode in self.modes):
            return EXIT_VIOLATION
        if any(mode.status == "error" for mode in self.modes):
            return EXIT_SERVER_ERROR
        if self.check_mutants and any(mode.mutant_caught is False for mode in self.modes):
            return EXIT_MUTANT_MISSED
        if any(mode.status == "not_run" for mode in self.modes):
            return EXIT_NOT_RUN
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """The report as the ``--json`` object."""
        modes = []
        for mode in self.modes:
            entry: dict[str, Any] = {
                "id": mode.id,
                "name": mode.name,
                "status": mode.status,
                "violations": mode.violations,
                "details": list(mode.details),
                "passed": mode.passed,
                "seconds": round(mode.seconds, 3),
                "checks": [
                    {
                        "name": check.name,
                        "backend": check.backend,
                        "status": check.status,
                        "violations": check.violations,
                        "seconds": round(check.seconds, 3),
                        **({"reason": check.reason} if check.reason else {}),
                        **({"mutant_caught": check.mutant_caught} if self.check_mutants else {}),
                    }
                    for check in mode.checks
                ],
            }
            if mode.reason:
                entry["reason"] = mode.reason
            if self.check_mutants:
                entry["mutant_caught"] = mode.mutant_caught
            modes.append(entry)
        return {"modes": modes, "exit_code": self.exit_code}


def _missing_requirement(check: Check) -> str | None:
    for module in check.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a blocking import hook, or a half-imported module
            found = False
        if not found:
            extra = _EXTRA_OF.get(module.partition(".")[0], "report")
            return f"needs {module!r}, which is not installed (pip install 'isolation-primitives[{extra}]')"
    return None


# Which extra installs a module a check needs (the report extra has the embedded ones).
_EXTRA_OF: Final = {"asyncpg": "postgres", "psycopg": "postgres", "redis": "redis"}


def _unavailable_backend(check: Check, settings: Settings) -> str | None:
    if check.backend is Backend.POSTGRES and not settings.postgres_url:
        return "no PostgreSQL URL given (--postgres)"
    if check.backend is Backend.REDIS and not settings.redis_url:
        return "no Redis URL given (--redis)"
    return None


def _server_url(backend: Backend, settings: Settings) -> str | None:
    return {Backend.POSTGRES: settings.postgres_url, Backend.REDIS: settings.redis_url}.get(backend)


class _Servers:
    """The probes of one report run: each requested server is probed once, when first needed."""

    def __init__(self, settings: Settings, probe: Probe) -> None:
        self._settings = settings
        self._probe = probe
        self._answers: dict[Backend, str | None] = {}

    def unreachable(self, backend: Backend, progress: Callable[[str], None]) -> str | None:
        """Why the server of ``backend`` does not answer, or ``None`` (and for embedded ones)."""
        url = _server_url(backend, self._settings)
        if url is None:
            return None
        if backend not in self._answers:
            progress(f"  probing {backend} ...")
            self._answers[backend] = self._probe(backend, url)
        return self._answers[backend]


def run_check(
    check: Check, settings: Settings, *, target: Literal["library", "mutant"] = "library"
) -> list[str]:
    """Run ``check`` against the library's subject or its mutant; return the violations.

    A check that crashes reports the crash as its one violation: for the library
    that is a failure, and for a mutant it is not counted as caught (see
    :func:`run_report`).
    """
    subject = check.subject(target, settings)
    if inspect.iscoroutinefunction(check.run):
        run: Callable[..., Any] = check.run
        return list(anyio.run(run, subject, settings, backend="asyncio"))
    return list(check.run(subject, settings))  # type: ignore[arg-type]


def _unrun(check: Check, status: Status, reason: str, seconds: float = 0.0) -> CheckResult:
    return CheckResult(
        name=check.name,
        backend=str(check.backend),
        status=status,
        violations=0,
        details=(),
        seconds=seconds,
        reason=reason,
    )


def _lost_server(check: Check, exc: Exception) -> str | None:
    """Why a crash of a check on a server is the server's doing, or ``None``: it is a finding."""
    if check.backend not in (Backend.POSTGRES, Backend.REDIS) or not is_connection_failure(exc):
        return None
    return f"lost the connection to {check.backend}: {type(exc).__name__}: {exc}"[:300]


def _run_one(
    check: Check,
    settings: Settings,
    check_mutants: bool,
    progress: Callable[[str], None],
    servers: _Servers,
) -> CheckResult:
    # A server not asked for explains a skipped check better than a missing client,
    # and a missing client better than a server that does not answer.
    reason = _unavailable_backend(check, settings) or _missing_requirement(check)
    if reason is not None:
        return _unrun(check, "not_run", reason)
    reason = servers.unreachable(check.backend, progress)
    if reason is not None:
        return _unrun(check, "error", reason)
    started = time.perf_counter()
    try:
        violations = run_check(check, settings)
    except Exception as exc:
        if (lost := _lost_server(check, exc)) is not None:
            logger.warning("check %s %s", check.name, lost, extra={"event": "check_server_lost"})
            return _unrun(check, "error", lost, time.perf_counter() - started)
        logger.exception("check %s crashed", check.name, extra={"event": "check_crashed"})
        violations = [f"the check crashed: {type(exc).__name__}: {exc}"]
    seconds = time.perf_counter() - started
    caught: bool | None = None
    mutant_details: tuple[str, ...] = ()
    if check_mutants:
        progress(f"  mutant of {check.name} ...")
        try:
            found = run_check(check, settings, target="mutant")
            caught = bool(found)
            mutant_details = tuple(found[:_MAX_DETAILS])
        except Exception as exc:
            if (lost := _lost_server(check, exc)) is not None:
                logger.warning(
                    "mutant run of %s %s", check.name, lost, extra={"event": "check_server_lost"}
                )
                return _unrun(check, "error", lost, seconds)
            logger.exception("mutant run of %s crashed", check.name)
            caught = False
            mutant_details = (f"the check crashed on the mutant: {type(exc).__name__}",)
    return CheckResult(
        name=check.name,
        backend=str(check.backend),
        status="failed" if violations else "passed",
        violations=len(violations),
        details=tuple(v[:300] for v in violations[:_MAX_DETAILS]),
        seconds=seconds,
        mutant_caught=caught,
        mutant_details=mutant_details,
    )


def _summarise(
    mode: FailureMode, results: Sequence[CheckResult], seconds: float, settings: Settings
) -> ModeResult:
    ran = [r for r in results if r.status in ("passed", "failed")]
    errors = [r for r in results if r.status == "error"]
    # A requested check that could not run — a missing extra, or a missing driver
    # of a server given with --postgres or --redis — means the mode was not fully
    # checked here: it must not show as passed. Checks of a server not given are
    # not requested.
    requested_missing = [
        r
        for check, r in zip(mode.checks, results, strict=True)
        if r.status == "not_run" and _unavailable_backend(check, settings) is None
    ]
    failed = any(r.status == "failed" for r in ran)
    if not mode.checks:
        status: Status = "not_run"
        reason: str | None = "no check registered yet: this mode is not delivered"
    elif failed:
        status, reason = "failed", None
    elif errors:
        status, reason = "error", "; ".join(sorted({r.reason or "" for r in errors}))
    elif not ran or requested_missing:
        status = "not_run"
        reason = "; ".join(sorted({r.reason or "" for r in (requested_missing or results)}))
    else:
        status, reason = "passed", None
    caught_values = [r.mutant_caught for r in ran if r.mutant_caught is not None]
    return ModeResult(
        id=mode.id,
        name=mode.name,
        status=status,
        violations=sum(r.violations for r in ran),
        details=tuple(d for r in ran for d in r.details)[:_MAX_DETAILS],
        seconds=seconds,
        checks=tuple(results),
        reason=reason,
        mutant_caught=all(caught_values) if caught_values else None,
    )


class _AiosqliteTerminateNoise(logging.Filter):
    """Drops asyncio's report of SQLAlchemy's abandoned aiosqlite graceful-close task.

    When a query is cancelled (mode 3 expires contexts mid-query), SQLAlchemy
    terminates the connection: it starts a graceful-close task and, when that
    does not finish in time, stops aiosqlite's thread, so the task waits
    forever and asyncio logs "Task was destroyed but it is pending!" when it is
    collected. The checks themselves verify that nothing is left open or
    checked out; this is upstream noise in the report's output, and only that
    one task's line is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Task was destroyed but it is pending!")
            and "AsyncAdapt_aiosqlite_connection._terminate_graceful_close()" in message
        )


def run_report(
    registry: ModeRegistry,
    settings: Settings | None = None,
    *,
    check_mutants: bool = False,
    modes: Sequence[int] | None = None,
    progress: Callable[[str], None] = lambda line: None,
    probe: Probe = probe_server,
) -> Report:
    """Run every registered check (of ``modes``, if given) and return the report.

    Each server of ``settings`` is first probed with ``probe(backend, url)``
    (once, before its first check): when it does not answer, its checks are
    errors with the probe's reason, and are not run.
    """
    settings = settings or Settings()
    servers = _Servers(settings, probe)
    results = []
    noise = _AiosqliteTerminateNoise()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addFilter(noise)
    try:
        for mode in registry.modes():
            if modes is not None and mode.id not in modes:
                continue
            progress(f"mode {mode.id}: {mode.name}")
            started = time.perf_counter()
            checks = []
            for check in mode.checks:
                progress(f"  {check.name} on {check.backend} ...")
                checks.append(_run_one(check, settings, check_mutants, progress, servers))
            results.append(_summarise(mode, checks, time.perf_counter() - started, settings))
    finally:
        gc.collect()  # the abandoned tasks are in cycles: collect them while filtered
        asyncio_logger.removeFilter(noise)
    return Report(modes=tuple(results), check_mutants=check_mutants)


for _cls in (CheckResult, ModeResult, Report):
    _cls.__module__ = "isolation.report"
del _cls
