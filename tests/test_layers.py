"""The layering contract, read from the source (``ast``): imports run one way, and no
part reads another part's private fields beyond a commented, shrinking allow-list.

Layers, lowest first::

    core (_errors and its public face errors, _deprecated, _clock, _redact, _lifetime,
          _counters, _log_secrets, _compat)
      <- context
      <- tokens, factories, logging
      <- sessions, events
      <- testing, integrations, telemetry
      <- report, the CLI (_cli, __main__), the pytest plugin, the package itself

A module may import its own part and the layers below; every import counts, a
lazy one inside a function and one under ``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import ast
import collections
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS = {
    "isolation._errors": 0,
    "isolation._deprecated": 0,
    "isolation.errors": 0,  # the public home of the errors: re-exports _errors
    "isolation._clock": 0,
    "isolation._redact": 0,
    "isolation._lifetime": 0,
    "isolation._counters": 0,
    "isolation._log_secrets": 0,
    "isolation._compat": 0,
    "isolation.context": 1,
    "isolation.tokens": 2,
    "isolation.factories": 2,
    "isolation.logging": 2,
    "isolation.sessions": 3,
    "isolation.events": 3,
    "isolation.testing": 4,
    "isolation.integrations": 4,
    "isolation.telemetry": 4,  # reads every part's counters, like the integrations
    "isolation.report": 5,
    "isolation._cli": 5,
    "isolation.__main__": 5,
    "isolation": 5,  # the package's __init__: re-exports every part
    "pytest_isolation": 5,
}
CORE = 0

# Imports that run the wrong way today, each with its reason. Shrink it; never grow it.
ALLOWED_IMPORTS = {
    # Scope's registry= and .registry are typed as the Registry (under TYPE_CHECKING only);
    # resolving goes through the Registry's declared __isolation_resolvers__ and
    # __isolation_aresolvers__ tables, and the storage and "once" primitive is context's (_once).
    ("isolation.context._scope", "isolation.factories._registry"),
    # Scope.from_token(), the documented way a worker opens a user's scope from a token:
    # imported lazily, inside the method.
    ("isolation.context._scope", "isolation.tokens"),
}


def _part(module: str) -> str:
    best = ""
    for part in LAYERS:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    assert best, f"{module} is in no layer: add it to LAYERS"
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.cache
def _sources() -> list[tuple[str, Path, ast.Module]]:
    return [
        (_module_name(path), path, ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(SRC.rglob("*.py"))
    ]


def _imports(module: str, path: Path, tree: ast.Module) -> list[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "isolation":  # from isolation import x: the submodule if there is one
                found += [
                    f"isolation.{a.name}"
                    if (SRC / "isolation" / a.name).exists()
                    or (SRC / "isolation" / f"{a.name}.py").exists()
                    else "isolation"
                    for a in node.names
                ]
            else:
                found.append(target)
    return [name for name in found if name.split(".")[0] in ("isolation", "pytest_isolation")]


def _wrong_way() -> set[tuple[str, str]]:
    wrong: set[tuple[str, str]] = set()
    for module, path, tree in _sources():
        source = _part(module)
        for target in _imports(module, path, tree):
            destination = _part(target)
            if destination == source:
                continue
            low, high = LAYERS[source], LAYERS[destination]
            if high > low or (high == low and low != CORE and low != LAYERS["isolation"]):
                wrong.add((module, target))
    return wrong


def test_imports_run_one_way() -> None:
    wrong = _wrong_way() - ALLOWED_IMPORTS
    assert not wrong, "imports against the layering (see this module's docstring):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(wrong)
    )


def test_the_import_allow_list_has_no_stale_entries() -> None:
    assert _wrong_way() >= ALLOWED_IMPORTS, "allowed imports that no longer happen: remove them"


# -- private fields across parts ----------------------------------------------------------

# Reads of a private field or method defined in another part (``obj._x`` where only
# another part defines ``_x``), by part and name, with today's counts: the debt of
# issue 19, item 1 (a declared internal interface of Scope, the Registry's tables).
# The test fails when a new pair appears or a count grows; lower the counts as the
# reads go. Private modules' functions (``_clock._now``) are their module's interface
# and are not counted here.
ALLOWED_PRIVATE_READS: dict[tuple[str, str], int] = {
    # @owned's per-call guard reads is_plain (isolation.context._interface) inline:
    # a call would cost every guarded method call.
    ("isolation.factories", "_fast"): 3,
    ("isolation.factories", "_timed"): 3,
    # SQLAlchemy's SessionTransaction._state (a closed SAVEPOINT), named like Scope's.
    ("isolation.sessions", "_state"): 2,
    ("isolation.events", "_check_keys"): 1,
    # The testing machines read what they check (item 8).
    ("isolation.testing", "_index"): 1,
    ("isolation.testing", "_principal"): 1,
    ("isolation.testing", "_providers"): 1,
    ("isolation.testing", "_routes"): 1,
}


def _owner_part(path: Path) -> str:
    return _part(_module_name(path))


def _module_aliases(tree: ast.Module) -> set[str]:
    """Names a module binds to modules (``import a.b as c``, ``from isolation import _clock``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names if a.name.startswith("_"))
    return names


@functools.cache
def _private_reads() -> collections.Counter[tuple[str, str]]:
    sources = _sources()
    defined: dict[str, set[str]] = collections.defaultdict(set)
    for _module, path, tree in sources:
        part = _owner_part(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined[node.attr].add(part)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined[node.name].add(part)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                for element in getattr(node.value, "elts", []):
                    if isinstance(element, ast.Constant) and isinstance(element.value, str):
                        defined[element.value].add(part)
    reads: collections.Counter[tuple[str, str]] = collections.Counter()
    for _module, path, tree in sources:
        part = _owner_part(path)
        modules = _module_aliases(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and (
                node.value.id in ("self", "cls") or node.value.id in modules
            ):
                continue  # a private module's names (_clock._now) are that module's interface
            owners = defined.get(name, set())
            if owners and part not in owners:
                reads[(part, name)] += 1
    return reads


def test_no_new_private_reads_across_parts() -> None:
    reads = _private_reads()
    grown = {
        key: count for key, count in reads.items() if count > ALLOWED_PRIVATE_READS.get(key, 0)
    }
    assert not grown, (
        "private fields read across parts (give the owner a small declared interface "
        "instead): "
        + ", ".join(f"{part}: .{name} x{n}" for (part, name), n in sorted(grown.items()))
    )


@pytest.mark.parametrize("key", sorted(ALLOWED_PRIVATE_READS))
def test_the_private_allow_list_is_not_stale(key: tuple[str, str]) -> None:
    """An entry whose reads are gone (or fewer) must shrink with them."""
    assert _private_reads().get(key, 0) == ALLOWED_PRIVATE_READS[key], (
        f"{key}: lower its count to what is left"
    )
