"""The failure-mode report behind ``isolation report``, as a library call.

Every failure mode of the contract has one or more registered checks; each
check runs a real scenario against the library and against a deliberately
broken mutant, so the report proves both that the library holds and that the
check can fail::

    report = run_report(default_registry(), Settings(quick=True))
    assert report.exit_code == 0

The registry, check and result types behind it are internal (issue 19): the
old names here still work for one release, with a ``DeprecationWarning``.
"""

from isolation._deprecated import moved as _moved
from isolation.report._modes import default_registry as default_registry
from isolation.report._registry import Settings as Settings
from isolation.report._runner import Report as Report
from isolation.report._runner import run_report as run_report

__all__ = ["Report", "Settings", "default_registry", "run_report"]

__getattr__ = _moved(
    __name__,
    {
        "Backend": ("isolation.report._registry", "Backend"),
        "CATALOG": ("isolation.report._registry", "CATALOG"),
        "Check": ("isolation.report._registry", "Check"),
        "CheckResult": ("isolation.report._runner", "CheckResult"),
        "FailureMode": ("isolation.report._registry", "FailureMode"),
        "ModeRegistry": ("isolation.report._registry", "ModeRegistry"),
        "ModeResult": ("isolation.report._runner", "ModeResult"),
        "probe_server": ("isolation.report._servers", "probe_server"),
        "render_table": ("isolation.report._render", "render_table"),
        "run_check": ("isolation.report._runner", "run_check"),
    },
)
