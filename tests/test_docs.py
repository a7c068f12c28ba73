"""The documentation runs: every ```python block of docs/ and the README, and the nav is whole.

Each page's ```python blocks run in order in one fresh namespace, one test per
page (the test id is the page's path). ```py blocks are shown, not run: use
them for code that needs a server. A page must close every fence it opens.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import isolation
import isolation._clock
import isolation._redact

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
