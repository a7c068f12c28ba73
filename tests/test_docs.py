"""The documentation runs: every ```python block of docs/ and the README, and the nav is whole.

Each page's ```python blocks run in order in one fresh namespace, one test per
page (the test id is the page's path). ```py blocks are shown, not run: use
them for code that needs a server. A page must close every fence it opens.

Each page's code needs exactly what the page tells the reader to install: its
``pip install`` lines (extras of ``isolation-primitives``, and other packages
by name) cover every import of its ```python and ```py blocks, and its
```python blocks run in a fresh interpreter that refuses every installed
package those lines would not install (an optional import of the library, a
backend anyio loads by name, an HTTP client a test client loads).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import isolation
import isolation._clock
import isolation._redact
import isolation.errors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_PAGES = sorted(DOCS.rglob("*.md"))
PAGES = [*DOC_PAGES, ROOT / "README.md"]

# A fence opens with three or more backticks or tildes, possibly indented (in a
# list item or an admonition), followed by an info string ("python", "py", ...).
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    language: str
    first_line: int
    """Line number in the page of the block's first line of code (1-based)."""
    source: str


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse_blocks(text: str, name: str) -> list[Block]:
    """Return the fenced code blocks of a Markdown page, in order.

    Raises:
        ValueError: A fence is never closed (naming the page and line).
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].strip().lstrip("{").strip()
        language = re.split(r"[\s{}]", info, maxsplit=1)[0].lstrip(".") if info else ""
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and closing.match(lines[end]) is None:
            end += 1
        if end == len(lines):
            raise ValueError(f"{name}:{index + 1}: the {fence} fence opened here is never closed")
        body = [_dedent(line, indent) for line in lines[index + 1 : end]]
        blocks.append(Block(language=language, first_line=index + 2, source="\n".join(body)))
        index = end + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    stripped = len(line) - len(line.lstrip(" \t"))
    return line[min(stripped, indent) :]


def nav_pages() -> list[str]:
    """The pages listed in the ``nav`` of mkdocs.yml, relative to docs/."""
    pages: list[str] = []
    in_nav = False
    for line in (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^nav\s*:", line):
            in_nav = True
            continue
        if in_nav and line.strip() and not line[0].isspace() and not line.startswith(("-", "#")):
            break  # the next top-level key
        if in_nav:
            pages.extend(re.findall(r"""([^\s:'"]+\.md)\b""", line.split(" #", 1)[0]))
    return pages


def _global_state() -> tuple[object, ...]:
    return (
        isolation._clock.get_clock(),
        isolation._redact._redactor,
        isolation.current_context_or_none(),
    )


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_python_blocks_run(page: Path) -> None:
    """The page's ```python blocks run in order, and leave no clock, redactor or scope behind."""
    name = _relative(page)
    blocks = parse_blocks(page.read_text(encoding="utf-8"), name)
    before = _global_state()
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": str(page)}
    for block in (b for b in blocks if b.language == "python"):
        # Pad with blank lines so that tracebacks point at the page's own line numbers.
        source = "\n" * (block.first_line - 1) + block.source + "\n"
        # dont_inherit: the page runs as a user's script would, without this module's
        # `from __future__ import annotations` (SQLModel reads its annotations as types).
        exec(compile(source, str(page), "exec", dont_inherit=True), namespace)
    assert _global_state() == before, (
        f"{name} changed the process-wide clock, the redactor, or left a scope bound: "
        "restore them at the end of the page (use_clock(), set_redactor(previous), `with`)"
    )


@pytest.mark.parametrize("page", DOC_PAGES, ids=_relative)
def test_page_is_in_nav(page: Path) -> None:
    """Every page under docs/ is reachable from the nav of mkdocs.yml (no orphans)."""
    relative = page.relative_to(DOCS).as_posix()
    assert relative in nav_pages(), (
        f"docs/{relative} is not in the nav of mkdocs.yml: add it under "
        "Tutorial, How-to, Explanation or Reference"
    )


def test_nav_pages_exist() -> None:
    """Every page the nav lists exists under docs/."""
    missing = [page for page in nav_pages() if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist under docs/: {missing}"


def test_readme_test_command_is_the_ci_command() -> None:
    """The README's quick-start test command is exactly the one .ci/run runs."""
    match = re.search(r"^TEST_COMMAND=\((.*)\)$", (ROOT / ".ci/run").read_text(), re.MULTILINE)
    assert match is not None, ".ci/run defines no TEST_COMMAND=(...)"
    command = match[1].replace('"', "")
    assert command in (ROOT / "README.md").read_text(encoding="utf-8"), (
        f"the README's quick start does not contain the CI's test command {command!r}"
    )


class TestParseBlocks:
    """The fence parser finds blocks, their languages and their lines."""

    def test_blocks_languages_and_lines(self) -> None:
        """Blocks come in order with their language and the line of their first code line."""
        text = "# T\n\n```python\nx = 1\n```\n\ntext\n\n```py\ny = 2\n```\n\n```\nplain\n```\n"
        blocks = parse_blocks(text, "t.md")
        assert [(b.language, b.first_line, b.source) for b in blocks] == [
            ("python", 4, "x = 1"),
            ("py", 10, "y = 2"),
            ("", 14, "plain"),
        ]

    def test_indented_block_is_dedented(self) -> None:
        """A block inside an admonition or list item loses the fence's indentation."""
        text = '!!! note\n    ```python title="x"\n    if True:\n        z = 3\n    ```\n'
        (block,) = parse_blocks(text, "t.md")
        assert block.language == "python"
        assert block.source == "if True:\n    z = 3"

    def test_longer_fence_holds_a_shorter_one(self) -> None:
        """A four-backtick fence may contain a three-backtick line."""
        text = "````markdown\n```python\nx\n```\n````\n"
        (block,) = parse_blocks(text, "t.md")
        assert block.language == "markdown"
        assert block.source == "```python\nx\n```"

    def test_unterminated_fence_fails(self) -> None:
        """A fence that is never closed is an error naming the page and line."""
        with pytest.raises(ValueError, match=r"t\.md:3: .* never closed"):
            parse_blocks("# T\n\n```python\nx = 1\n", "t.md")

    def test_inline_triple_backticks_are_not_a_fence(self) -> None:
        """A line like ```code``` is inline code, not the opening of a block."""
        assert parse_blocks("```inline``` text\n", "t.md") == []


def test_nav_parser_reads_only_the_nav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nav_pages() lists the nav's pages and ignores .md strings elsewhere in mkdocs.yml."""
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        "site_name: x\nextra_css: [a.md]\nnav:\n  - Home: index.md\n  - Tutorial:\n"
        "      - 'tutorial/one.md'\n  # - commented.md\nplugins:\n  - search\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert nav_pages() == ["index.md", "tutorial/one.md"]


# -- each page's code runs with exactly what the page names -----------------------

PROJECT_MODULES = frozenset({"isolation", "pytest_isolation"})

# `pip install ARGS` in an inline code span or a console block, up to the span's end.
_PIP_INSTALL = re.compile(r"pip install\s+([^`\n]+)")
_SHELL_END = frozenset("&|;<>()")
# Options of pip install that take a value (skipped with it).
_PIP_VALUED = frozenset(
    {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "--group"}
)


@dataclass(frozen=True)
class Named:
    """What a page tells its reader to install: extras of the project, other distributions."""

    extras: frozenset[str]
    distributions: frozenset[str]


@cache
def _pyproject() -> dict[str, Any]:
    """The ``[project]`` table of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _extras() -> dict[str, list[str]]:
    """The project's extras by canonical name, with their requirement lines."""
    return {
        canonicalize_name(name): lines
        for name, lines in _pyproject().get("optional-dependencies", {}).items()
    }


def _is_project(name: str) -> bool:
    return canonicalize_name(name) == canonicalize_name(_pyproject()["name"])


def named_on(text: str) -> Named:
    """The extras and distributions of every ``pip install`` line of a page.

    ``.`` and ``.[extra]`` (from a clone) and ``isolation-primitives[extra]``
    name the project; ``-r FILE`` and other options are skipped.
    """
    extras: set[str] = set()
    distributions: set[str] = set()
    for match in _PIP_INSTALL.finditer(text):
        lexer = shlex.shlex(match[1], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = iter(lexer)
        for word in words:
            if word[0] in _SHELL_END:  # `&& next command`, `; ...`, `| ...`, `> file`
                break
            if word in _PIP_VALUED:
                next(words, None)
                continue
            if word.startswith("-"):
                continue
            from_clone = word == "." or word.startswith(".[")  # the project, from a clone
            requirement = Requirement(f"{_pyproject()['name']}{word[1:]}" if from_clone else word)
            if _is_project(requirement.name):
                extras.update(canonicalize_name(extra) for extra in requirement.extras)
            else:
                distributions.add(canonicalize_name(requirement.name))
    return Named(frozenset(extras), frozenset(distributions))


def project_requirements(extras: Iterable[str]) -> list[Requirement]:
    """The project's dependencies with ``extras``, its own extras resolved in pyproject.toml.

    Raises:
        KeyError: An extra that pyproject.toml does not define.
    """
    optional = _extras()
    found = [Requirement(line) for line in _pyproject()["dependencies"]]
    todo, done = [canonicalize_name(extra) for extra in extras], set[str]()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for line in optional[extra]:
            requirement = Requirement(line)
            if _is_project(requirement.name):
                todo.extend(canonicalize_name(e) for e in requirement.extras)
            else:
                found.append(requirement)
    return found


def _applies(marker: Marker | None, extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in ("", *extras))


def installed_closure(requirements: Iterable[Requirement]) -> set[str]:
    """The distributions ``requirements`` install, with what they require, in turn."""
    found: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements if _applies(r.marker, ())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in done:
            continue
        done.add(key)
        found.add(key[0])
        try:
            lines = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # named but not installed here: nothing of it can be imported either
        for line in lines:
            requirement = Requirement(line)
            if _applies(requirement.marker, extras):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


@cache
def _modules_of_distributions() -> dict[str, frozenset[str]]:
    """Each installed top-level module, with the distributions that provide it."""
    return {
        module: frozenset(canonicalize_name(d) for d in dists)
        for module, dists in importlib.metadata.packages_distributions().items()
    }


@dataclass(frozen=True)
class Allowance:
    """The top-level modules a page's code may import, the installed ones it may not, and
    the installed distributions those come from."""

    allowed: frozenset[str]
    blocked: frozenset[str]
    blocked_distributions: frozenset[str]


# Distributions whose top-level module is not their name, for when they are not installed.
_NAMESPACE_MODULES = {
    "opentelemetry-api": "opentelemetry",
    "opentelemetry-sdk": "opentelemetry",
    "opentelemetry-exporter-prometheus": "opentelemetry",
}


def allowance(named: Named) -> Allowance:
    """What installing the project with ``named.extras``, plus ``named.distributions``, gives."""
    distributions = installed_closure(
        [*project_requirements(named.extras), *(Requirement(d) for d in named.distributions)]
    )
    provided = _modules_of_distributions()
    allowed = {m for m, dists in provided.items() if dists & distributions}
    # A named package that is not installed here still names its module (alembic -> alembic);
    # OpenTelemetry's distributions (the otel extra's, and those a page names) share the
    # namespace package `opentelemetry`.
    allowed |= {d.replace("-", "_") for d in named.distributions}
    allowed |= {
        _NAMESPACE_MODULES[d]
        for d in distributions | named.distributions
        if d in _NAMESPACE_MODULES
    }
    allowed |= set(sys.stdlib_module_names) | PROJECT_MODULES
    blocked = {m for m in provided if m not in allowed}
    blocked_distributions = {d for m in blocked for d in provided[m]} - distributions
    blocked_distributions -= {canonicalize_name(_pyproject()["name"])}
    return Allowance(frozenset(allowed), frozenset(blocked), frozenset(blocked_distributions))


def imported_modules(source: str) -> set[str]:
    """The top-level modules a block imports (absolute imports, at any depth)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def _code_blocks(page: Path) -> list[Block]:
    blocks = parse_blocks(page.read_text(encoding="utf-8"), _relative(page))
    return [b for b in blocks if b.language in ("python", "py")]


CODE_PAGES = [page for page in PAGES if _code_blocks(page)]


def _install_line(named: Named) -> str:
    extras = ",".join(sorted(named.extras))
    project = f"'isolation-primitives[{extras}]'" if extras else "isolation-primitives"
    return " ".join(["pip install", project, *sorted(named.distributions)])


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_install_lines_name_real_extras(page: Path) -> None:
    """Every extra a page names exists in pyproject.toml, under the distribution's own name."""
    text = page.read_text(encoding="utf-8")
    named = named_on(text)
    defined = set(_extras())
    assert named.extras <= defined, (
        f"{_relative(page)} names extras that pyproject.toml does not define: "
        f"{sorted(named.extras - defined)}"
    )
    assert "isolation" not in named.distributions, (
        f"{_relative(page)} says `pip install isolation...`: the package index's `isolation` is "
        "an unrelated project; this one is `isolation-primitives`"
    )


@pytest.mark.parametrize("page", CODE_PAGES, ids=_relative)
def test_code_imports_only_what_the_page_names(page: Path) -> None:
    """Each import of the page's ```python and ```py blocks comes with what its install lines
    name (the stdlib, the project's core dependencies and named extras, named packages)."""
    named = named_on(page.read_text(encoding="utf-8"))
    allowed = allowance(named).allowed
    missing = sorted(
        {
            (module, block.first_line)
            for block in _code_blocks(page)
            for module in imported_modules(block.source)
            if module not in allowed
        },
    )
    assert not missing, (
        f"{_relative(page)} imports what `{_install_line(named)}` does not install: "
        + ", ".join(f"{module} (line {line})" for module, line in missing)
        + ": name its extra (`pip install 'isolation-primitives[EXTRA]'`) or package on the page"
    )


# Runs a page's ```python blocks (given as JSON on stdin) in a fresh interpreter
# whose import system refuses the modules named in argv[1], as on a machine where
# only what the page names is installed; then imports the library's modules that
# its ```py blocks import (each optional one refuses to import without its extra).
_RUN_WITHOUT = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.metadata, json, re, sys

    BLOCKED = frozenset(json.loads(sys.argv[1]))
    NOT_INSTALLED = frozenset(json.loads(sys.argv[2]))
    entry_points = importlib.metadata.entry_points

    def installed_entry_points(**selection):
        # Plug-ins of the packages made absent are absent too (trio's Hypothesis hook).
        return importlib.metadata.EntryPoints(
            point for point in entry_points(**selection)
            if point.dist is None
            or re.sub(r"[-_.]+", "-", point.dist.name).lower() not in NOT_INSTALLED
        )

    importlib.metadata.entry_points = installed_entry_points

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(
                    f"No module named {name!r} (the page does not name what installs it)",
                    name=name,
                )
            return None

    sys.meta_path.insert(0, NotInstalled())
    page, blocks, shown_imports = json.load(sys.stdin)
    namespace = {"__name__": "__main__", "__file__": page}
    for first_line, source in blocks:
        exec(compile("\\n" * (first_line - 1) + source + "\\n", page, "exec"), namespace)
    for line, module in shown_imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"{page}:{line}: the ```py block imports {module}: {exc}")
    """
)


def _library_imports(source: str) -> set[str]:
    """The modules of this library a block imports (``from isolation.x import y``: isolation.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            else []
        )
        found.update(n for n in names if n.partition(".")[0] in PROJECT_MODULES)
    return found


def _shown_imports(page: Path) -> list[tuple[int, str]]:
    return sorted(
        (block.first_line, module)
        for block in _code_blocks(page)
        if block.language == "py"
        for module in _library_imports(block.source)
    )


def _checked_pages() -> list[Path]:
    return [
        p
        for p in PAGES
        if _shown_imports(p) or any(b.language == "python" for b in _code_blocks(p))
    ]


@pytest.mark.parametrize("page", _checked_pages(), ids=_relative)
def test_page_runs_with_only_what_it_names(page: Path) -> None:
    """The page's ```python blocks run, and the library modules its ```py blocks import
    import, where only the packages its install lines name are importable."""
    named = named_on(page.read_text(encoding="utf-8"))
    allowed = allowance(named)
    blocked = sorted(allowed.blocked)
    blocks = [(b.first_line, b.source) for b in _code_blocks(page) if b.language == "python"]
    src = Path(isolation.__file__).resolve().parent.parent  # the code under test
    # The code under test first; the rest of PYTHONPATH (packages installed beside the
    # environment) stays: the import blocker, not the path, decides what the page may use.
    path = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_WITHOUT,
            json.dumps(blocked),
            json.dumps(sorted(allowed.blocked_distributions)),
        ],
        input=json.dumps([str(page), blocks, _shown_imports(page)]),
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{_relative(page)} does not run with `{_install_line(named)}` alone:\n{done.stderr}"
    )


# -- the errors page is the error tree of the code ------------------------------------

ERRORS_PAGE = DOCS / "reference" / "errors.md"
_TABLE_ROW = re.compile(r"^\| `(\w+)` \|", re.MULTILINE)


def _drawn_in_source() -> list[str]:
    """The tree drawn in the docstring of ``isolation.errors``, dedented."""
    doc = isolation.errors.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "IsolationError(Exception)")
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return textwrap.dedent("\n".join(lines[start:end])).splitlines()


def test_errors_page_draws_the_tree_of_the_code() -> None:
    """docs/reference/errors.md draws the same tree as isolation.errors (checked there)."""
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    drawings = [b for b in parse_blocks(text, "errors.md") if b.language == "text"]
    assert drawings, "docs/reference/errors.md has no ```text drawing of the tree"
    assert drawings[0].source.splitlines() == _drawn_in_source()


def test_errors_page_lists_every_error_once() -> None:
    """Each error of the code has one row on the page, and each row is an exported
    IsolationError: nothing listed is reserved, gone, or not one of ours."""
    listed = _TABLE_ROW.findall(ERRORS_PAGE.read_text(encoding="utf-8"))
    for name in listed:
        error = getattr(isolation, name, None)
        assert isinstance(error, type), f"errors.md lists {name}, which isolation does not export"
        assert issubclass(error, isolation.IsolationError), f"{name} is not an IsolationError"
    defined = [
        n for n in isolation.errors.__all__ if not issubclass(getattr(isolation, n), Warning)
    ]
    assert sorted(listed) == sorted(defined)
