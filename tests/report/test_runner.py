"""The registry and the runner: statuses, reasons, mutants, exit codes and the JSON shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import pytest

from isolation import ConfigurationError
from isolation.report import Report, Settings, run_report
from isolation.report._registry import CATALOG, Backend, Check, ModeRegistry
from isolation.report._render import render_table
from isolation.report._runner import run_check

CheckFactory = Callable[..., Check]  # the `make_check` fixture of conftest.py
RegistryFactory = Callable[[dict[int, Iterable[Check]]], ModeRegistry]


def answering(probed: list[tuple[Backend, str]]) -> Callable[[Backend, str], str | None]:
    """A probe that records what it was asked and finds every server answering."""

    def probe(backend: Backend, url: str) -> str | None:
        probed.append((backend, url))
        return None

    return probe


class TestRegistry:
    def test_sixteen_modes_in_order(self) -> None:
        """A fresh registry has the sixteen modes of the catalog, in order, without checks."""
        modes = ModeRegistry().modes()
        assert [m.id for m in modes] == list(range(1, 17))
        assert [(m.id, m.name, m.scenario) for m in modes] == list(CATALOG)
        assert all(m.checks == () for m in modes)

    def test_register_and_lookup(self, make_check: CheckFactory) -> None:
        """register() returns the check; mode() finds the mode with its checks in order."""
        registry = ModeRegistry()
        first, second = make_check("a"), make_check("b")
        assert registry.register(3, first) is first
        registry.register(3, second)
        assert registry.mode(3).checks == (first, second)
        assert registry.mode(4).checks == ()

    def test_unknown_mode_refused(self, make_check: CheckFactory) -> None:
        """A mode id outside the catalog is a ConfigurationError, for register() and mode()."""
        registry = ModeRegistry()
        with pytest.raises(ConfigurationError, match="no failure mode 17"):
            registry.register(17, make_check())
        with pytest.raises(ConfigurationError, match="no failure mode 0"):
            registry.mode(0)

    def test_duplicate_name_refused(self, make_check: CheckFactory) -> None:
        """Check names are unique within a mode, not across modes."""
        registry = ModeRegistry()
        registry.register(1, make_check("same"))
        registry.register(2, make_check("same"))
        with pytest.raises(ConfigurationError, match="already has a check named 'same'"):
            registry.register(1, make_check("same"))

    def test_custom_catalog(self) -> None:
        """A registry can be built over another catalog."""
        registry = ModeRegistry([(1, "one", "tiny")])
        assert [m.name for m in registry.modes()] == ["one"]

    def test_settings(self) -> None:
        """Settings default to a full, embedded run; quick means fewer examples."""
        assert Settings().examples > Settings(quick=True).examples >= 10
        assert Settings().postgres_url is None
        assert Settings().redis_url is None


class TestRunCheck:
    def test_library_and_mutant(self, make_check: CheckFactory) -> None:
        """run_check runs the library subject by default and the mutant on request."""
        check = make_check(found=["x"], mutant_found=["y", "z"])
        assert run_check(check, Settings()) == ["x"]
        assert run_check(check, Settings(), target="mutant") == ["y", "z"]

    def test_factories_taking_an_argument_get_the_settings(self) -> None:
        """A library or mutant factory with a parameter is given the run's Settings
        (the FM16 Redis mutant takes its URL from them); one without is called bare."""
        settings = Settings(redis_url="redis://example.invalid/0")

        def judge(subject: tuple[str, str | None], given: Settings) -> list[str]:
            return [] if subject == ("library", None) else [f"{subject[0]} at {subject[1]}"]

        check = Check(
            name="with-settings",
            backend=Backend.MEMORY,
            run=judge,
            library=lambda: ("library", None),
            mutant=lambda s: ("mutant", s.redis_url),
        )
        assert run_check(check, settings) == []
        assert run_check(check, settings, target="mutant") == [
            "mutant at redis://example.invalid/0"
        ]

    def test_async_check(self, make_check: CheckFactory) -> None:
        """An async check function is run on an event loop of its own."""
        check = make_check(found=["late"], is_async=True)
        assert run_check(check, Settings()) == ["late"]


class TestRunReport:
    def test_undelivered_modes_not_run(self, make_registry: RegistryFactory) -> None:
        """A mode without checks is not_run with a reason; passed is None; exit code 3."""
        report = run_report(make_registry({}))
        assert len(report.modes) == 16
        assert all(m.status == "not_run" for m in report.modes)
        assert all("not delivered" in (m.reason or "") for m in report.modes)
        assert all(m.passed is None for m in report.modes)
        assert report.exit_code == 3

    def test_all_passing(self, all_passing: ModeRegistry) -> None:
        """All modes pass: exit 0; with mutants checked and caught, still 0."""
        report = run_report(all_passing)
        assert all(m.status == "passed" and m.passed for m in report.modes)
        assert all(m.mutant_caught is None for m in report.modes)
        assert report.exit_code == 0
        checked = run_report(all_passing, check_mutants=True)
        assert all(m.mutant_caught is True for m in checked.modes)
        assert checked.exit_code == 0

    def test_violation(self, make_check: CheckFactory, make_registry: RegistryFactory) -> None:
        """A check that finds a violation fails its mode: exit 1, with the details."""
        registry = make_registry(
            {2: [make_check("ok"), make_check("leaks", found=["leak 1", "leak 2"])]}
        )
        report = run_report(registry)
        mode = report.modes[1]
        assert mode.status == "failed"
        assert mode.passed is False
        assert mode.violations == 2
        assert mode.details == ("leak 1", "leak 2")
        assert [c.status for c in mode.checks] == ["passed", "failed"]
        assert report.exit_code == 1

    def test_details_bounded(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """Details are a few short lines: at most five, each cut at 300 characters."""
        found = [f"{i}:" + "x" * 1000 for i in range(20)]
        report = run_report(make_registry({1: [make_check(found=found)]}))
        mode = report.modes[0]
        assert mode.violations == 20
        assert len(mode.details) == 5
        assert all(len(d) <= 300 for d in mode.details)

    def test_mutant_missed(self, make_check: CheckFactory, make_registry: RegistryFactory) -> None:
        """A mutant the check does not catch: exit 4 with check_mutants, ignored without."""
        checks = {i: [make_check(f"ok-{i}")] for i in range(1, 17)}
        checks[5] = [make_check("blind", mutant_found=())]
        registry = make_registry(checks)
        assert run_report(registry).exit_code == 0
        report = run_report(registry, check_mutants=True)
        assert report.modes[4].mutant_caught is False
        assert report.modes[4].checks[0].mutant_caught is False
        assert report.exit_code == 4

    def test_mutant_crash_is_not_caught(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """A check that crashes on its mutant did not catch it."""
        checks = {i: [make_check(f"ok-{i}")] for i in range(1, 17)}
        checks[7] = [make_check("fragile", mutant_crash=True)]
        report = run_report(make_registry(checks), check_mutants=True)
        assert report.modes[6].mutant_caught is False
        assert "crashed on the mutant" in report.modes[6].checks[0].mutant_details[0]
        assert report.exit_code == 4

    def test_exit_code_precedence(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """1 a violation, else 4 a mutant not caught, else 3 some mode not run."""
        failing = make_registry(
            {1: [make_check("v", found=["x"])], 2: [make_check("m", mutant_found=())]}
        )
        assert run_report(failing, check_mutants=True).exit_code == 1
        missed = make_registry({2: [make_check("m", mutant_found=())]})
        assert run_report(missed, check_mutants=True).exit_code == 4
        assert run_report(missed).exit_code == 3

    def test_missing_requirement(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """A check needing a module that is not installed is not_run, naming the module."""
        registry = make_registry(
            {
                3: [make_check("needs", requires=("isolation_no_such_module_xyz",))],
                4: [
                    make_check("needs", requires=("isolation_no_such_module_xyz",)),
                    make_check("plain"),
                ],
            }
        )
        report = run_report(registry)
        three, four = report.modes[2], report.modes[3]
        assert three.status == "not_run"
        assert "isolation_no_such_module_xyz" in (three.reason or "")
        assert three.checks[0].status == "not_run"
        assert three.checks[0].seconds == 0.0
        # An embedded check that could not run keeps the mode from passing, though others ran.
        assert four.status == "not_run"
        assert four.checks[0].status == "not_run"
        assert four.checks[1].status == "passed"
        assert "isolation_no_such_module_xyz" in (four.reason or "")
        assert "needs 'isolation_no_such_module_xyz'" in render_table(report)
        assert report.exit_code == 3

    def test_requirement_of_a_submodule(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """A dotted requirement whose parent is missing counts as missing, not as a crash."""
        registry = make_registry(
            {
                3: [make_check("needs", requires=("isolation_no_such.sub",))],
                4: [make_check("has", requires=("json", "json.decoder"))],
            }
        )
        report = run_report(registry)
        assert report.modes[2].status == "not_run"
        assert report.modes[3].status == "passed"

    @pytest.mark.parametrize(
        ("backend", "reason"),
        [(Backend.POSTGRES, "PostgreSQL URL"), (Backend.REDIS, "Redis URL")],
    )
    def test_server_backend_without_url(
        self,
        make_check: CheckFactory,
        make_registry: RegistryFactory,
        backend: Backend,
        reason: str,
    ) -> None:
        """A check on PostgreSQL or Redis without its URL is not_run with the reason."""
        seen: list[Settings] = []
        registry = make_registry({1: [make_check("server", backend=backend, seen=seen)]})
        mode = run_report(registry).modes[0]
        assert mode.status == "not_run"
        assert reason in (mode.reason or "")
        assert mode.checks[0].backend == str(backend)
        assert seen == []

    @pytest.mark.parametrize("backend", [Backend.POSTGRES, Backend.REDIS])
    def test_server_backend_with_url(
        self, make_check: CheckFactory, make_registry: RegistryFactory, backend: Backend
    ) -> None:
        """Given the URL, the check runs and sees the settings."""
        seen: list[Settings] = []
        probed: list[tuple[Backend, str]] = []
        registry = make_registry({1: [make_check("server", backend=backend, seen=seen)]})
        settings = Settings(postgres_url="postgresql://x", redis_url="redis://x")
        report = run_report(registry, settings, probe=answering(probed))
        assert report.modes[0].status == "passed"
        assert seen == [settings]
        url = settings.postgres_url if backend is Backend.POSTGRES else settings.redis_url
        assert probed == [(backend, url)]

    def test_crash_is_a_violation(
        self,
        make_check: CheckFactory,
        make_registry: RegistryFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A check that crashes on the library reports the crash as a violation and logs it."""
        registry = make_registry({1: [make_check("boom", crash=True)]})
        with caplog.at_level(logging.ERROR, logger="isolation.report"):
            report = run_report(registry)
        mode = report.modes[0]
        assert mode.status == "failed"
        assert mode.details == ("the check crashed: RuntimeError: the scenario broke",)
        assert report.exit_code == 1
        assert any(getattr(r, "event", None) == "check_crashed" for r in caplog.records)

    def test_mode_filter_and_progress(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """modes= runs only those modes; progress gets one line per mode and check."""
        lines: list[str] = []
        registry = make_registry({2: [make_check("a")], 9: [make_check("b")]})
        report = run_report(registry, modes=[2, 9], check_mutants=True, progress=lines.append)
        assert [m.id for m in report.modes] == [2, 9]
        assert lines[0].startswith("mode 2: ")
        assert "  a on memory ..." in lines
        assert "  mutant of b ..." in lines


class TestJson:
    def test_shape(self, make_check: CheckFactory, make_registry: RegistryFactory) -> None:
        """to_json(): `modes` holds one object per mode with the documented keys and types."""
        registry = make_registry(
            {1: [make_check("ok")], 2: [make_check("bad", found=["x"])], 3: [make_check("m")]}
        )
        data = run_report(registry).to_json()
        assert data["exit_code"] == 1
        modes = data["modes"]
        assert [m["id"] for m in modes] == list(range(1, 17))
        for mode in modes:
            assert {
                "id",
                "name",
                "status",
                "violations",
                "details",
                "passed",
                "seconds",
                "checks",
            } <= set(mode)
            assert "mutant_caught" not in mode
            assert isinstance(mode["seconds"], float)
            for check in mode["checks"]:
                assert set(check) == {"name", "backend", "status", "violations", "seconds"}
        assert modes[0]["passed"] is True
        assert modes[1]["passed"] is False
        assert modes[1]["details"] == ["x"]
        assert modes[3]["passed"] is None
        assert modes[3]["status"] == "not_run"
        assert "reason" in modes[3]
        assert "reason" not in modes[0]

    def test_mutants_and_reasons(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """With check_mutants, modes and checks carry mutant_caught; not-run checks a reason."""
        registry = make_registry(
            {
                1: [make_check("ok"), make_check("pg", backend=Backend.POSTGRES)],
                2: [make_check("m", mutant_found=())],
            }
        )
        data = run_report(registry, check_mutants=True).to_json()
        one, two = data["modes"][0], data["modes"][1]
        assert one["mutant_caught"] is True
        assert two["mutant_caught"] is False
        assert data["modes"][2]["mutant_caught"] is None
        assert one["checks"][0]["mutant_caught"] is True
        assert one["checks"][1]["status"] == "not_run"
        assert "PostgreSQL" in one["checks"][1]["reason"]
        assert data["exit_code"] == 4


class TestTable:
    def _lines(self, report: Report) -> list[str]:
        return render_table(report).splitlines()

    def test_shape(self, make_check: CheckFactory, make_registry: RegistryFactory) -> None:
        """A header, one row per mode starting with its number, a summary not starting with one."""
        registry = make_registry({1: [make_check("ok")], 2: [make_check("bad", found=["leak"])]})
        report = run_report(registry)
        lines = self._lines(report)
        assert not lines[0][0].isdigit()
        assert "violations" in lines[0]
        rows = [line for line in lines if line[:1].isdigit()]
        assert [int(row.split()[0]) for row in rows] == list(range(1, 17))
        assert not lines[-1][0].isdigit()
        assert lines[-1].startswith("summary: 1 modes passed, 1 failed, 14 not run")
        assert lines[-1].endswith("(exit code 1)")
        assert "      ! leak" in lines
        two = next(row for row in rows if row.startswith("2 "))
        assert two.split()[-2:] == ["1", f"{report.modes[1].seconds:.2f}"]

    def test_mutant_column(self, make_check: CheckFactory, make_registry: RegistryFactory) -> None:
        """With mutants checked, a mutant column says caught, MISSED or -."""
        registry = make_registry({1: [make_check("ok")], 2: [make_check("m", mutant_found=())]})
        lines = self._lines(run_report(registry, check_mutants=True))
        assert "mutant" in lines[0]
        assert " caught " in lines[1]
        assert " MISSED " in lines[2]
        assert " -  " in lines[3]
        assert lines[-1].startswith(
            "summary: 2 modes passed, 0 failed, 14 not run, 1 mutants missed"
        )


class TestUpstreamNoise:
    """The report drops asyncio's line about SQLAlchemy's abandoned aiosqlite close, only that."""

    def test_mode_3_on_sqlite_leaves_no_abandoned_task_lines(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Expiring contexts mid-query leaves SQLAlchemy's graceful-close tasks; none is printed."""
        pytest.importorskip("aiosqlite")
        from isolation.report import default_registry

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            report = run_report(default_registry(), Settings(), modes=[3])
        assert [m.status for m in report.modes] == ["passed"]
        assert not [r for r in caplog.records if "Task was destroyed" in r.getMessage()]

    def test_other_destroyed_tasks_are_still_reported(
        self, caplog: pytest.LogCaptureFixture, make_registry: RegistryFactory
    ) -> None:
        """A pending task of anyone else's destroyed during the report is still logged."""
        import asyncio
        import gc

        def leave_a_task(subject: object, settings: Settings) -> list[str]:
            async def forever() -> None:
                await asyncio.Event().wait()

            loop = asyncio.new_event_loop()
            try:
                task = loop.create_task(forever())
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                loop.close()
            del task
            gc.collect()
            return []

        check = Check(
            name="leaves-a-task",
            backend=Backend.MEMORY,
            run=leave_a_task,
            library=lambda: None,
            mutant=lambda: None,
            description="test-only check that abandons a pending task",
        )
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            run_report(make_registry({1: [check]}), modes=[1])
        assert [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
