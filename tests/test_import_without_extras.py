"""``import isolation`` and ``isolation report`` work with every optional extra missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

EXTRAS = (
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "redis",
    "starlette",
    "hypothesis",
    "contextvars_extras",
    "trio",
)

# Runs in a fresh interpreter: a meta-path finder refuses every extra, then the
# script exercises the core and prints what it saw as one JSON object.
SCRIPT = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, json, runpy, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, Blocker())
    seen = {}

    import isolation
    import isolation.logging
    import isolation.testing
    import isolation.report

    seen["all"] = len(isolation.__all__)
    seen["modes"] = [mode.id for mode in isolation.report.default_registry().modes()]
    try:
        import isolation.testing.strategies
    except ImportError:
        seen["strategies"] = "ImportError"

    def run(argv, as_module=False):
        out, err = io.StringIO(), io.StringIO()
        code = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if as_module:
                    sys.argv = ["isolation", *argv]
                    runpy.run_module("isolation", run_name="__main__", alter_sys=True)
                else:
                    from isolation._cli import main
                    code = main(argv)
            except SystemExit as exc:
                code = exc.code
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

    seen["help"] = run(["--help"], as_module=True)
    seen["report_json"] = run(["report", "--json", "--mode", "8"])
    seen["report_table"] = run(["report", "--mode", "8"])
    seen["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps(seen))
    """
)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    """Run the script once with every extra blocked and return what it saw."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(EXTRAS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_core_imports(seen: dict[str, Any]) -> None:
    """import isolation (and logging, testing, report) works; no extra got loaded."""
    assert seen["all"] > 0
    assert seen["loaded"] == []


def test_registry_loads(seen: dict[str, Any]) -> None:
    """isolation.report.default_registry() lists the sixteen modes without any extra."""
    assert seen["modes"] == list(range(1, 17))


def test_strategies_need_hypothesis(seen: dict[str, Any]) -> None:
    """The Hypothesis strategies say so with an ImportError when the extra is missing."""
    assert seen["strategies"] == "ImportError"


def test_module_help(seen: dict[str, Any]) -> None:
    """python -m isolation --help prints the usage and exits 0."""
    assert seen["help"]["code"] == 0
    assert "usage: isolation" in seen["help"]["stdout"]
    assert "report" in seen["help"]["stdout"]


def test_report_marks_hypothesis_check_not_run(seen: dict[str, Any]) -> None:
    """isolation report --mode 8 runs what it can and shows the Hypothesis check as not run."""
    report = json.loads(seen["report_json"]["stdout"])
    (mode,) = [m for m in report["modes"] if m["id"] == 8]
    checks = {check["name"]: check for check in mode["checks"]}
    assert checks["no-invalid-accepted"]["status"] == "not_run"
    assert "hypothesis" in checks["no-invalid-accepted"]["reason"]
    assert checks["pickling-refused"]["status"] == "passed"
    assert mode["violations"] == 0
    # Part of the embedded checks could not run, so the mode does not claim to pass.
    assert mode["status"] == "not_run"
    assert "hypothesis" in mode["reason"]
    table = seen["report_table"]["stdout"]
    assert "needs 'hypothesis'" in table
