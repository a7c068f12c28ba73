"""CHANGELOG.md's Unreleased section is one Keep-a-Changelog section, not a concatenation.

Merges of several branches each adding their own ``### Added`` block made it read as
several changelogs in one: each kind of change appears once, in Keep a Changelog's
order, and no bullet is there twice.
"""

from __future__ import annotations

import re
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parent.parent / "CHANGELOG.md"
KINDS = ["Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"]


def _unreleased() -> str:
    text = CHANGELOG.read_text(encoding="utf-8")
    start = text.index("## [Unreleased]")
    following = re.search(r"(?m)^## ", text[start + 1 :])
    return text[start : start + 1 + following.start()] if following else text[start:]


def test_each_kind_of_change_once_in_order() -> None:
    kinds = re.findall(r"(?m)^### (.+)$", _unreleased())
    assert all(kind in KINDS for kind in kinds), f"unknown headings: {kinds}"
    assert len(kinds) == len(set(kinds)), f"a heading repeats: {kinds}"
    assert kinds == sorted(kinds, key=KINDS.index), f"not in Keep a Changelog's order: {kinds}"


def test_no_bullet_twice() -> None:
    bullets = re.findall(r"(?m)^- (.+)$", _unreleased())
    repeated = {b[:80] for b in bullets if bullets.count(b) > 1}
    assert not repeated, f"bullets listed twice: {sorted(repeated)}"


def test_no_blank_line_splits_a_section() -> None:
    """A blank line between two bullets is where two branches' lists were glued together."""
    assert not re.search(r"(?m)^- .*\n\n- ", _unreleased())
