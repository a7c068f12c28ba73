"""``Principal``: the identity of a user, ``(tenant_id, user_id)``.

One definition for the whole library. A principal is a tuple (so unpacking,
dict keys and equality with a plain ``(tenant_id, user_id)`` pair keep
working) whose ids passed the rules of a :class:`~isolation.UserContext`'s
(:func:`~isolation.context._validate.check_text`): it is canonical, and two
principals are equal exactly when they are the same user.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, final

from isolation._redact import redact, redact_tenant_repr
from isolation.context._validate import check_text

__all__ = ["Principal", "trusted_principal"]


_new = tuple.__new__


class _Fields(NamedTuple):
    # The fields; Principal adds the checks (a NamedTuple cannot override __new__).
    tenant_id: str | None
    user_id: str


@final
class Principal(_Fields):
    """Who a user is: ``Principal(tenant_id, user_id)``, immutable, validated, hashable.

    The same user id in two tenants is two principals. Pass ``tenant_id=None``
    for a single-tenant service: the tenant is never defaulted. A
    :class:`~isolation.UserContext` gives its own as :attr:`UserContext.principal
    <isolation.UserContext.principal>`. A principal is a 2-tuple, equal to (and
    hashing like) the plain pair ``(tenant_id, user_id)``.

    Its ``repr`` shows the ids through the installed redactor
    (:func:`isolation.logging.set_redactor`), like a context's.

    Attributes:
        tenant_id: The tenant, or ``None`` for a single-tenant service.
        user_id: The user's id within its tenant.

    Raises:
        InvalidContextError: An id breaks a rule of ``UserContext`` (not a
            ``str``, empty, too long, padded, a control, bidi or zero-width
            character, not already NFC); the error names the field and the rule.
    """

    __slots__ = ()

    def __new__(cls, tenant_id: str | None, user_id: str) -> Principal:
        return _new(
            cls,
            (
                None if tenant_id is None else check_text("tenant_id", tenant_id),
                check_text("user_id", user_id),
            ),
        )

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Principal:  # type: ignore[override]
        # namedtuple's _make (and _replace, which calls it) would skip the checks.
        # (mypy wants the generic signature of NamedTuple._make; the class is final.)
        tenant_id, user_id = iterable
        return cls(tenant_id, user_id)

    def __repr__(self) -> str:
        tenant = redact_tenant_repr(self.tenant_id)
        return f"isolation.Principal(tenant_id={tenant}, user_id={redact(self.user_id)!r})"


def trusted_principal(tenant_id: str | None, user_id: str) -> Principal:
    """A principal of ids that already passed the checks (a context's own): no re-check."""
    return _new(Principal, (tenant_id, user_id))


Principal.__module__ = "isolation"
