"""The old ``isolation.report.modes`` path: deprecated, still working for one release."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from isolation.report import default_registry


def _names(registry: object) -> list[tuple[int, str]]:
    return [(m.id, c.name) for m in registry.modes() for c in m.checks]  # type: ignore[attr-defined]


def test_default_registry_through_the_old_path_warns_and_is_the_same() -> None:
    modes = importlib.import_module("isolation.report.modes")
    with pytest.warns(DeprecationWarning, match=r"isolation\.report\.default_registry"):
        old = modes.default_registry
    assert _names(old()) == _names(default_registry())


def test_an_old_mode_module_name_resolves_to_its_mode_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="fm10_routing"):
        from isolation.report.modes import fm10_routing
    assert callable(fm10_routing.register)


def test_unknown_names_raise_attribute_error() -> None:
    modes = importlib.import_module("isolation.report.modes")
    with pytest.raises(AttributeError):
        _ = modes.fm99_nothing


def test_importing_the_report_does_not_warn() -> None:
    code = "import isolation.report, isolation; isolation.report.default_registry()"
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
