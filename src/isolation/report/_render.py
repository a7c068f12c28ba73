"""The table form of a report: a header, one row per mode, a summary line."""

from __future__ import annotations

from isolation._counters import counted
from isolation.report._runner import Report

__all__ = ["render_table"]


_UNRUN = {"not_run": "not run", "error": "error"}


def _mutant_cell(caught: bool | None) -> str:
    return {True: "caught", False: "MISSED", None: "-"}[caught]


def render_table(report: Report) -> str:
    """Render ``report``: each mode row starts with its number; the summary does not.

    Detail lines under a row (violations found, checks not run, checks whose
    server did not answer) are indented.
    """
    header = f"{'#':<2}  {'failure mode':<56} {'status':<8} {'violations':>10}"
    if report.check_mutants:
        header += f"  {'mutant':<7}"
    header += f"  {'seconds':>7}"
    lines = [header]
    for mode in report.modes:
        row = f"{mode.id:<2}  {mode.name[:56]:<56} {mode.status:<8} {mode.violations:>10}"
        if report.check_mutants:
            row += f"  {_mutant_cell(mode.mutant_caught):<7}"
        row += f"  {mode.seconds:>7.2f}"
        if mode.reason:
            row += f"  ({mode.reason})"
        lines.append(row)
        if mode.status == "failed":
            lines.extend(f"      ! {detail}" for detail in mode.details)
        # A mode that ran only some of its checks says which did not, and why (unless
        # its row already says it for them all).
        lines.extend(
            f"      - {check.name} {_UNRUN[check.status]} ({check.reason})"
            for check in mode.checks
            if check.status in _UNRUN and check.status != mode.status
        )
    counts = {
        status: sum(1 for mode in report.modes if mode.status == status)
        for status in ("passed", "failed", "not_run", "error")
    }
    summary = (
        # "modes" keeps the line from reading like a test runner's "N passed, N failed".
        f"summary: {counts['passed']} modes passed, {counts['failed']} failed, "
        f"{counts['not_run']} not run"
    )
    if counts["error"]:
        summary += f", {counted(counts['error'], 'errors')}"
    if report.check_mutants:
        missed = sum(1 for mode in report.modes if mode.mutant_caught is False)
        summary += f", {missed} mutants missed"
    lines.append(f"{summary} (exit code {report.exit_code})")
    return "\n".join(lines)
