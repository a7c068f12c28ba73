"""docs/explanation/architecture.md states the layering contract as tests/test_layers.py has it.

The page gives the number of private reads across parts that remain, and a table
of them by part: both must be the allow-list's, so lowering a count in the test
means updating the page (the list only shrinks; the page must not boast of reads
that are gone, nor hide new ones). Its drawing names every module of the core.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "explanation" / "architecture.md"

sys.path.insert(0, str(ROOT / "tests"))
import test_layers  # noqa: E402


def _text() -> str:
    return PAGE.read_text(encoding="utf-8")


def test_the_page_gives_the_allow_lists_count_of_private_reads() -> None:
    total = sum(test_layers.ALLOWED_PRIVATE_READS.values())
    stated = re.findall(r"(\d+) reads remain", _text())
    assert stated == [str(total)], (
        f"architecture.md says {stated} private reads remain; "
        f"tests/test_layers.py allows {total}: update the page"
    )


def test_the_table_of_private_reads_adds_up_by_part() -> None:
    allowed: dict[str, int] = {}
    for (part, _name), count in test_layers.ALLOWED_PRIVATE_READS.items():
        short = part.removeprefix("isolation.")
        allowed[short] = allowed.get(short, 0) + count
    stated: dict[str, int] = {}
    for part, count in re.findall(r"(?m)^\| (\w+) \| (\d+) \|", _text()):
        stated[part] = stated.get(part, 0) + int(count)
    assert stated == allowed


def test_the_drawing_names_every_core_module() -> None:
    (drawing,) = re.findall(r"```text\n(.*?)```", _text(), flags=re.S)
    core = [m for m, layer in test_layers.LAYERS.items() if layer == test_layers.CORE]
    for module in core:
        name = module.removeprefix("isolation.")
        assert re.search(rf"\b{re.escape(name)}\b", drawing), f"the drawing omits {module}"
