"""The ``isolation`` command (or ``python -m isolation``): ``report`` and ``audit``.

Results go to stdout, progress to stderr. Exit codes of ``report``: 0 all
passed, 1 a violation, 2 a usage error, 3 some modes not run (a missing extra,
or the driver of a server given with ``--postgres``/``--redis``), 4 a mutant
not caught (with ``--check-mutants``), 5 a server given did not answer or
refused the connection (its checks did not run: an error, never a violation).
Of ``audit``: 0 clean, 1 a violation, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from isolation import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isolation",
        description="Multi-tenant isolation checks for async Python services.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (distribution isolation-primitives)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="run the sixteen failure-mode checks against the library",
        description=(
            "Run every registered failure-mode check against the library on the embedded "
            "defaults (SQLite, in-memory router), or on the PostgreSQL and Redis given. "
            "Exit codes: 0 passed, 1 a violation, 2 usage, 3 some modes not run (a missing "
            "extra, or the driver of a server given), 4 a mutant not caught, 5 a server "
            "given did not answer or refused the connection (an error, not a violation)."
        ),
    )
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--check-mutants",
        action="store_true",
        help="also run each check against its deliberately broken mutant",
    )
    report.add_argument("--quick", action="store_true", help="fewer Hypothesis examples")
    report.add_argument("--postgres", metavar="URL", help="run session checks on PostgreSQL")
    report.add_argument("--redis", metavar="URL", help="run event checks across Redis")
    report.add_argument(
        "--mode", type=int, action="append", metavar="N", help="run only mode N (repeatable)"
    )
    audit = commands.add_parser(
        "audit",
        help="build a service's factories for many users at once and refuse shared state",
        description=(
            "Import MODULE:ATTR (a @request_scoped factory, a function or class, or a registry), "
            "build it for synthetic users with overlapping scopes across threads and tasks, "
            "walk every instance, check exactly-once creation and ownership, and report. "
            "Exit codes: 0 clean, 1 a violation, 2 usage."
        ),
    )
    audit.add_argument("target", metavar="MODULE:ATTR", help="the factory to audit")
    audit.add_argument("--users", type=int, default=20, help="synthetic users (default 20)")
    audit.add_argument(
        "--threads", type=int, default=4, help="concurrent callers per scope (default 4)"
    )
    audit.add_argument(
        "--principals",
        metavar="MODULE:CALLABLE",
        help=(
            "make the synthetic users: a function of the user's index (0, 1, ...) returning a "
            "UserContext, a (tenant_id or None, user_id) pair or a user id "
            "(default: UUID strings in two tenants)"
        ),
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _report(args: argparse.Namespace) -> int:
    from isolation.report import Settings, default_registry, run_report
    from isolation.report._render import render_table
    from isolation.report._servers import probe_server

    if args.mode and any(not 1 <= n <= 16 for n in args.mode):
        print(f"isolation report: --mode takes 1 to 16, got {args.mode}", file=sys.stderr)
        return 2
    settings = Settings(quick=args.quick, postgres_url=args.postgres, redis_url=args.redis)
    started = time.perf_counter()
    report = run_report(
        default_registry(),
        settings,
        check_mutants=args.check_mutants,
        modes=args.mode,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        probe=probe_server,
    )
    print(f"isolation report: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    # Why the exit code is not 0 when nothing was found: on stderr, whatever the format.
    reasons = {
        mode.reason: mode.status
        for mode in report.modes
        if mode.status in ("error", "not_run") and mode.reason
    }
    for reason, status in reasons.items():
        label = "error" if status == "error" else "not run"
        print(f"isolation report: {label}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_table(report))
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "audit":
        from isolation.factories._audit import audit_main

        return audit_main(
            args.target,
            users=args.users,
            threads=args.threads,
            principals=args.principals,
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
        )
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
