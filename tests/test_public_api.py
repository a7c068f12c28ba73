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
import isolation._errors


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
            assert value.__module__ == "isolation", attr
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
    getattr(isolation._errors, n)
    for n in isolation._errors.__all__
    if inspect.isclass(getattr(isolation._errors, n))
]


def _drawn_tree() -> dict[str, tuple[str, ...]]:
    """Parse the tree drawn in the _errors docstring into {error: bases as drawn}."""
    doc = isolation._errors.__doc__
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
    """The docstring draws every error of _errors.__all__, and nothing else."""
    assert set(_drawn_tree()) == {e.__name__ for e in ERRORS}


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_bases_as_drawn(error: type[BaseException]) -> None:
    """Each error's bases are exactly its parent in the drawing plus the builtin drawn with it."""
    drawn = _drawn_tree()[error.__name__]
    assert tuple(b.__name__ for b in error.__bases__) == drawn


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_public_and_an_isolation_error(error: type[BaseException]) -> None:
    """Each error is exported as isolation.X and derives from IsolationError."""
    assert issubclass(error, isolation.IsolationError)
    assert getattr(isolation, error.__name__) is error
    assert error.__module__ == "isolation"


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
