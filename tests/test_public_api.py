"""The public surface: ``__all__`` of every public module, public names, and the error tree."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import pkgutil
import re
from types import ModuleType

import pytest

import isolation
import isolation.errors


def _all_modules() -> list[str]:
    names = ["isolation"]
    names += [m.name for m in pkgutil.walk_packages(isolation.__path__, "isolation.")]
    return sorted(name for name in names if name != "isolation.__main__")


def _is_public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


MODULES = _all_modules()
PUBLIC_MODULES = [name for name in MODULES if _is_public(name)]
# Failure-mode modules are registry plug-ins: their interface is `register`, and their
# check functions are public only so that docs and tests can name them.
PLUGIN_PREFIX = "isolation.report.modes."


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{name} needs an extra that is not installed: {exc}")


def test_public_modules_found() -> None:
    """The walk sees the public modules, so the tests below cannot pass vacuously."""
    for name in ("isolation", "isolation.logging", "isolation.report", "isolation.testing"):
        assert name in PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_sorted_and_unique(name: str) -> None:
    """A public module's __all__ is in plain sorted() order without duplicates."""
    module = _import(name)
    names = list(getattr(module, "__all__", []))
    assert names == sorted(set(names))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Every name in a module's __all__ exists in it."""
    module = _import(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", [n for n in PUBLIC_MODULES if not n.startswith(PLUGIN_PREFIX)])
def test_all_lists_what_the_module_defines(name: str) -> None:
    """Every public class and function defined in a public module is in its __all__."""
    module = _import(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined <= set(getattr(module, "__all__", []))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_classes_print_under_a_public_path(name: str) -> None:
    """A public class names a public module that holds it (`isolation.X` for the top level)."""
    module = _import(name)
    for attr in getattr(module, "__all__", []):
        value = getattr(module, attr)
        if not inspect.isclass(value):
            continue
        if name == "isolation":
            assert value.__module__ in ("isolation", "isolation.errors"), attr
        assert _is_public(value.__module__), (attr, value.__module__)
        home = importlib.import_module(value.__module__)
        assert getattr(home, value.__qualname__) is value, attr


def test_top_level_names_exist_and_are_public() -> None:
    """Every name in isolation.__all__ exists; scope is Scope; private names are not exported."""
    for attr in isolation.__all__:
        assert hasattr(isolation, attr), attr
        assert not attr.startswith("_")
    assert isolation.scope is isolation.Scope
    assert isolation.__version__


def test_top_level_is_only_reexports() -> None:
    """isolation/__init__.py defines no class or function of its own."""
    source = inspect.getsource(isolation)
    tree = ast.parse(source)
    assert not [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]


# -- the error tree -------------------------------------------------------------

ERRORS = [
    getattr(isolation.errors, n)
    for n in isolation.errors.__all__
    if not issubclass(getattr(isolation.errors, n), Warning)
]


def _drawn_tree() -> dict[str, tuple[str, ...]]:
    """Parse the tree drawn in the isolation.errors docstring into {error: bases as drawn}."""
    doc = isolation.errors.__doc__
    assert doc is not None
    node = re.compile(r"(?:[├└]── )?\b(\w+Error)(?:\(([\w, ]+)\))?")
    root_column: int | None = None
    parents: list[str] = []
    drawn: dict[str, tuple[str, ...]] = {}
    for line in doc.splitlines():
        stripped = line.lstrip(" │")
        match = node.match(stripped)
        if match is None or (root_column is not None and not stripped.startswith(("├", "└"))):
            continue
        column = len(line) - len(stripped)
        if root_column is None:
            root_column = column
        depth = (column - root_column) // 4 + (1 if stripped[0] in "├└" else 0)
        del parents[depth:]
        name, bases = match.group(1), match.group(2) or ""
        builtins = tuple(b.strip() for b in bases.split(",") if b.strip())
        drawn[name] = (*parents[-1:], *builtins)
        parents.append(name)
    return drawn


def test_drawing_covers_every_error() -> None:
    """The docstring draws every error of isolation.errors, and nothing else."""
    assert set(_drawn_tree()) == {e.__name__ for e in ERRORS}


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_bases_as_drawn(error: type[BaseException]) -> None:
    """Each error's bases are exactly its parent in the drawing plus the builtin drawn with it."""
    drawn = _drawn_tree()[error.__name__]
    assert tuple(b.__name__ for b in error.__bases__) == drawn


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_public_and_an_isolation_error(error: type[BaseException]) -> None:
    """Each error lives in isolation.errors, is re-exported as isolation.X, and is an
    IsolationError."""
    assert issubclass(error, isolation.IsolationError)
    assert getattr(isolation, error.__name__) is error
    assert error.__module__ == "isolation.errors"


def _sample(annotation: object) -> object:
    """A picklable placeholder for a required field, by its (string) annotation."""
    text = str(annotation)
    if text.startswith("int"):
        return 3
    if text.startswith(("tuple", "Sequence")):
        return ()
    return "value"


def _instance(error: type[BaseException]) -> BaseException:
    """An instance with every field set: known values, placeholders for the rest."""
    if error is isolation.SharedStateError:
        return error(
            "shared", principals=(("acme", "alice"), (None, "bob")), paths=(("A", "b"), ("C",))
        )
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for param in inspect.signature(error).parameters.values():
        if param.name == "hint":
            kwargs["hint"] = "do this"
        elif param.default is not inspect.Parameter.empty:
            continue
        elif param.name == "message":
            args.append("something went wrong")
        elif param.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[param.name] = _sample(param.annotation)
        else:
            args.append(_sample(param.annotation))
    return error(*args, **kwargs)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_every_error_pickles(error: type[BaseException], protocol: int) -> None:
    """Errors (keyword-only fields included) survive pickle with type, message and fields."""
    original = _instance(error)
    restored = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(restored) is error
    assert str(restored) == str(original)
    assert restored.args == original.args
    assert vars(restored) == vars(original)


def test_messages_end_with_the_hint() -> None:
    """str() renders the message then the hint; without a hint, just the message."""
    assert str(isolation.UsageError("bad call")) == "bad call"
    assert str(isolation.UsageError("bad call", hint="Do X")) == "bad call. Do X"
    assert str(isolation.NoContextError("none")).startswith("none. Run this code inside")


def test_builtin_meanings() -> None:
    """Errors also are the builtin whose meaning they share, so existing excepts still work."""
    expected = {
        "UsageError": TypeError,
        "ConfigurationError": ValueError,
        "NoContextError": LookupError,
        "InvalidContextError": ValueError,
        "ContextExpiredError": TimeoutError,
        "CrossContextAccessError": PermissionError,
        "TokenError": ValueError,
        "PoolExhaustedError": TimeoutError,
        "CleanupTimeoutError": TimeoutError,
        "BackendUnavailableError": ConnectionError,
    }
    for name, builtin in expected.items():
        assert issubclass(getattr(isolation, name), builtin), name
    assert not issubclass(isolation.ScopeEndedError, LookupError)


# -- the public surface, name by name ---------------------------------------------

_ERROR_NAMES = set(isolation.errors.__all__)  # re-exported as isolation.X: one name each
# Every public module (no `_` in its path) and the names of its __all__. Adding or
# removing a public name fails here until this table says so: the surface grows on
# purpose only (issue 19: at most 110 names, report modes private).

SURFACE: dict[str, set[str]] = {
    "isolation": _ERROR_NAMES
    | {
        "Clock",
        "ContextLocal",
        "ContextThreadPoolExecutor",
        "Lifetime",
        "Principal",
        "Registry",
        "Scope",
        "UserContext",
        "current_context",
        "current_context_or_none",
        "current_scope",
        "owned",
        "request_scoped",
        "scope",
        "scope_stats",
        "shareable",
        "to_thread",
    },
    "isolation.context": set(),
    "isolation.errors": {
        "BackendUnavailableError",
        "CleanupTimeoutError",
        "ConfigurationError",
        "ConnectionClosedError",
        "ConnectionLimitError",
        "ContextError",
        "ContextExpiredError",
        "ContextSwitchError",
        "CrossContextAccessError",
        "DatabaseConnectionLostError",
        "EventError",
        "EventTooLargeError",
        "FactoryError",
        "InvalidContextError",
        "IsolationError",
        "MalformedTokenError",
        "NoContextError",
        "PoolExhaustedError",
        "QueueFullError",
        "ScopeEndedError",
        "SessionError",
        "SessionInUseError",
        "SharedStateError",
        "TokenError",
        "TokenExpiredError",
        "TokenPurposeError",
        "TokenReplayedError",
        "TokenSignatureError",
        "UnsupportedBackendError",
        "UsageError",
        "WalkTruncatedWarning",
    },
    "isolation.events": {
        "CloseReason",
        "Connection",
        "Event",
        "EventRouter",
        "History",
        "Overflow",
        "PublishResult",
        "ResumePoint",
        "TICKET_PURPOSE",
    },
    "isolation.events.backends": {"Deliver", "Envelope", "EventBackend", "MemoryBackend"},
    "isolation.events.backends.memory": set(),  # a deprecated path (a shim)
    "isolation.events.backends.redis": {"RedisBackend"},
    "isolation.factories": set(),
    "isolation.integrations": set(),
    "isolation.integrations.contextvars_extras": {"isolate"},
    "isolation.integrations.fastapi": {"CurrentContext", "from_scope"},
    "isolation.integrations.starlette": {
        "CloseCode",
        "IsolationMiddleware",
        "authenticated_context",
        "lifespan",
        "middleware_stats",
        "pump",
        "websocket_context",
    },
    "isolation.logging": {
        "ContextFilter",
        "REDACTED",
        "SecretsFilter",
        "hmac_redactor",
        "install_secrets_filter",
        "redact_secrets",
        "set_redactor",
    },
    "isolation.report": {"Report", "Settings", "default_registry", "run_report"},
    "isolation.sessions": {"OwnerColumn", "SessionManager"},
    "isolation.sessions.postgres": {
        "check_role",
        "check_role_sync",
        "quote_identifier",
        "rls_policy_sql",
        "rls_signing_key_sql",
        "rls_signing_sql",
    },
    "isolation.testing": {
        "AsyncRuleBasedStateMachine",
        "DEFAULT_PRINCIPALS",
        "FakeClock",
        "RegistryMachine",
        "RouterMachine",
        "assert_exactly_once",
        "assert_no_shared_state",
        "unsafe_corrupt_routing",
        "use_clock",
    },
    "isolation.testing.machines": set(),  # a deprecated path (a shim)
    "isolation.testing.strategies": {
        "confusable_pairs",
        "contexts",
        "hostile_ids",
        "interleavings",
        "principals",
    },
    "isolation.telemetry": {"instrument", "uninstrument"},
    "isolation.tokens": {
        "DEFAULT_TTL",
        "LEEWAY",
        "dumps",
        "generate_key",
        "loads",
    },
}

# The most distinct public names: a name re-exported under the same name (the
# errors as isolation.X, isolation.testing.RouterMachine) counts once. Count it with
# `python -c "import tests.test_public_api as t; print(t.surface_size())"`. Lower it
# as names go; never raise it (issue 19: at most 110, report modes private).
# Issue 20 (first slice) added isolation.events.History and ResumePoint; the
# strategies' valid_context_kwargs and invalid_context_kwargs (the report's mode 8
# helpers) left the surface for them.
# issue 21 adds isolation.telemetry.instrument and uninstrument (its first slice: metrics).
MAX_PUBLIC_NAMES = 112

# Modules the report helper makes private (issue 19, item 8): not listed above.
_PENDING_PRIVATE = "isolation.report.modes"


def _listed_modules() -> list[str]:
    return [n for n in PUBLIC_MODULES if not n.startswith(_PENDING_PRIVATE)]


def test_public_modules_are_the_listed_ones() -> None:
    """A public module added or made private updates SURFACE."""
    assert set(_listed_modules()) == set(SURFACE)


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_all_is_the_listed_surface(name: str) -> None:
    """Each public module's __all__ is exactly its row of SURFACE."""
    module = _import(name)
    assert set(getattr(module, "__all__", [])) == SURFACE[name]


# Public-looking names that implementation modules define but do not export (type
# variables, loggers, SQL building blocks). Each should become private (`_T`,
# `_logger`); shrink this table as they do, never grow it.
UNDECLARED: dict[str, set[str]] = {
    "isolation.events.backends.redis": {"T", "logger"},
    "isolation.integrations.contextvars_extras": {"R"},
    "isolation.integrations.fastapi": {"T"},
    "isolation.integrations.starlette": {
        "ASGIApp",
        "ASGIScope",
        "Message",
        "Receive",
        "Send",
        "logger",
    },
    "isolation.sessions.postgres": {
        "BINDING_SETTING",
        "DEFAULT_SIGNING_SCHEMA",
        "KEY_TABLE",
        "POLICY_NAME",
        "TENANT_SETTING",
        "UNRESTRICTED_POLICY_NAME",
        "UNRESTRICTED_SETTING",
        "UNRESTRICT_SQL",
        "USER_SETTING",
        "logger",
    },
}


def _declared(module: ModuleType) -> set[str]:
    """Public names a module declares as its own: what it defines (classes, functions,
    top-level assignments) and what it re-exports with ``import x as x``."""
    source = inspect.getsource(module)
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname for a in node.names if a.asname and a.asname == a.name}
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_module_declares_only_its_surface(name: str) -> None:
    """dir() of a public module, less private names and submodules, holds nothing it
    declares beyond __all__ (the package also re-exports isolation.errors)."""
    module = _import(name)
    extra = {
        attr
        for attr in _declared(module)
        if attr in dir(module) and not isinstance(getattr(module, attr), ModuleType)
    } - set(getattr(module, "__all__", []))
    if name == "isolation":
        extra -= set(isolation.errors.__all__)
    assert extra == UNDECLARED.get(name, set())


def _distinct_names() -> dict[tuple[str, int], list[str]]:
    """{(name, id of the object): modules exporting it} over every listed module."""
    seen: dict[tuple[str, int], list[str]] = {}
    for module_name, names in SURFACE.items():
        module = importlib.import_module(module_name)
        for attr in names:
            seen.setdefault((attr, id(getattr(module, attr))), []).append(module_name)
    return seen


def surface_size() -> int:
    """The number of distinct public names."""
    return len(_distinct_names())


def test_a_name_counted_once_is_one_definition() -> None:
    """Names merged by the count are re-exports of one definition, not two constants that
    happen to be equal (a small int or a short string is one object in CPython)."""
    for (attr, _), modules in _distinct_names().items():
        if len(modules) == 1:
            continue
        value = getattr(importlib.import_module(modules[0]), attr)
        if inspect.isclass(value) or inspect.isfunction(value) or isinstance(value, ModuleType):
            continue
        defining = [m for m in modules if attr in _assigned(importlib.import_module(m))]
        assert len(defining) <= 1, (attr, defining)


def _assigned(module: ModuleType) -> set[str]:
    """Names a module binds by assignment (not by import)."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_surface_size() -> None:
    """The public surface stays under its cap (the issue's target: 110 distinct names)."""
    assert surface_size() <= MAX_PUBLIC_NAMES


# -- deprecated paths: each old path warns and gives the same object ----------------

DEPRECATED = [
    ("isolation", "Attributes", "isolation.context._model", "Attributes"),
    ("isolation", "RegistryStats", "isolation.factories._registry", "RegistryStats"),
    ("isolation", "ScopeStats", "isolation.context._scope", "ScopeStats"),
    ("isolation.events", "Authenticate", "isolation.events._router", "Authenticate"),
    ("isolation.events", "Backend", "isolation.events.backends", "EventBackend"),
    ("isolation.events", "ConnectionState", "isolation.events._model", "ConnectionState"),
    ("isolation.events", "ConnectionStats", "isolation.events._model", "ConnectionStats"),
    (
        "isolation.events",
        "DEFAULT_MAX_CONNECTIONS_PER_USER",
        "isolation.events._router",
        "DEFAULT_MAX_CONNECTIONS_PER_USER",
    ),
    (
        "isolation.events",
        "DEFAULT_PUBLISH_TIMEOUT",
        "isolation.events._router",
        "DEFAULT_PUBLISH_TIMEOUT",
    ),
    ("isolation.events", "DEFAULT_QUEUE_SIZE", "isolation.events._router", "DEFAULT_QUEUE_SIZE"),
    ("isolation.events", "DEFAULT_TICKET_TTL", "isolation.events._router", "DEFAULT_TICKET_TTL"),
    ("isolation.events", "Deliver", "isolation.events.backends", "Deliver"),
    ("isolation.events", "Envelope", "isolation.events.backends", "Envelope"),
    ("isolation.events", "MemoryBackend", "isolation.events.backends", "MemoryBackend"),
    ("isolation.events", "PrincipalStats", "isolation.events._model", "PrincipalStats"),
    ("isolation.events", "RouterStats", "isolation.events._model", "RouterStats"),
    ("isolation.events.backends", "Backend", "isolation.events.backends", "EventBackend"),
    (
        "isolation.events.backends.memory",
        "MemoryBackend",
        "isolation.events.backends",
        "MemoryBackend",
    ),
    ("isolation.sessions", "SessionStats", "isolation.sessions._manager", "SessionStats"),
    *[
        ("isolation.sessions.postgres", name, "isolation.sessions.postgres", f"_{name}")
        for name in (
            "Binding",
            "PolicyRow",
            "SET_CONFIG_SQL",
            "binding_for",
            "check_policies",
            "install_pool_hooks",
            "install_return_check",
            "owner_columns",
        )
    ],
    ("isolation.logging", "Redactor", "isolation._redact", "Redactor"),
    ("isolation.logging", "get_logger", "isolation.logging", "_get_logger"),
    ("isolation.logging", "redact", "isolation._redact", "redact"),
    *[
        ("isolation.tokens", name, "isolation.tokens", f"_{name}")
        for name in (
            "MAX_TOKEN_BYTES",
            "MIN_KEY_BYTES",
            "MIN_KEY_DISTINCT_BYTES",
            "PARENT_REQUEST_ID",
            "VERSION",
        )
    ],
    *[
        ("isolation.events.backends.redis", name, "isolation.events.backends.redis", f"_{name}")
        for name in ("DEFAULT_HEALTH_INTERVAL", "DEFAULT_UNAVAILABLE_TIMEOUT")
    ],
    (
        "isolation.events.backends.redis",
        "RedisStats",
        "isolation.events.backends._redis_stats",
        "RedisStats",
    ),
    ("isolation.integrations.fastapi", "provided", "isolation.integrations.fastapi", "_provided"),
    *[
        ("isolation.report", name, f"isolation.report.{home}", name)
        for name, home in (
            ("Backend", "_registry"),
            ("CATALOG", "_registry"),
            ("Check", "_registry"),
            ("CheckResult", "_runner"),
            ("FailureMode", "_registry"),
            ("ModeRegistry", "_registry"),
            ("ModeResult", "_runner"),
            ("probe_server", "_servers"),
            ("render_table", "_render"),
            ("run_check", "_runner"),
        )
    ],
    *[
        ("isolation.testing.machines", name, "isolation.testing", name)
        for name in ("DEFAULT_PRINCIPALS", "RegistryMachine", "RouterMachine")
    ],
    *[
        ("isolation.testing.strategies", name, "isolation.testing.strategies", f"_{name}")
        for name in (
            "CONFUSABLE_SPELLINGS",
            "HOSTILE_CHARACTERS",
            "LOOKALIKES",
            "invalid_context_kwargs",
            "lookalike_pairs",
            "tenant_ids",
            "user_ids",
            "valid_context_kwargs",
        )
    ],
    *[
        (
            "isolation.integrations.starlette",
            f"CLOSE_{code}",
            "isolation.integrations.starlette",
            f"CloseCode.{code}",
        )
        for code in (
            "EXPIRED",
            "GOING_AWAY",
            "INTERNAL_ERROR",
            "MESSAGE_TOO_BIG",
            "NORMAL",
            "POLICY",
            "TRY_AGAIN_LATER",
        )
    ],
    (
        "isolation.integrations.starlette",
        "Authenticate",
        "isolation.integrations.starlette",
        "_Authenticate",
    ),
    (
        "isolation.integrations.starlette",
        "DEFAULT_MAX_FRAME_BYTES",
        "isolation.integrations.starlette",
        "_DEFAULT_MAX_FRAME_BYTES",
    ),
    (
        "isolation.integrations.starlette",
        "MiddlewareStats",
        "isolation.integrations._middleware_stats",
        "MiddlewareStats",
    ),
    (
        "isolation.integrations.starlette",
        "OnMessage",
        "isolation.integrations.starlette",
        "_OnMessage",
    ),
]


@pytest.mark.parametrize(
    ("old", "name", "new", "new_name"), DEPRECATED, ids=lambda v: str(v).rsplit(".", 1)[-1]
)
def test_old_path_warns_and_is_the_same_object(
    old: str, name: str, new: str, new_name: str
) -> None:
    """An old import path works for one release, with a DeprecationWarning naming it."""
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)}\.{name} is deprecated"):
        value = getattr(module, name)
    expected: object = importlib.import_module(new)
    for attr in new_name.split("."):
        expected = getattr(expected, attr)
    assert value is expected
    assert name not in getattr(module, "__all__", [])


def test_close_code_function_is_close_code_of() -> None:
    """starlette.close_code(reason) (deprecated) is CloseCode.of; the old constants are
    the enum's members, still ints."""
    starlette = pytest.importorskip("isolation.integrations.starlette")
    from isolation.events import CloseReason

    with pytest.warns(DeprecationWarning, match="close_code is deprecated"):
        close_code = starlette.close_code
    assert close_code(CloseReason.EXPIRED) is starlette.CloseCode.EXPIRED == 4001
    with pytest.warns(DeprecationWarning, match="CLOSE_POLICY is deprecated"):
        assert starlette.CLOSE_POLICY == 1008


def test_unknown_names_still_raise_attribute_error() -> None:
    """A deprecation __getattr__ serves only its old names."""
    with pytest.raises(AttributeError, match="no_such_name"):
        isolation.events.no_such_name  # type: ignore[attr-defined]
