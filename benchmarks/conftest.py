"""Print each benchmark group's ratios against its anchor, from the same run.

A benchmark whose name contains ``anchor`` is the group's reference; every
other benchmark of the group is printed as ``median / anchor median``. A
benchmark that times its anchor itself, in alternating pairs, leaves its
ratios in ``extra_info`` (``paired_ratio``, ``paired_cpu_ratio``); those are
printed as they are. Timed assertions do not belong here: the figures go in
the docs and the notes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list[Any]] = defaultdict(list)
    for bench in session.benchmarks:
        groups[bench.group or bench.fullname].append(bench)
    terminalreporter.section("ratios against each group's anchor (median)")
    for group, benches in sorted(groups.items()):
        paired = [b for b in benches if "paired_ratio" in b.extra_info]
        if paired:
            terminalreporter.write_line(f"{group} (median of the pairs' ratios of time):")
            for bench in paired:
                info = bench.extra_info
                terminalreporter.write_line(
                    f"  {bench.name:<58} {info['anchor_us']:8.0f} -> {info['library_us']:8.0f} us"
                    f"  wall {info['paired_ratio']:5.2f}x  cpu {info['paired_cpu_ratio']:5.2f}x"
                )
        anchors = [b for b in benches if "anchor" in b.name]
        if not anchors:
            continue
        base = anchors[0].stats.median
        terminalreporter.write_line(f"{group}:")
        for bench in sorted(benches, key=lambda b: b.stats.median):
            ratio = bench.stats.median / base
            terminalreporter.write_line(
                f"  {bench.name:<60} {bench.stats.median * 1e9:10.1f} ns  {ratio:6.2f}x"
            )
