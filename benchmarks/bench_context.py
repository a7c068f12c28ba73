"""The context core against a raw ContextVar and contextvars-extras (issue: foundation).

Targets (ratios from one run): ``with scope(ctx): current_context()`` at most
3x a raw ContextVar set + get + reset (issue 19; was 6x); ``current_context()`` at most 2x a plain
function returning ``var.get()`` (4x with a deadline); ``UserContext.new`` at
most 1.3x ``uuid.uuid4()``. Run: ``pytest benchmarks/bench_context.py``.
"""

from __future__ import annotations

import contextvars
import uuid

import pytest

import isolation
from isolation import ContextLocal, UserContext, current_context, scope, tokens

VAR: contextvars.ContextVar[object] = contextvars.ContextVar("bench", default=None)
CTX = UserContext.new("alice")
CTX_DEADLINE = UserContext.new("alice", ttl=1e7)


def _raw_set_get_reset() -> None:
    token = VAR.set(CTX)
    VAR.get()
    VAR.reset(token)


def _plain_get() -> object:
    return VAR.get()


@pytest.mark.benchmark(group="scope: enter + current_context + exit")
def test_anchor_raw_contextvar(benchmark: pytest.FixtureRequest) -> None:
    benchmark(_raw_set_get_reset)


@pytest.mark.benchmark(group="scope: enter + current_context + exit")
def test_scope_no_deadline(benchmark: pytest.FixtureRequest) -> None:
    def run() -> None:
        with scope(CTX):
            current_context()

    benchmark(run)


@pytest.mark.benchmark(group="scope: enter + current_context + exit")
def test_scope_with_deadline(benchmark: pytest.FixtureRequest) -> None:
    def run() -> None:
        with scope(CTX_DEADLINE):
            current_context()

    benchmark(run)


@pytest.mark.benchmark(group="scope: enter + current_context + exit")
def test_scope_one_finalizer(benchmark: pytest.FixtureRequest) -> None:
    def finalizer(exc: BaseException | None) -> None:
        return None

    def run() -> None:
        with scope(CTX) as s:
            s.on_close(finalizer)
            current_context()

    benchmark(run)


@pytest.mark.benchmark(group="scope: enter + current_context + exit")
def test_contextvars_extras_registry_with(benchmark: pytest.FixtureRequest) -> None:
    from contextvars_extras import ContextVarsRegistry

    class Current(ContextVarsRegistry):
        user: object = None

    current = Current()

    def run() -> None:
        with current(user=CTX):
            current.user  # noqa: B018 - the read is what is measured

    benchmark(run)


@pytest.mark.benchmark(group="current_context()")
def test_anchor_plain_function_get(benchmark: pytest.FixtureRequest) -> None:
    benchmark(_plain_get)


@pytest.mark.benchmark(group="current_context()")
def test_current_context_no_deadline(benchmark: pytest.FixtureRequest) -> None:
    with scope(CTX):
        benchmark(current_context)


@pytest.mark.benchmark(group="current_context()")
def test_current_context_with_deadline(benchmark: pytest.FixtureRequest) -> None:
    with scope(CTX_DEADLINE):
        benchmark(current_context)


@pytest.mark.benchmark(group="current_context()")
def test_context_local_get(benchmark: pytest.FixtureRequest) -> None:
    local: ContextLocal[int] = ContextLocal(int)
    with scope(CTX):
        local.get()
        benchmark(local.get)


@pytest.mark.benchmark(group="current_context()")
def test_contextvars_extras_attribute(benchmark: pytest.FixtureRequest) -> None:
    from contextvars_extras import ContextVarsRegistry

    class Current(ContextVarsRegistry):
        user: object = None

    current = Current()
    current.user = CTX
    benchmark(lambda: current.user)


@pytest.mark.benchmark(group="UserContext.new")
def test_anchor_uuid4(benchmark: pytest.FixtureRequest) -> None:
    benchmark(uuid.uuid4)


@pytest.mark.benchmark(group="UserContext.new")
def test_new_plain(benchmark: pytest.FixtureRequest) -> None:
    benchmark(UserContext.new, "alice")


@pytest.mark.benchmark(group="UserContext.new")
def test_new_tenant_ttl(benchmark: pytest.FixtureRequest) -> None:
    benchmark(lambda: UserContext.new("alice", tenant_id="acme", ttl=30.0))


@pytest.mark.benchmark(group="UserContext.new")
def test_new_non_ascii(benchmark: pytest.FixtureRequest) -> None:
    benchmark(UserContext.new, "Élodie Müller")


@pytest.mark.benchmark(group="tokens")
def test_anchor_tokens_dumps(benchmark: pytest.FixtureRequest) -> None:
    key = tokens.generate_key()
    benchmark(tokens.dumps, CTX, key=key, purpose="job")


@pytest.mark.benchmark(group="tokens")
def test_tokens_dumps_and_loads(benchmark: pytest.FixtureRequest) -> None:
    key = tokens.generate_key()

    def run() -> UserContext:
        return tokens.loads(tokens.dumps(CTX, key=key, purpose="job"), keys=[key], purpose="job")

    benchmark(run)


def test_scope_is_exported() -> None:
    """Keeps the module importable as a test file when benchmarks are disabled."""
    assert isolation.scope is isolation.Scope
