"""What the distribution publishes and what the README tells a newcomer to run.

The distribution is ``isolation-primitives`` (the import name is ``isolation``:
the name ``isolation`` on the package index belongs to an unrelated project).
Its published extras are for users; the tools to work on the repository are
dependency groups (PEP 735), never in the package's metadata.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import isolation
from isolation._cli import main

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "isolation-primitives"
USER_EXTRAS = {
    "contextvars-extras",
    "fastapi",
    "otel",  # issue 21: opentelemetry-api only
    "postgres",
    "redis",
    "report",
    "sqlalchemy",
    "starlette",
    "testing",
}
# Tools that only working on the repository needs: never in a published extra.
DEV_TOOLS = {"pytest", "ruff", "mypy", "mkdocs", "coverage", "build", "twine", "pytest-cov"}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower()


class TestVersion:
    def test_version_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``isolation --version`` prints the version and the distribution's name, and exits 0."""
        with pytest.raises(SystemExit) as exit_info:
            main(["--version"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == (
            f"isolation {isolation.__version__} (distribution {DISTRIBUTION})\n"
        )

    def test_version_flag_of_the_module(self) -> None:
        """``python -m isolation --version`` works too, with no extra imported."""
        done = subprocess.run(
            [sys.executable, "-m", "isolation", "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:2] == ["isolation", isolation.__version__]

    def test_version_is_the_distributions(self) -> None:
        """``isolation.__version__`` is the version pyproject.toml publishes."""
        assert pyproject()["project"]["version"] == isolation.__version__


class TestMetadata:
    def test_name(self) -> None:
        """The distribution's name is ours, not the unrelated ``isolation``."""
        assert pyproject()["project"]["name"] == DISTRIBUTION

    def test_published_extras_are_for_users(self) -> None:
        """Only the user-facing extras are published, and none pulls in a development tool."""
        extras: dict[str, list[str]] = pyproject()["project"]["optional-dependencies"]
        assert set(extras) == USER_EXTRAS
        for extra, requirements in extras.items():
            names = {requirement_name(r) for r in requirements}
            assert not names & DEV_TOOLS, (extra, names & DEV_TOOLS)
            pinned = [r for r in requirements if "==" in r]
            assert not pinned, (extra, pinned)

    def test_development_tools_are_dependency_groups(self) -> None:
        """tests, docs, lint and dev are dependency groups; tests installs the project's extras."""
        groups: dict[str, list[Any]] = pyproject()["dependency-groups"]
        assert {"tests", "docs", "lint", "dev"} <= set(groups)
        (own,) = [r for r in groups["tests"] if isinstance(r, str) and r.startswith(DISTRIBUTION)]
        listed = set(re.findall(r"\[(.*)\]", own)[0].split(","))
        assert {"report", "postgres", "redis", "fastapi", "contextvars-extras"} <= listed
        assert {"pytest", "pytest-cov"} <= {
            requirement_name(r) for r in groups["tests"] if isinstance(r, str)
        }
        lint = {requirement_name(r) for r in groups["lint"]}
        assert {"ruff", "mypy"} <= lint

    def test_license_file(self) -> None:
        """An MIT LICENSE exists and is declared, so that the wheel and the sdist carry it."""
        text = (ROOT / "LICENSE").read_text(encoding="utf-8")
        assert text.startswith("MIT License\n")
        assert "Copyright (c) 2026 The isolation developers" in text
        project = pyproject()["project"]
        assert project["license"] == "MIT"
        assert project["license-files"] == ["LICENSE"]

    def test_no_placeholder_urls(self) -> None:
        """The project URLs are real addresses, not placeholders."""
        urls: dict[str, str] = pyproject()["project"].get("urls", {})
        for url in urls.values():
            assert url.startswith("https://"), url
            assert ".invalid" not in url, url
            assert "example." not in url, url

    def test_sdist_has_what_the_tests_read(self) -> None:
        """The sdist includes the files the test suite reads, so its own tests pass."""
        include = set(pyproject()["tool"]["hatch"]["build"]["targets"]["sdist"]["include"])
        needed = {"tests", "docs", "examples", "typing_tests", "mkdocs.yml", ".ci/run"}
        needed |= {"README.md", "CHANGELOG.md", "LICENSE", "src/isolation", "src/pytest_isolation"}
        assert needed <= include, needed - include


def _install_lines() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    pages += sorted((ROOT / "examples").rglob("*.md"))
    found = []
    for page in pages:
        for line in page.read_text(encoding="utf-8").splitlines():
            if "pip install" in line:
                found.append((page.relative_to(ROOT).as_posix(), line))
    return found


class TestInstallLines:
    def test_install_lines_found(self) -> None:
        """The README and the docs have install lines, so the checks below cannot pass vacuously."""
        assert len(_install_lines()) >= 5

    def test_every_install_line_names_the_distribution(self) -> None:
        """No page installs the unrelated ``isolation`` from the index."""
        wrong = [
            (page, line)
            for page, line in _install_lines()
            if re.search(r"(?<![\w.-])isolation\[", line)
        ]
        assert not wrong

    def test_no_page_installs_a_development_extra(self) -> None:
        """tests, dev and docs are dependency groups: ``.[tests]`` would install nothing of them."""
        wrong = [
            (page, line)
            for page, line in _install_lines()
            if re.search(r"\[[^\]]*\b(tests|dev|docs)\b[^\]]*\]", line)
        ]
        assert not wrong


class TestReadme:
    def test_the_unrelated_package_is_named(self) -> None:
        """The README warns that ``isolation`` on the index is another project."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        assert DISTRIBUTION in text
        assert re.search(r"`isolation`[^.]*on the (Python )?package index[^.]*unrelated", text)

    def test_quick_start_commands_use_two_venvs(self) -> None:
        """Each quick-start command makes its own venv: the second never reuses the first."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
        commands = re.findall(r"```console\n(.*?)\n```", quick_start, re.DOTALL)
        assert len(commands) == 2
        venvs = [re.match(r"python3\.11 -m venv (\S+) &&", command) for command in commands]
        assert all(venvs), commands
        first, second = (match[1] for match in venvs if match)
        assert first != second
        assert commands[0].endswith(f"{first}/bin/isolation report")
        assert f"{second}/bin/python -m pytest" in commands[1]
