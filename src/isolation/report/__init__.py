"""The failure-mode registry and the runner behind ``isolation report``.

Every failure mode of the contract has one or more registered checks; each
check runs a real scenario against the library and against a deliberately
broken mutant, so the report proves both that the library holds and that the
check can fail. Use :func:`default_registry` for the library's checks, or build
a :class:`ModeRegistry` of your own.
"""

from isolation.report._modes import default_registry as default_registry
from isolation.report._registry import CATALOG as CATALOG
from isolation.report._registry import Backend as Backend
from isolation.report._registry import Check as Check
from isolation.report._registry import FailureMode as FailureMode
from isolation.report._registry import ModeRegistry as ModeRegistry
from isolation.report._registry import Settings as Settings
from isolation.report._render import render_table as render_table
from isolation.report._runner import CheckResult as CheckResult
from isolation.report._runner import ModeResult as ModeResult
from isolation.report._runner import Report as Report
from isolation.report._runner import run_check as run_check
from isolation.report._runner import run_report as run_report
from isolation.report._servers import probe_server as probe_server

__all__ = [
    "Backend",
    "CATALOG",
    "Check",
    "CheckResult",
    "FailureMode",
    "ModeRegistry",
    "ModeResult",
    "Report",
    "Settings",
    "default_registry",
    "probe_server",
    "render_table",
    "run_check",
    "run_report",
]
