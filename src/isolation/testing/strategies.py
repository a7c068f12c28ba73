"""Hypothesis strategies for user ids, tenant ids, principals and contexts, hostile ones included.

Needs the ``testing`` extra (Hypothesis). Hostile ids cover what attackers and
broken clients send: bidi controls, zero-width characters, lone surrogates,
private-use and unassigned code points, line and paragraph separators, control
characters, padding white space, over-long and 1 MiB strings, and non-strings.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hypothesis import strategies as st

from isolation._deprecated import moved as _moved
from isolation.context._model import Principal, UserContext
from isolation.context._validate import MAX_ATTRIBUTE_VALUE_LENGTH, MAX_ID_LENGTH

__all__ = [
    "confusable_pairs",
    "contexts",
    "hostile_ids",
    "interleavings",
    "principals",
]

# Names that left the surface (issue 19): they warn for one release.
__getattr__ = _moved(
    __name__,
    {
        name: ("isolation.testing.strategies", f"_{name}")
        for name in (
            "CONFUSABLE_SPELLINGS",
            "HOSTILE_CHARACTERS",
            "invalid_context_kwargs",
            "LOOKALIKES",
            "lookalike_pairs",
            "tenant_ids",
            "user_ids",
            "valid_context_kwargs",
        )
    },
)

_HOSTILE_CHARACTERS: Mapping[str, tuple[str, ...]] = {
    "bidi": ("\u202e", "\u202d", "\u2066", "\u2067", "\u2069", "\u200f", "\u061c"),
    "zero_width": ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"),
    "lone_surrogate": ("\ud800", "\udbff", "\udc00", "\udfff"),
    "private_use": ("\ue000", "\uf8ff", "\U000f0000"),
    "unassigned": ("\u0378", "\U000e0080", "\uffff"),
    "separator": ("\u2028", "\u2029"),
    "control": ("\x00", "\x07", "\x1b", "\x7f", "\x85", "\n", "\t"),
}
"""Characters the validation refuses anywhere in an id, by class."""

_SAFE_ALPHABET = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
)


def _user_ids() -> st.SearchStrategy[str]:
    """Valid user ids: short printable text, including non-ASCII, already NFC."""
    import unicodedata

    return (
        st.text(_SAFE_ALPHABET, min_size=1, max_size=40)
        .map(lambda s: unicodedata.normalize("NFC", s))
        .filter(lambda s: 0 < len(s) <= MAX_ID_LENGTH)
    )


def _tenant_ids() -> st.SearchStrategy[str | None]:
    """Valid tenant ids, or ``None``."""
    return st.none() | _user_ids()


def hostile_ids(max_length: int = MAX_ID_LENGTH) -> st.SearchStrategy[Any]:
    """Ids the validation must refuse, one hostile class at a time.

    Args:
        max_length: The length limit of the field; longer strings are generated.
    """
    characters = st.sampled_from([c for chars in _HOSTILE_CHARACTERS.values() for c in chars])
    planted = st.builds(
        lambda prefix, char, suffix: prefix + char + suffix,
        st.text("abc", max_size=4),
        characters,
        st.text("xyz", max_size=4),
    )
    return st.one_of(
        planted,
        st.just(""),
        st.sampled_from([" alice", "alice ", "\u3000alice", "alice\u00a0", " "]),
        st.integers(max_length + 1, max_length * 3).map(lambda n: "a" * n),
        st.just("a" * (1 << 20)),  # 1 MiB
        st.sampled_from([None, 0, 1.5, b"alice", ["alice"], object()]),
    )


def _valid_context_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments that ``UserContext.new`` must accept."""
    return st.fixed_dictionaries(
        {"user_id": _user_ids()},
        optional={
            "tenant_id": _tenant_ids(),
            "ttl": st.floats(0.001, 86_400.0),
            "roles": st.frozensets(_user_ids(), max_size=3),
            "attributes": st.dictionaries(_user_ids(), _user_ids(), max_size=3),
        },
    )


def _invalid_context_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments that ``UserContext.new`` must refuse: one field broken."""
    bad_ttl = st.sampled_from([0, -1.0, float("nan"), float("inf"), float("-inf"), "10", True])
    return st.one_of(
        st.fixed_dictionaries({"user_id": hostile_ids()}),
        st.fixed_dictionaries({"user_id": _user_ids(), "tenant_id": hostile_ids().filter(bool)}),
        st.fixed_dictionaries({"user_id": _user_ids(), "ttl": bad_ttl}),
        st.fixed_dictionaries(
            {"user_id": _user_ids(), "roles": st.lists(hostile_ids(), min_size=1, max_size=2)}
        ),
        st.fixed_dictionaries({"user_id": _user_ids(), "roles": st.just("admin")}),
        st.fixed_dictionaries(
            {
                "user_id": _user_ids(),
                "attributes": st.one_of(
                    st.dictionaries(
                        hostile_ids().filter(_hashable), _user_ids(), min_size=1, max_size=1
                    ),
                    st.dictionaries(
                        _user_ids(), hostile_ids(MAX_ATTRIBUTE_VALUE_LENGTH), min_size=1, max_size=1
                    ),
                ),
            }
        ),
    )


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


_T = TypeVar("_T")

_LOOKALIKES: tuple[tuple[str, str], ...] = (
    ("alice", "Alice"),  # case: two users
    ("alice", "ALICE"),
    ("alice", "\u0430lice"),  # Cyrillic a: two users
    ("alice", "\uff41lice"),  # fullwidth a (NFKC folds it, NFC does not): two users
    ("file", "\ufb01le"),  # the fi ligature: two users
    ("straße", "strasse"),
    ("\u00e9lodie", "e\u0301lodie"),  # decomposed (not NFC): the second is refused
    ("\u00c5ngstr\u00f6m", "\u212bngstr\u00f6m"),  # Angstrom sign (not NFC): refused
)
"""Pairs of ids that look alike: both valid and two users, or the second refused
(not NFC). No pair is ever one principal."""


def _lookalike_pairs() -> st.SearchStrategy[tuple[str, str]]:
    """Pairs of ids that differ only by case, script, width or normalisation."""
    return st.sampled_from(_LOOKALIKES)


_CONFUSABLE_ALPHABET = "aAkKsSeEiIlL1o0-._\u00e5\u00c5\u00e9\u00c9\u00df\u03a9\u03c9\u00f6"


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _compatibility_signs(text: str) -> str:
    # ANGSTROM, KELVIN and OHM signs (their NFC is the letter) and the fi ligature.
    for letter, sign in (
        ("\u00c5", "\u212b"),
        ("K", "\u212a"),
        ("\u03a9", "\u2126"),
        ("fi", "\ufb01"),
    ):
        text = text.replace(letter, sign)
    return text


_CONFUSABLE_SPELLINGS: Mapping[str, Callable[[str], str]] = {
    "as given": lambda s: s,
    "NFC": lambda s: unicodedata.normalize("NFC", s),
    "NFD": lambda s: unicodedata.normalize("NFD", s),
    "NFKC": lambda s: unicodedata.normalize("NFKC", s),
    "NFKD": lambda s: unicodedata.normalize("NFKD", s),
    "casefold": str.casefold,
    "upper": str.upper,
    "lower": str.lower,
    "fullwidth": _fullwidth,
    "compatibility signs": _compatibility_signs,
}
"""Ways to spell one id that some layer could fold into one: normal forms, case,
width and compatibility characters (U+212B ANGSTROM SIGN, U+212A KELVIN SIGN, ...)."""


def confusable_pairs() -> st.SearchStrategy[tuple[str, str]]:
    """Two distinct spellings of one short id: as given, the four normal forms,
    case, fullwidth and compatibility signs (U+212B ANGSTROM SIGN, ...).

    Some spellings are not NFC and must be refused; the rest are distinct
    principals, and no layer (contexts, tokens, the router, the database) may
    treat the two as one.
    """
    spelling = st.sampled_from(sorted(_CONFUSABLE_SPELLINGS))
    return (
        st.tuples(
            st.text(st.sampled_from(_CONFUSABLE_ALPHABET), min_size=1, max_size=8),
            spelling,
            spelling,
        )
        .map(lambda t: (_CONFUSABLE_SPELLINGS[t[1]](t[0]), _CONFUSABLE_SPELLINGS[t[2]](t[0])))
        .filter(lambda pair: pair[0] != pair[1])
    )


def contexts() -> st.SearchStrategy[UserContext]:
    """Valid contexts, built through ``UserContext.new`` (so always validated)."""
    return _valid_context_kwargs().map(lambda kwargs: UserContext.new(**kwargs))


def principals(*, min_size: int = 2, max_size: int = 8) -> st.SearchStrategy[list[Principal]]:
    """Distinct :class:`~isolation.Principal` objects, often one user id in two tenants."""
    same_id_two_tenants = st.builds(
        lambda user, t1, t2: [Principal(t1, user), Principal(t2, user)],
        _user_ids(),
        _user_ids(),
        _user_ids(),
    ).filter(lambda pair: pair[0] != pair[1])
    extra = st.lists(st.builds(Principal, _tenant_ids(), _user_ids()), max_size=max_size)
    return st.builds(lambda a, b: list(dict.fromkeys(a + b)), same_id_two_tenants, extra).filter(
        lambda ps: min_size <= len(ps) <= max_size
    )


def interleavings(
    actors: int, operations: st.SearchStrategy[_T], *, max_size: int = 50
) -> st.SearchStrategy[list[tuple[int, _T]]]:
    """Sequences of ``(actor index, operation)``: who does what, in which order."""
    return st.lists(st.tuples(st.integers(0, actors - 1), operations), max_size=max_size)
