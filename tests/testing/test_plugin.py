"""The pytest plugin, run in a pytester sub-session."""

from __future__ import annotations

import pytest


def test_fixtures_work(pytester: pytest.Pytester) -> None:
    """user_context and isolation_scope are available and bind the context."""
    pytester.makepyfile(
        """
        import isolation

        def test_context(user_context):
            assert user_context.principal == ("test-tenant", "test-user")

        def test_scope(isolation_scope, user_context):
            assert isolation.current_context() is user_context
            assert isolation.current_scope() is isolation_scope
        """
    )
    pytester.runpytest_subprocess("-p", "isolation", "-p", "no:cacheprovider").assert_outcomes(
        passed=2
    )


def test_strict_fails_a_test_that_leaves_a_scope_open(pytester: pytest.Pytester) -> None:
    """--isolation-strict fails a test that leaves a scope open, and passes a clean one."""
    pytester.makepyfile(
        """
        import contextvars
        import isolation

        kept = []

        def test_leaky():
            s = isolation.scope(isolation.UserContext.new("alice"))
            contextvars.copy_context().run(s.__enter__)
            kept.append(s)  # never exited

        def test_clean():
            with isolation.scope(isolation.UserContext.new("bob")):
                pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--isolation-strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*left open 1 scope"])


def test_strict_off_by_default(pytester: pytest.Pytester) -> None:
    """Without the option, a leaky test is not failed by the plugin."""
    pytester.makepyfile(
        """
        import isolation

        kept = []

        def test_leaky():
            s = isolation.scope(isolation.UserContext.new("alice"))
            s.__enter__()
            kept.append(s)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_loads_without_hypothesis(pytester: pytest.Pytester) -> None:
    """The plugin loads, and its fixtures work, with Hypothesis unimportable."""
    pytester.makeconftest(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "hypothesis" or name.startswith("hypothesis."):
                    raise ImportError("blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        for name in [m for m in sys.modules if m == "hypothesis" or m.startswith("hypothesis.")]:
            del sys.modules[name]
        """
    )
    pytester.makepyfile(
        """
        import sys

        def test_no_hypothesis(user_context):
            assert "hypothesis" not in sys.modules
            assert user_context.user_id == "test-user"
        """
    )
    pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest"
    ).assert_outcomes(passed=1)


def test_plugin_module_imports_nothing_at_load() -> None:
    """Loading the plugin module does not import isolation (coverage stays correct)."""
    import subprocess
    import sys

    code = "import sys, pytest_isolation; print('isolation' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_strict_counts_router_connections(pytester: pytest.Pytester) -> None:
    """--isolation-strict fails a test that leaves a router connection open."""
    pytester.makepyfile(
        """
        import anyio
        import isolation
        from isolation.events import EventRouter

        kept = []

        def test_leaves_a_connection_open():
            async def main():
                router = EventRouter()
                kept.append((router, await router.connect(isolation.UserContext.new("alice"))))
            anyio.run(main)

        def test_closes_its_router():
            async def main():
                router = EventRouter()
                await router.connect(isolation.UserContext.new("bob"))
                await router.aclose()
            anyio.run(main)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--isolation-strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*left open 1 connection"])


def test_open_resources_names_every_part() -> None:
    """The gauges cover scopes, sessions and connections once those parts are imported."""
    import importlib

    from isolation._counters import open_resources

    for part in ("isolation.events", "isolation.sessions"):
        importlib.import_module(part)  # each part registers its gauge on import

    assert {"scopes", "sessions", "connections"} <= set(open_resources())
