"""docs/explanation/invariants.md says where each guarantee is enforced, truthfully.

Every failure mode's section has one **Enforced in** line; each ``module, function``
pointer in it names a module of ``src/`` and a function, class or method that the
module defines (resolved by import and ``getattr``), so a rename or a removal that
leaves the page behind fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "explanation" / "invariants.md"
SRC = ROOT / "src"
MODES = range(1, 17)

# `isolation/x/_y.py`, `f()` / `C.m()`: a module followed by the names it defines.
POINTER = re.compile(r"`(isolation/[\w/]+\.py)`, ((?:`[\w.]+\(\)`(?: / )?)+)")
NAME = re.compile(r"`([\w.]+)\(\)`")


def _sections() -> dict[int, str]:
    parts = re.split(r"(?m)^## (\d+)\. .*$", PAGE.read_text(encoding="utf-8"))
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _enforced_lines(section: str) -> list[str]:
    """The **Enforced in** paragraph(s) of a section, joined into one line each."""
    lines: list[str] = []
    for paragraph in re.split(r"\n(?=\*\*)", section):
        if paragraph.startswith("**Enforced in:**"):
            lines.append(" ".join(paragraph.split()))
    return lines


def _pointers(line: str) -> list[tuple[str, str]]:
    return [
        (module, name) for module, names in POINTER.findall(line) for name in NAME.findall(names)
    ]


def test_every_mode_has_one_enforced_in_line() -> None:
    sections = _sections()
    assert sorted(sections) == list(MODES), "invariants.md should have one section per mode"
    for mode, section in sections.items():
        lines = _enforced_lines(section)
        assert len(lines) == 1, f"mode {mode}: {len(lines)} **Enforced in** lines, want one"
        assert _pointers(lines[0]), f"mode {mode}: its **Enforced in** line names no module"


@pytest.mark.parametrize("mode", MODES)
def test_enforced_in_names_code_that_exists(mode: int) -> None:
    (line,) = _enforced_lines(_sections()[mode])
    for path, name in _pointers(line):
        assert (SRC / path).is_file(), f"mode {mode}: {path} is not a module of src/"
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        obj: object = module
        for part in name.split("."):
            assert hasattr(obj, part), f"mode {mode}: {path} defines no {name}"
            obj = getattr(obj, part)
        assert callable(obj), f"mode {mode}: {path}'s {name} is not a function or class"


def test_the_pointer_parser_reads_both_shapes() -> None:
    line = (
        "**Enforced in:** `isolation/a.py`, `f()` / `C.m()` (not `g()`); "
        "the ids: `isolation/b/_c.py`, `h()`."
    )
    assert _pointers(line) == [
        ("isolation/a.py", "f"),
        ("isolation/a.py", "C.m"),
        ("isolation/b/_c.py", "h"),
    ]
