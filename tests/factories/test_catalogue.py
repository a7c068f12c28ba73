"""The catalogue of known types, and the interface the walk reads it through."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import datetime
import itertools
import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from isolation.factories import _catalogue


@dataclasses.dataclass(frozen=True)
class Frozen:
    """A frozen dataclass."""

    x: int


@dataclasses.dataclass
class Thawed:
    """A mutable dataclass."""

    x: int


class Plain:
    """A class the catalogue does not know."""


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (int, _catalogue.Verdict.SHARED),
        (datetime.datetime, _catalogue.Verdict.SHARED),
        (type, _catalogue.Verdict.SHARED),
        (logging.Logger, _catalogue.Verdict.SHARED),
        (asyncio.Lock, _catalogue.Verdict.SHARED),
        (type(create_engine("sqlite://")), _catalogue.Verdict.SHARED),
        (Session, _catalogue.Verdict.BOUNDARY),
        (type(threading.Lock()), _catalogue.Verdict.OPAQUE),
        (type({}.values()), _catalogue.Verdict.VIEW),
        (itertools.count, _catalogue.Verdict.VIEW),
        (Plain, None),
        (dict, None),
        (list, None),
    ],
)
def test_verdicts(cls: type, expected: _catalogue.Verdict | None) -> None:
    assert _catalogue.verdict(cls) == expected


def test_a_class_that_says_it_is_shareable_is_shared_unless_a_declaration_is_checked() -> None:
    class Says:
        __isolation_shareable__ = True

    assert _catalogue.verdict(Says) == _catalogue.Verdict.SHARED
    assert _catalogue.verdict(Says, declarations=False) is None


def test_frozen_and_metadata() -> None:
    assert _catalogue.is_frozen(Frozen)
    assert not _catalogue.is_frozen(Thawed)
    assert not _catalogue.is_frozen(Plain)
    assert _catalogue.is_atom_value(3)
    assert _catalogue.is_atom_value(Plain)
    assert not _catalogue.is_atom_value([])
    assert _catalogue.is_class_metadata(Plain, "_sa_apply_dc_transforms")
    assert not _catalogue.is_class_metadata(Plain, "model_config")  # not a pydantic model


def test_the_walk_reads_the_catalogue_only_through_its_interface() -> None:
    """_graph.py uses no name of _catalogue outside its __all__."""
    source = Path(_catalogue.__file__).with_name("_graph.py").read_text(encoding="utf-8")
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "_catalogue"
    }
    assert used
    assert used <= set(_catalogue.__all__), sorted(used - set(_catalogue.__all__))
