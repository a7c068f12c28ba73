"""``UserContext``: who is asking, and until when.

A context is immutable, validated at construction, and there is no other way to
make one: ``copy`` returns the same object, pickling is refused (use
:mod:`isolation.tokens` to carry a context across processes), and
``attrs.evolve`` goes through the same validating constructor.
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar, final

import attrs

from isolation import _clock
from isolation._errors import InvalidContextError, UsageError
from isolation._redact import redact, redact_tenant_repr
from isolation.context._principal import Principal
from isolation.context._validate import (
    check_attributes,
    check_roles,
    check_text,
    check_timestamp,
    check_ttl,
)

__all__ = [
    "UNSET",
    "Attributes",
    "Principal",
    "Unset",
    "UserContext",
    "deprecated",
    "new_request_id",
    "principal_of",
]


def new_request_id() -> str:
    """Return 128 random bits as 32 lowercase hex characters (also a valid trace id)."""
    return os.urandom(16).hex()


@final
class Attributes(Mapping[str, str]):
    """A read-only, hashable mapping of ``str`` to ``str``, copied at construction."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data) if data else {}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attributes):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attributes({self._data!r})"

    def __copy__(self) -> Attributes:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Attributes:
        return self


_NO_ATTRIBUTES = Attributes()


def _user_id(value: Any) -> str:
    return check_text("user_id", value)


def _tenant_id(value: Any) -> str | None:
    return None if value is None else check_text("tenant_id", value)


def _roles(value: Any) -> frozenset[str]:
    if type(value) is frozenset and not value:
        return value
    return check_roles(value)


def _attributes(value: Any) -> Attributes:
    if value is None or value is _NO_ATTRIBUTES:
        return _NO_ATTRIBUTES
    # An `Attributes` is checked like any mapping: anyone can build one unchecked.
    checked = check_attributes(value)
    return Attributes(checked) if checked else _NO_ATTRIBUTES


def _issued_at(value: Any) -> float:
    return check_timestamp("issued_at", value)


def _expires_at(value: Any) -> float | None:
    return None if value is None else check_timestamp("expires_at", value)


_EMPTY_ROLES: frozenset[str] = frozenset()
_set = object.__setattr__
_principal = tuple.__new__


@final
@attrs.frozen(kw_only=True, weakref_slot=True, repr=False)
class UserContext:
    """Who is asking, and until when: immutable, validated, hashable.

    The identity of a user is the pair ``(tenant_id, user_id)``, available as
    :attr:`principal`: the same user id in two tenants is two users everywhere
    in the library. ``request_id`` is always generated (128 random bits) and is
    never restored from outside.

    Build one with :meth:`new`; the keyword constructor validates the same way.

    Raises:
        InvalidContextError: A field broke a rule; the error names the field
            and the rule.
    """

    user_id: str = attrs.field(converter=_user_id)
    tenant_id: str | None = attrs.field(default=None, converter=_tenant_id)
    roles: frozenset[str] = attrs.field(default=_EMPTY_ROLES, converter=_roles)
    attributes: Attributes = attrs.field(default=_NO_ATTRIBUTES, converter=_attributes)
    issued_at: float = attrs.field(factory=_clock._now, converter=_issued_at, eq=False)
    expires_at: float | None = attrs.field(default=None, converter=_expires_at)
    request_id: str = attrs.field(init=False, factory=new_request_id)

    def __attrs_post_init__(self) -> None:
        if self.expires_at is not None and self.expires_at < self.issued_at:
            raise InvalidContextError(
                field="expires_at",
                rule="must not be before issued_at",
                value_prefix=repr(self.expires_at),
            )

    @classmethod
    def new(
        cls,
        user_id: str,
        *,
        tenant_id: str | None = None,
        ttl: float | None = None,
        roles: Iterable[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> UserContext:
        """Make a context for ``user_id``, optionally expiring ``ttl`` seconds from now.

        Args:
            user_id: The user's id within its tenant.
            tenant_id: The tenant, or ``None`` for a single-tenant service.
            ttl: Seconds until the context expires: finite and positive.
            roles: The user's roles.
            attributes: Extra ``str`` to ``str`` facts, copied.
        """
        # The same checks as the keyword constructor, without its generic
        # machinery: this is the per-request hot path.
        issued = _clock._now()
        self = object.__new__(cls)
        _set(self, "user_id", check_text("user_id", user_id))
        _set(self, "tenant_id", None if tenant_id is None else check_text("tenant_id", tenant_id))
        _set(self, "roles", _EMPTY_ROLES if roles == () else check_roles(roles))
        _set(self, "attributes", _attributes(attributes))
        _set(self, "issued_at", issued)
        _set(self, "expires_at", None if ttl is None else issued + check_ttl(ttl))
        _set(self, "request_id", os.urandom(16).hex())
        return self

    @property
    def principal(self) -> Principal:
        """The identity of the user: an :class:`~isolation.Principal`, ``(tenant_id, user_id)``."""
        # The ids were checked when this context was made: no second check.
        return _principal(Principal, (self.tenant_id, self.user_id))

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (by the library's clock)."""
        return self.expires_at is not None and _clock._now() >= self.expires_at

    def remaining(self) -> float:
        """Seconds until the deadline, clamped at 0; ``math.inf`` without one."""
        if self.expires_at is None:
            return math.inf
        return max(0.0, self.expires_at - _clock._now())

    def __repr__(self) -> str:
        tenant = redact_tenant_repr(self.tenant_id)
        return (
            f"isolation.UserContext(user_id={redact(self.user_id)!r}, tenant_id={tenant}, "
            f"request_id={self.request_id!r}, roles={sorted(self.roles)!r}, "
            f"expires_at={self.expires_at!r})"
        )

    def __copy__(self) -> UserContext:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> UserContext:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise UsageError(
            "a UserContext cannot be pickled: it would restore a context without "
            "validation and with an old request_id",
            hint="Carry it across processes with isolation.tokens.dumps() and loads()",
        )

    def __reduce__(self) -> NoReturn:
        self.__reduce_ex__(None)


_F = TypeVar("_F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from typing_extensions import deprecated
else:

    def deprecated(message: str) -> Callable[[_F], _F]:
        """``typing_extensions.deprecated`` for type checkers only: mark a deprecated overload.

        At run time the overload is never called; :func:`principal_of` warns.
        """
        return lambda function: function


class Unset(enum.Enum):
    """The type of :data:`UNSET`: a keyword the caller did not pass."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET
"""The default of a deprecated ``tenant_id=`` keyword: "not given" (``None`` is a tenant)."""

_NAME_IT = (
    "Name the user with its tenant: isolation.Principal(tenant_id, user_id) "
    "(tenant_id=None for a single-tenant service), or ctx.principal"
)


def principal_of(to: object, tenant_id: str | Unset | None, method: str) -> Principal:
    """The principal a public call names: a ``Principal``, or a context's.

    ``to`` may also be a user id ``str`` when the caller passes ``tenant_id=``
    explicitly (``None`` included): the form of one earlier release, accepted
    with a ``DeprecationWarning``. A user id alone is refused, never given a
    default tenant: in a multi-tenant service that would be another user.

    Raises:
        UsageError: ``to`` is neither (a plain tuple too: build a ``Principal``),
            or a user id came without ``tenant_id=``, or with a non-``str`` one.
        InvalidContextError: The deprecated form's ids break a rule of ``UserContext``.
    """
    if isinstance(to, Principal | UserContext):  # both final: no subclass
        if tenant_id is not UNSET:
            raise UsageError(
                f"{method}() takes tenant_id= only with a user id (deprecated); "
                f"a {type(to).__name__} already names its tenant",
                hint="Drop tenant_id=",
            )
        return to if isinstance(to, Principal) else to.principal
    if not isinstance(to, str):
        raise UsageError(
            f"{method}() takes an isolation.Principal or an isolation.UserContext, "
            f"got {type(to).__name__}",
            hint=_NAME_IT,
        )
    if tenant_id is UNSET:
        raise UsageError(
            f"{method}() takes an isolation.Principal or an isolation.UserContext, not a "
            "user id alone: the tenant is never assumed",
            hint=_NAME_IT,
        )
    warnings.warn(
        f"{method}(user_id, tenant_id=...) is deprecated and will be removed in the next "
        "release; pass isolation.Principal(tenant_id, user_id) or ctx.principal",
        DeprecationWarning,
        stacklevel=3,
    )
    if tenant_id is not None and type(tenant_id) is not str:
        raise UsageError(
            f"{method}() takes a tenant_id str or None, got {type(tenant_id).__name__}",
            hint=_NAME_IT,
        )
    return Principal(tenant_id, to)


UserContext.__module__ = "isolation"
Attributes.__module__ = "isolation"
