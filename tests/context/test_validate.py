"""Validation of ids, roles and attributes: what is refused, and how the refusal reads."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isolation import ContextError, InvalidContextError, IsolationError, UserContext
from isolation.context._validate import (
    MAX_ATTRIBUTE_VALUE_LENGTH,
    MAX_ATTRIBUTES,
    MAX_ID_LENGTH,
    MAX_ROLES,
    check_attributes,
    owner_value,
)
from isolation.testing.strategies import _HOSTILE_CHARACTERS as HOSTILE_CHARACTERS
from isolation.testing.strategies import _invalid_context_kwargs as invalid_context_kwargs
from isolation.testing.strategies import _valid_context_kwargs as valid_context_kwargs
from isolation.testing.strategies import hostile_ids

ID_FIELDS = ("user_id", "tenant_id")

# One example per refused Unicode category, ASCII and non-ASCII controls both.
REFUSED = [
    ("Cc", "\x00"),
    ("Cc", "\x1b"),
    ("Cc", "\x85"),
    ("Cf", "\u200b"),
    ("Cf", "\u202e"),
    ("Cf", "\U000e0001"),
    ("Cs", "\ud800"),
    ("Cs", "\udfff"),
    ("Co", "\ue000"),
    ("Co", "\U00100000"),
    ("Cn", "\u0378"),
    ("Cn", "\U000e0080"),
    ("Zl", "\u2028"),
    ("Zp", "\u2029"),
]


def make(field: str, value: Any) -> UserContext:
    """Build a context with ``value`` in ``field`` (user_id or tenant_id)."""
    if field == "user_id":
        return UserContext.new(value)
    return UserContext.new("alice", tenant_id=value)


class TestIds:
    @pytest.mark.parametrize("field", ID_FIELDS)
    @pytest.mark.parametrize(("category", "char"), REFUSED)
    def test_refused_category(self, field: str, category: str, char: str) -> None:
        """A character of Cc, Cf, Cs, Co, Cn, Zl or Zp anywhere in an id is refused."""
        assert unicodedata.category(char) == category
        for value in (f"al{char}ice", char + "alice", "alice" + char, char):
            with pytest.raises(InvalidContextError) as info:
                make(field, value)
            assert info.value.field == field
            if category != "Cc":
                assert f"category {category}" in info.value.rule
                assert f"U+{ord(char):04X}" in info.value.rule
            else:
                assert "control" in info.value.rule or "Cc" in info.value.rule

    @pytest.mark.parametrize("field", ID_FIELDS)
    @pytest.mark.parametrize(
        "value", [" alice", "alice ", "\u3000alice", "alice\u00a0", "\u2003alice", " ", "\u00a0"]
    )
    def test_leading_or_trailing_white_space_refused(self, field: str, value: str) -> None:
        """Ids must not start or end with white space (ASCII or Unicode)."""
        with pytest.raises(InvalidContextError) as info:
            make(field, value)
        assert info.value.field == field
        assert "white space" in info.value.rule

    @pytest.mark.parametrize(
        "value", ["alice smith", "alice\u00a0smith", "jos\u00e9", "\u7530\u4e2d"]
    )
    def test_inner_space_and_non_ascii_accepted(self, value: str) -> None:
        """Inner spaces (Zs) and non-ASCII letters are fine in the middle of an id."""
        assert UserContext.new(value).user_id == value

    @pytest.mark.parametrize("field", ID_FIELDS)
    def test_empty_refused(self, field: str) -> None:
        """An empty id is refused (the FM8 bug: an empty user_id accepted)."""
        with pytest.raises(InvalidContextError) as info:
            make(field, "")
        assert info.value.rule == "must not be empty"

    @pytest.mark.parametrize("field", ID_FIELDS)
    @pytest.mark.parametrize("value", [1, 1.5, b"alice", ["alice"], object()])
    def test_non_str_refused(self, field: str, value: object) -> None:
        """Ids are str; other types are named by type only, never rendered."""
        with pytest.raises(InvalidContextError) as info:
            make(field, value)
        assert info.value.rule == "must be a str"
        assert info.value.value_prefix == f"a {type(value).__name__}"

    def test_none_user_id_refused_none_tenant_accepted(self) -> None:
        """user_id is required; tenant_id may be None."""
        with pytest.raises(InvalidContextError):
            UserContext.new(None)  # type: ignore[arg-type]
        assert UserContext.new("alice", tenant_id=None).tenant_id is None

    @pytest.mark.parametrize("field", ID_FIELDS)
    @pytest.mark.parametrize(
        "spelling",
        [
            "jose\u0301",  # decomposed (NFD)
            "\u212blice",  # ANGSTROM SIGN, whose NFC is U+00C5
            "\u212aelvin",  # KELVIN SIGN, whose NFC is "K"
            "\u2126mega",  # OHM SIGN, whose NFC is U+03A9
        ],
    )
    def test_not_nfc_refused_never_rewritten(self, field: str, spelling: str) -> None:
        """Issue 16, finding 4: an id that is not NFC is refused, never normalised into
        another account's id; the message names the field and the rule, escaped."""
        with pytest.raises(InvalidContextError) as info:
            make(field, spelling)
        assert info.value.field == field
        assert "NFC" in info.value.rule
        assert str(info.value).isascii()
        assert "\\u" in info.value.value_prefix

    def test_two_accounts_stay_two_principals(self) -> None:
        """Issue 16, finding 4: "\u00c5lice" and "\u212blice" are two accounts in the
        app; the library never makes them one principal (the second is refused)."""
        victim = UserContext.new("\u00c5lice")
        assert victim.user_id == "\u00c5lice"
        with pytest.raises(InvalidContextError):
            UserContext.new("\u212blice")
        with pytest.raises(InvalidContextError):
            UserContext(user_id="\u212blice")
        with pytest.raises(InvalidContextError):
            UserContext.new("bob", tenant_id="\u212bcme")

    @pytest.mark.parametrize("field", ID_FIELDS)
    @pytest.mark.parametrize("spelling", ["\u00c5lice", "\uff41lice", "\ufb01le", "stra\u00dfe"])
    def test_nfc_kept_exactly(self, field: str, spelling: str) -> None:
        """NFC ids are kept exactly as given: no case, width or compatibility folding."""
        assert getattr(make(field, spelling), field) == spelling

    def test_length_limit_exact(self) -> None:
        """At most 256 characters."""
        assert UserContext.new("a" * MAX_ID_LENGTH).user_id == "a" * MAX_ID_LENGTH
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a" * (MAX_ID_LENGTH + 1))
        assert info.value.rule == f"must be at most {MAX_ID_LENGTH} characters"

    def test_length_counted_as_given(self) -> None:
        """The limit counts the code points given: nothing is normalised first."""
        assert UserContext.new("\u00e9" * MAX_ID_LENGTH).user_id == "\u00e9" * MAX_ID_LENGTH
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("\u00e9" * (MAX_ID_LENGTH + 1))
        assert "at most" in info.value.rule

    def test_huge_value_refused_without_echo(self) -> None:
        """A 1 MiB id is refused, and the message quotes only a short prefix of it."""
        huge = "a" * (1 << 20)
        with pytest.raises(InvalidContextError) as info:
            UserContext.new(huge)
        message = str(info.value)
        assert len(message) < 300
        assert "a" * 17 not in message
        assert info.value.value_prefix == repr("a" * 16) + "..."


class TestErrorFields:
    def test_error_class(self) -> None:
        """InvalidContextError is a ContextError, an IsolationError and a ValueError."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("")
        assert isinstance(info.value, ContextError)
        assert isinstance(info.value, IsolationError)
        assert isinstance(info.value, ValueError)

    def test_fields_and_message(self) -> None:
        """The error names the field and the rule, and the message quotes both with a hint."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("alice", tenant_id="acme\u202e")
        err = info.value
        assert err.field == "tenant_id"
        assert err.rule == "must not contain characters of category Cf (found U+202E)"
        assert err.value_prefix == "'acme\\u202e'"
        assert str(err).startswith("invalid tenant_id: must not contain characters of category Cf")
        assert str(err).endswith("Validate input at the edge and refuse the request")

    @pytest.mark.parametrize("char", [c for chars in HOSTILE_CHARACTERS.values() for c in chars])
    def test_prefix_is_escaped_ascii(self, char: str) -> None:
        """The quoted prefix is ASCII with escapes: no bidi or control character reaches logs."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new(f"x{char}y")
        assert info.value.value_prefix.isascii()
        assert info.value.value_prefix.isprintable()
        assert char not in str(info.value)
        assert str(info.value).isprintable()

    def test_prefix_is_short(self) -> None:
        """Only the first 16 characters are quoted, with an ellipsis."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("\u202e" + "b" * 300)
        assert (
            info.value.value_prefix
            == repr("\u202e" + "b" * 15).replace("\u202e", "\\u202e") + "..."
        )


class TestRoles:
    def test_iterables_become_frozensets(self) -> None:
        """Roles from any iterable of str become a frozenset; duplicates collapse."""
        assert UserContext.new("a", roles=["x", "y", "x"]).roles == frozenset({"x", "y"})
        assert UserContext.new("a", roles=(r for r in ["x"])).roles == frozenset({"x"})
        assert UserContext.new("a", roles=frozenset()).roles == frozenset()
        assert UserContext.new("a", roles=[]).roles == frozenset()

    @pytest.mark.parametrize("value", ["admin", b"admin", 1, None])
    def test_single_str_or_non_iterable_refused(self, value: object) -> None:
        """A bare str (which would become its letters) or a non-iterable is refused."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", roles=value)  # type: ignore[arg-type]
        assert info.value.field == "roles"

    @pytest.mark.parametrize("role", ["", " admin", "ad\u200bmin", "a" * (MAX_ID_LENGTH + 1), 3])
    def test_each_role_checked(self, role: object) -> None:
        """Each role follows the id rules."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", roles=["reader", role])  # type: ignore[list-item]
        assert info.value.field == "roles"

    def test_roles_not_nfc_refused(self) -> None:
        """Roles follow the id rules: a role that is not NFC is refused, never rewritten."""
        assert UserContext.new("a", roles=["caf\u00e9"]).roles == frozenset({"caf\u00e9"})
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", roles=["caf\u0065\u0301"])
        assert info.value.field == "roles"

    def test_count_bounded(self) -> None:
        """At most MAX_ROLES roles."""
        roles = [f"r{i}" for i in range(MAX_ROLES)]
        assert len(UserContext.new("a", roles=roles).roles) == MAX_ROLES
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", roles=[*roles, "one-more"])
        assert "at most" in info.value.rule


class TestAttributes:
    def test_keys_and_values_checked(self) -> None:
        """Keys follow the id rules; values too, naming the key in the field."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", attributes={"": "v"})
        assert info.value.field == "attributes"
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", attributes={"plan": "gold\x00"})
        assert info.value.field == "attributes['plan']"
        with pytest.raises(InvalidContextError):
            UserContext.new("a", attributes={1: "v"})  # type: ignore[dict-item]
        with pytest.raises(InvalidContextError):
            UserContext.new("a", attributes={"k": 1})  # type: ignore[dict-item]

    def test_value_length_bound(self) -> None:
        """Values may be longer than ids, up to MAX_ATTRIBUTE_VALUE_LENGTH."""
        long_value = "v" * MAX_ATTRIBUTE_VALUE_LENGTH
        assert UserContext.new("a", attributes={"k": long_value}).attributes["k"] == long_value
        with pytest.raises(InvalidContextError):
            UserContext.new("a", attributes={"k": long_value + "v"})
        with pytest.raises(InvalidContextError):
            UserContext.new("a", attributes={"k" * (MAX_ID_LENGTH + 1): "v"})

    @pytest.mark.parametrize("value", [["k", "v"], "k=v", 1])
    def test_non_mapping_refused(self, value: object) -> None:
        """Attributes must be a mapping."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", attributes=value)  # type: ignore[arg-type]
        assert info.value.field == "attributes"

    def test_count_bounded(self) -> None:
        """At most MAX_ATTRIBUTES entries."""
        many = {f"k{i}": "v" for i in range(MAX_ATTRIBUTES)}
        assert len(UserContext.new("a", attributes=many).attributes) == MAX_ATTRIBUTES
        with pytest.raises(InvalidContextError):
            UserContext.new("a", attributes={**many, "extra": "v"})

    def test_none_is_empty(self) -> None:
        """No attributes is an empty mapping."""
        assert check_attributes(None) == {}
        assert UserContext.new("a", attributes=None).attributes == {}

    def test_not_nfc_refused(self) -> None:
        """Keys and values that are not NFC are refused, never rewritten."""
        ctx = UserContext.new("a", attributes={"caf\u00e9": "cr\u00e8me"})
        assert dict(ctx.attributes) == {"caf\u00e9": "cr\u00e8me"}
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", attributes={"caf\u0065\u0301": "1"})
        assert "NFC" in info.value.rule
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("a", attributes={"k": "cre\u0300me"})
        assert info.value.field == "attributes['k']"


class TestProperties:
    @given(valid_context_kwargs())
    def test_valid_always_construct(self, kwargs: dict[str, Any]) -> None:
        """Everything the valid strategy draws is accepted, and kept exactly as given."""
        ctx = UserContext.new(**kwargs)
        assert ctx.user_id == kwargs["user_id"]
        assert ctx.tenant_id == kwargs.get("tenant_id")
        assert ctx.roles == frozenset(kwargs.get("roles", ()))
        assert dict(ctx.attributes) == kwargs.get("attributes", {})

    @given(invalid_context_kwargs())
    def test_invalid_never_construct(self, kwargs: dict[str, Any]) -> None:
        """Everything the invalid strategy draws is refused with InvalidContextError."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new(**kwargs)
        assert len(str(info.value)) < 400

    @given(hostile_ids(), st.sampled_from(ID_FIELDS))
    def test_hostile_ids_refused(self, value: object, field: str) -> None:
        """Every hostile id is refused as user id and as tenant id (None is a valid tenant)."""
        if field == "tenant_id" and value is None:
            return
        with pytest.raises(InvalidContextError):
            make(field, value)

    @pytest.mark.parametrize("hostile_class", sorted(HOSTILE_CHARACTERS))
    @given(data=st.data())
    def test_every_hostile_class_refused(self, hostile_class: str, data: st.DataObject) -> None:
        """Each class of HOSTILE_CHARACTERS is refused wherever it is planted, in every field."""
        char = data.draw(st.sampled_from(HOSTILE_CHARACTERS[hostile_class]))
        prefix = data.draw(st.text("abc", max_size=3))
        suffix = data.draw(st.text("xyz", max_size=3))
        value = prefix + char + suffix
        for kwargs in (
            {"user_id": value},
            {"user_id": "a", "tenant_id": value},
            {"user_id": "a", "roles": [value]},
            {"user_id": "a", "attributes": {value: "v"}},
            {"user_id": "a", "attributes": {"k": value}},
        ):
            with pytest.raises(InvalidContextError):
                UserContext.new(**kwargs)  # type: ignore[arg-type]


class TestOwnerValue:
    @pytest.mark.parametrize(("text", "number"), [("0", 0), ("123", 123), ("-7", -7)])
    def test_canonical_integers_convert(self, text: str, number: int) -> None:
        """An integer owner column takes the id's one canonical decimal text."""
        assert owner_value("user_id", text, int) == number

    @pytest.mark.parametrize(
        "text", ["0123", "+123", "1_23", "\uff11\uff12", "\u0661", "12a", "-0"]
    )
    def test_other_integer_spellings_refused(self, text: str) -> None:
        """Leading zeros, signs, separators and non-ASCII digits would be the same integer."""
        with pytest.raises(InvalidContextError) as info:
            owner_value("user_id", text, int)
        assert info.value.field == "user_id"
        assert "canonical" in info.value.rule

    def test_uuids(self) -> None:
        """A UUID owner column takes the lowercase hyphenated form only."""
        value = uuid.uuid4()
        assert owner_value("tenant_id", str(value), uuid.UUID) == value
        for spelling in (str(value).upper(), value.hex, f"{{{value}}}", f"urn:uuid:{value}"):
            with pytest.raises(InvalidContextError):
                owner_value("tenant_id", spelling, uuid.UUID)

    def test_text_columns_take_the_id_as_is(self) -> None:
        """A str column (or any other type) takes the id unchanged."""
        assert owner_value("user_id", "\uff41lice", str) == "\uff41lice"
