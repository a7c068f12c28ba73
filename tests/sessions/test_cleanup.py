"""Which error a session block raises after its cleanup: every combination, in a table."""

from __future__ import annotations

import itertools

import pytest

from isolation.sessions._cleanup import AfterEnd, connection_lost, error_after_cleanup

INPUTS = ("cut_off", "raised", "commit_failed", "finished", "committed", "poisoned", "scope_closed")

# The rules in order of precedence: the first row whose given inputs match decides
# (None: either value). Read top to bottom, this is the contract of a block's end.
RULES: list[tuple[dict[str, bool], AfterEnd]] = [
    # The scope's finalizer ended the block first: its work is lost; say so if nothing else does.
    ({"cut_off": True, "raised": True}, AfterEnd.NOTHING),
    ({"cut_off": True, "raised": False}, AfterEnd.SCOPE_ENDED),
    # The commit failed (and was rolled back): its own error.
    ({"commit_failed": True}, AfterEnd.COMMIT_FAILED),
    # The cleanup was cut short before anything was committed.
    ({"finished": False, "committed": False, "raised": True}, AfterEnd.NOTE_CUT_SHORT),
    ({"finished": False, "committed": False, "raised": False}, AfterEnd.CUT_SHORT),
    # The block's own exception says what went wrong; a commit is no error.
    ({"raised": True}, AfterEnd.NOTHING),
    ({"committed": True}, AfterEnd.NOTHING),
    # A clean block that was rolled back: why.
    ({"poisoned": True}, AfterEnd.POISONED),
    ({"scope_closed": True}, AfterEnd.SCOPE_ENDED),
    ({}, AfterEnd.EXPIRED),
]

COMBINATIONS = [
    dict(zip(INPUTS, values, strict=True))
    for values in itertools.product((False, True), repeat=len(INPUTS))
]


def _expected(case: dict[str, bool]) -> AfterEnd:
    for given, verdict in RULES:
        if all(case[name] == value for name, value in given.items()):
            return verdict
    raise AssertionError("the last rule matches everything")


@pytest.mark.parametrize(
    "case",
    COMBINATIONS,
    ids=["-".join(name for name in INPUTS if case[name]) or "none" for case in COMBINATIONS],
)
def test_every_combination_follows_the_table(case: dict[str, bool]) -> None:
    """All 128 combinations of the inputs, each against the first rule that matches it."""
    assert error_after_cleanup(**case) is _expected(case)


def test_every_rule_decides_some_combination() -> None:
    """No rule of the table is shadowed by the ones above it, and every verdict is reachable."""
    deciding = {
        next(i for i, (given, _) in enumerate(RULES) if all(c[k] == v for k, v in given.items()))
        for c in COMBINATIONS
    }
    assert deciding == set(range(len(RULES)))
    assert {error_after_cleanup(**case) for case in COMBINATIONS} == set(AfterEnd)


@pytest.mark.parametrize(
    ("disconnect", "ending", "raised", "lost"),
    [
        (False, False, False, False),
        (False, False, True, False),
        (False, True, False, False),
        (False, True, True, False),
        (True, False, False, True),  # the block's own statement lost the connection
        (True, False, True, True),  # ... and the block let it out
        (True, True, False, True),  # the commit lost it: its outcome is unknown
        (True, True, True, False),  # the end failed after the block raised: the block's error
    ],
)
def test_connection_lost(disconnect: bool, ending: bool, raised: bool, lost: bool) -> None:
    """A disconnect becomes DatabaseConnectionLostError, unless the block's own error leads."""
    assert connection_lost(disconnect=disconnect, ending=ending, raised=raised) is lost
