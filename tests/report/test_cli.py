"""``isolation report``: output shapes, streams and exit codes of the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable

import pytest

import isolation.report
from isolation._cli import main
from isolation.report import Settings
from isolation.report._registry import Backend, Check, ModeRegistry

CheckFactory = Callable[..., Check]  # the `make_check` fixture of conftest.py
RegistryFactory = Callable[[dict[int, Iterable[Check]]], ModeRegistry]


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModeRegistry], None]:
    """Make the command run a test-only registry instead of the library's."""

    def install(registry: ModeRegistry) -> None:
        monkeypatch.setattr(isolation.report, "default_registry", lambda: registry)

    return install


def passing_except(make_check: CheckFactory, **broken: Check) -> dict[int, list[Check]]:
    """Every mode with a passing check, except the modes given (``m5=check``)."""
    checks = {i: [make_check(f"ok-{i}")] for i in range(1, 17)}
    for key, check in broken.items():
        checks[int(key[1:])] = [check]
    return checks


class TestJsonOutput:
    def test_shape(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """--json prints one object: `modes` with sixteen objects of the documented keys."""
        use_registry(make_registry({6: [make_check("ok")]}))
        code = main(["report", "--json"])
        out, err = capsys.readouterr()
        data = json.loads(out)
        assert code == 3
        assert data["exit_code"] == 3
        assert len(data["modes"]) == 16
        for mode in data["modes"]:
            assert isinstance(mode["id"], int)
            assert isinstance(mode["name"], str)
            assert mode["status"] in {"passed", "failed", "not_run"}
            assert isinstance(mode["violations"], int)
            assert isinstance(mode["details"], list)
            assert mode["passed"] in {True, False, None}
            assert isinstance(mode["seconds"], float)
            assert "mutant_caught" not in mode
            for check in mode["checks"]:
                assert set(check) >= {"name", "backend", "status", "violations", "seconds"}
            if mode["status"] == "not_run":
                assert mode["reason"]
        assert data["modes"][5]["checks"][0] == {
            "name": "ok",
            "backend": "memory",
            "status": "passed",
            "violations": 0,
            "seconds": data["modes"][5]["checks"][0]["seconds"],
        }
        assert "mode 6:" in err
        assert "mode 6:" not in out

    def test_check_mutants_adds_mutant_caught(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        all_passing: ModeRegistry,
    ) -> None:
        """--check-mutants adds mutant_caught to each mode and check."""
        use_registry(all_passing)
        assert main(["report", "--json", "--check-mutants"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert all(m["mutant_caught"] is True for m in data["modes"])
        assert all(c["mutant_caught"] is True for m in data["modes"] for c in m["checks"])


class TestTableOutput:
    def test_shape(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        all_passing: ModeRegistry,
    ) -> None:
        """stdout: a header, rows 1..16 led by their number, a summary; progress on stderr."""
        use_registry(all_passing)
        assert main(["report"]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert not lines[0][:1].isdigit()
        assert [int(line.split()[0]) for line in lines[1:-1]] == list(range(1, 17))
        assert all(line[0].isdigit() for line in lines[1:-1])
        assert not lines[-1][:1].isdigit()
        assert lines[-1].startswith("summary: 16 modes passed")
        assert "mode 1:" in err
        assert "isolation report:" in err
        assert "mode 1:" not in out


class TestExitCodes:
    def test_zero_all_passed(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        all_passing: ModeRegistry,
    ) -> None:
        """0 when every mode ran and passed."""
        use_registry(all_passing)
        assert main(["report", "--check-mutants"]) == 0

    def test_one_violation(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """1 when a check finds a violation; the table shows it under the mode's row."""
        checks = passing_except(make_check, m4=make_check("leaks", found=["user bob saw alice"]))
        use_registry(make_registry(checks))
        assert main(["report"]) == 1
        out = capsys.readouterr().out
        assert "      ! user bob saw alice" in out.splitlines()

    def test_one_crash(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """1 when a check crashes: a crash never passes."""
        use_registry(make_registry(passing_except(make_check, m9=make_check("boom", crash=True))))
        assert main(["report", "--json"]) == 1
        data = json.loads(capsys.readouterr().out)
        assert data["modes"][8]["status"] == "failed"
        assert "crashed" in data["modes"][8]["details"][0]

    def test_four_mutant_missed(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """4 with --check-mutants when a mutant is not caught; 0 without the flag."""
        use_registry(
            make_registry(passing_except(make_check, m12=make_check("blind", mutant_found=())))
        )
        assert main(["report"]) == 0
        assert main(["report", "--check-mutants"]) == 4
        assert "MISSED" in capsys.readouterr().out

    def test_three_not_run(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """3 when a mode did not run: a missing module, or a server backend without its URL."""
        checks = passing_except(
            make_check,
            m1=make_check("pg", backend=Backend.POSTGRES),
            m10=make_check("bus", backend=Backend.REDIS),
            m11=make_check("needs", requires=("isolation_no_such_module_xyz",)),
        )
        use_registry(make_registry(checks))
        assert main(["report", "--json"]) == 3
        data = json.loads(capsys.readouterr().out)
        reasons = {m["id"]: m.get("reason", "") for m in data["modes"] if m["status"] == "not_run"}
        assert set(reasons) == {1, 10, 11}
        assert "PostgreSQL" in reasons[1]
        assert "Redis" in reasons[10]
        assert "isolation_no_such_module_xyz" in reasons[11]

    def test_urls_and_quick_reach_the_checks(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        use_registry: Callable[[ModeRegistry], None],
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """--postgres, --redis and --quick become the Settings the checks receive."""
        seen: list[Settings] = []
        checks = passing_except(
            make_check,
            m1=make_check("pg", backend=Backend.POSTGRES, seen=seen),
            m10=make_check("bus", backend=Backend.REDIS, seen=seen),
        )
        use_registry(make_registry(checks))
        probed: list[tuple[Backend, str]] = []
        monkeypatch.setattr(
            "isolation.report._servers.probe_server", lambda *server: probed.append(server)
        )
        argv = ["report", "--quick", "--postgres", "postgresql://db", "--redis", "redis://r"]
        assert main(argv) == 0
        expected = Settings(quick=True, postgres_url="postgresql://db", redis_url="redis://r")
        assert seen == [expected, expected]
        assert probed == [(Backend.POSTGRES, "postgresql://db"), (Backend.REDIS, "redis://r")]

    def test_mode_filter(
        self,
        capsys: pytest.CaptureFixture[str],
        use_registry: Callable[[ModeRegistry], None],
        all_passing: ModeRegistry,
    ) -> None:
        """--mode N (repeatable) runs only those modes."""
        use_registry(all_passing)
        assert main(["report", "--json", "--mode", "3", "--mode", "16"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert [m["id"] for m in data["modes"]] == [3, 16]

    @pytest.mark.parametrize("mode", ["0", "17", "-1"])
    def test_two_for_a_bad_mode(self, capsys: pytest.CaptureFixture[str], mode: str) -> None:
        """2 for a mode number outside 1 to 16, said on stderr."""
        assert main(["report", "--mode", mode]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "--mode takes 1 to 16" in err

    @pytest.mark.parametrize("argv", [["report", "--nope"], ["report", "--mode", "x"], ["nope"]])
    def test_two_for_bad_arguments(
        self, capsys: pytest.CaptureFixture[str], argv: list[str]
    ) -> None:
        """2 for arguments argparse refuses."""
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "usage: isolation" in capsys.readouterr().err

    def test_two_without_a_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No command prints the help and returns 2."""
        assert main([]) == 2
        assert "report" in capsys.readouterr().out

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help on the report command documents the exit codes."""
        with pytest.raises(SystemExit) as info:
            main(["report", "--help"])
        assert info.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--check-mutants" in out
        assert "4 a mutant not caught" in out
        assert "5 a server given did not answer or refused the connection" in out


def test_real_fm6_in_a_subprocess() -> None:
    """python -m isolation report --json --mode 6 runs the library's FM6 checks: passed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "isolation", "report", "--json", "--mode", "6"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (mode,) = data["modes"]
    assert mode["id"] == 6
    assert mode["status"] == "passed"
    assert mode["passed"] is True
    assert mode["violations"] == 0
    assert {c["name"] for c in mode["checks"]} >= {"weakrefs-dead", "memory-flat"}
    assert "mode 6:" in done.stderr
