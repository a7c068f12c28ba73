"""The table form of a report: a header, one row per mode, a summary line."""

from __future__ import annotations

from isolation.report._runner import Report

__all__ = ["render_table"]


def _mutant_cell(caught: bool | None) -> str:
    return {True: "caught", False: "MISSED", None: "-"}[caught]


def render_table(report: Report) -> str:
    """Render ``report``: each mode row starts with its number; the summary does not.

    Detail lines under a row (violations found, checks not run) are indented.
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
        if mode.status != "not_run":
            # A mode that ran only some of its checks says which did not, and why.
            lines.extend(
                f"      - {check.name} not run ({check.reason})"
                for check in mode.checks
                if check.status == "not_run"
            )
    counts = {
        status: sum(1 for mode in report.modes if mode.status == status)
        for status in ("passed", "failed", "not_run")
    }
    summary = (
        # "modes" keeps the line from reading like a test runner's "N passed, N failed".
        f"summary: {counts['passed']} modes passed, {counts['failed']} failed, "
        f"{counts['not_run']} not run"
    )
    if report.check_mutants:
        missed = sum(1 for mode in report.modes if mode.mutant_caught is False)
        summary += f", {missed} mutants missed"
    lines.append(f"{summary} (exit code {report.exit_code})")
    return "\n".join(lines)
