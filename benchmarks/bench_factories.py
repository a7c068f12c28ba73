"""@request_scoped, the shared-state walk and @owned (issue: refuse shared state).

What is measured: a ``@request_scoped`` call on a cache hit against calling the
factory directly; the full walk per walked object; a build (scope enter, build,
scope exit) with ``check="full"``, ``"sampled"`` and ``"off"``; an ``@owned``
method call against a plain one. Run: ``pytest benchmarks/bench_factories.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import isolation
from isolation import UserContext, scope
from isolation.factories._graph import walk

CTX = UserContext.new("alice")


class Engine:
    """A small engine: a few attributes, a list and a dict."""

    def __init__(self) -> None:
        self.history: list[str] = []
        self.settings = {"model": "m", "temperature": 0.2}
        self.tools = [{"name": f"tool-{i}"} for i in range(4)]

    def run(self) -> int:
        return len(self.history)


def make_engine() -> Engine:
    return Engine()


def _graph(objects: int) -> dict[str, Any]:
    """About ``objects`` mutable objects: a dict of lists of small dicts."""
    rows = objects // 11
    return {f"k{i}": [{"v": j} for j in range(10)] for i in range(rows)}


@pytest.mark.benchmark(group="request_scoped: cache hit vs direct call")
def test_anchor_direct_call(benchmark: Any) -> None:
    benchmark(make_engine)


@pytest.mark.benchmark(group="request_scoped: cache hit vs direct call")
def test_cache_hit(benchmark: Any) -> None:
    scoped = isolation.request_scoped(make_engine)
    with scope(CTX):
        scoped()
        benchmark(scoped)


@pytest.mark.benchmark(group="walk: per object")
def test_walk_1000_objects(benchmark: Any) -> None:
    graph = _graph(1000)
    result = benchmark(walk, graph)
    benchmark.extra_info["objects"] = result.visited


@pytest.mark.benchmark(group="walk: per object")
def test_walk_10000_objects(benchmark: Any) -> None:
    graph = _graph(10_000)
    result = benchmark(walk, graph)
    benchmark.extra_info["objects"] = result.visited


@pytest.mark.parametrize("check", ["off", "sampled", "full"])
@pytest.mark.benchmark(group="build: one scope, one build")
def test_build(benchmark: Any, check: str) -> None:
    scoped = isolation.request_scoped(check=check)(make_engine)  # type: ignore[arg-type]

    def run() -> None:
        with scope(CTX):
            scoped()

    benchmark(run)


@pytest.mark.benchmark(group="owned: method call")
def test_anchor_plain_method(benchmark: Any) -> None:
    engine = Engine()
    benchmark(engine.run)


@pytest.mark.benchmark(group="owned: method call")
def test_owned_method(benchmark: Any) -> None:
    owned_engine = isolation.owned(type("OwnedEngine", (Engine,), {}))
    with scope(CTX):
        engine = owned_engine()
        benchmark(engine.run)
