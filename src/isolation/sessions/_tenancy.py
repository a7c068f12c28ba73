"""Tenant filtering in the ORM: the rules behind :meth:`SessionManager.protect`.

The ORM line of defence works on any database. For every protected model:

* ORM selects, updates and deletes get ``with_loader_criteria`` comparing the
  owner columns with the **current** principal. The criteria are built once
  per model with bound parameters whose value is read from the bound scope at
  execution time, so the compiled statement is cached once for every user and
  still carries each user's own values;
* new rows are stamped with the principal; flushing a row owned by another
  principal, or changing a row's owner, raises
  :class:`~isolation.CrossContextAccessError` before the flush sends anything;
* a model protected by ``user_column`` alone is refused under a context that
  has a ``tenant_id`` (alice of one tenant would read alice of another), and a
  model with a ``tenant_column`` is refused under a context without one.

Raw ``text()`` SQL, Core statements on the bare ``Table`` and ORM bulk
``insert()`` are not rewritten: the first two are documented limits (use
row-level security on PostgreSQL), the last is refused.
"""

from __future__ import annotations

from typing import Any, final

from sqlalchemy import bindparam, inspect
from sqlalchemy.orm import ColumnProperty, ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.orm.attributes import InstrumentedAttribute

from isolation._errors import (
    ConfigurationError,
    CrossContextAccessError,
    NoContextError,
    UsageError,
)
from isolation._redact import redact, redact_principal
from isolation.context import _scope
from isolation.context._validate import owner_value

__all__ = ["Rule", "Tenancy"]

Principal = tuple[str | None, str]


def _bound_user_id() -> str:
    scope = _scope._current.get()
    if scope is None:
        raise NoContextError("a protected model was queried with no isolation scope bound")
    return scope._ctx.user_id


def _bound_tenant_id() -> str | None:
    scope = _scope._current.get()
    if scope is None:
        raise NoContextError("a protected model was queried with no isolation scope bound")
    return scope._ctx.tenant_id


def _python_type(model: type[Any], key: str) -> type:
    """The Python type of an owner column: ``int`` and ``uuid.UUID`` convert ids."""
    try:
        python_type = inspect(model).columns[key].type.python_type
    except (KeyError, NotImplementedError):
        return str
    return python_type if isinstance(python_type, type) else str


def _column_key(model: type[Any], column: object, parameter: str) -> str:
    mapper = inspect(model, raiseerr=False)
    if mapper is None or not hasattr(mapper, "attrs"):
        raise ConfigurationError(f"protect() takes a mapped ORM class, got {model!r}")
    if isinstance(column, InstrumentedAttribute):
        key = column.key
    elif isinstance(column, str):
        key = column
    else:
        raise ConfigurationError(
            f"protect({parameter}=...) takes a column name or a mapped attribute, "
            f"got {type(column).__name__}"
        )
    prop = mapper.attrs.get(key)
    if not isinstance(prop, ColumnProperty):
        raise ConfigurationError(
            f"protect({parameter}={key!r}): {model.__name__} has no mapped column {key!r}"
        )
    return key


@final
class Rule:
    """The owner columns of one protected model."""

    __slots__ = ("model", "options", "tenant_key", "tenant_type", "user_key", "user_type")

    def __init__(self, model: type[Any], user_key: str | None, tenant_key: str | None) -> None:
        self.model = model
        self.user_key = user_key
        self.tenant_key = tenant_key
        # Ids reach a typed owner column only in that type's canonical text
        # (owner_value): "123" and "0123" must not be one owner to the database.
        self.user_type = str if user_key is None else _python_type(model, user_key)
        self.tenant_type = str if tenant_key is None else _python_type(model, tenant_key)
        clauses = []
        name = model.__name__.lower()
        if user_key is not None:
            bound_user: Any = _bound_user_id if self.user_type is str else self._bound_user
            clauses.append(
                getattr(model, user_key)
                == bindparam(f"isolation_{name}_user", callable_=bound_user, unique=True)
            )
        if tenant_key is not None:
            bound_tenant: Any = _bound_tenant_id if self.tenant_type is str else self._bound_tenant
            clauses.append(
                getattr(model, tenant_key)
                == bindparam(f"isolation_{name}_tenant", callable_=bound_tenant, unique=True)
            )
        criteria = clauses[0] if len(clauses) == 1 else clauses[0] & clauses[1]
        self.options = with_loader_criteria(model, criteria, include_aliases=True)

    def _bound_user(self) -> object:
        return owner_value("user_id", _bound_user_id(), self.user_type)

    def _bound_tenant(self) -> object:
        tenant = _bound_tenant_id()
        return None if tenant is None else owner_value("tenant_id", tenant, self.tenant_type)

    def values_of(self, principal: Principal) -> tuple[object, object]:
        """``(tenant, user)`` of ``principal`` as the owner columns hold them."""
        tenant, user = principal
        if self.tenant_type is not str and tenant is not None:
            tenant = owner_value("tenant_id", tenant, self.tenant_type)  # type: ignore[assignment]
        if self.user_type is not str:
            user = owner_value("user_id", user, self.user_type)  # type: ignore[assignment]
        return tenant, user

    def refusal(self, principal: Principal) -> Exception | None:
        """Why this rule cannot serve ``principal`` at all, or ``None``."""
        tenant = principal[0]
        if self.tenant_key is None and tenant is not None:
            return ConfigurationError(
                f"{self.model.__name__} is protected by its user column alone, but the bound "
                f"context of {redact_principal(principal)} has a tenant: the same user id in "
                "another tenant would see these rows",
                hint=f"Protect {self.model.__name__} with tenant_column= as well",
            )
        if self.tenant_key is not None and tenant is None:
            return ConfigurationError(
                f"{self.model.__name__} is protected by a tenant column, but the bound context "
                f"of {redact_principal(principal)} has no tenant_id",
                hint="Bind a context with tenant_id=... to use this model",
            )
        return None

    def owner_of(self, obj: object, *, committed: bool) -> Principal:
        """The ``(tenant, user)`` an instance belongs to (its loaded or its new values)."""
        state = inspect(obj)
        values: list[Any] = []
        for key in (self.tenant_key, self.user_key):
            if key is None:
                values.append(None)
                continue
            current = state.dict.get(key) if key in state.dict else getattr(obj, key)
            if committed:
                history = state.attrs[key].history
                if history.deleted:
                    current = history.deleted[0]
            values.append(current)
        return (values[0], values[1])


@final
class Tenancy:
    """The protected models of one manager, and the two hooks that enforce them."""

    __slots__ = (
        "_lookup",
        "any_tenant",
        "any_typed",
        "any_user_only",
        "options",
        "rules",
        "tables",
    )

    def __init__(self) -> None:
        self.rules: dict[type[Any], Rule] = {}
        # Whether some rule refuses contexts with a tenant / without one: only then
        # does a statement pay for looking up the models it touches.
        self.any_user_only = False
        # Whether some rule has an int or UUID owner column (ids checked per statement).
        self.any_typed = False
        self.any_tenant = False
        self._lookup: dict[type[Any], Rule | None] = {}
        self.options: tuple[Any, ...] = ()
        self.tables: set[Any] = set()

    def protect(
        self, model: type[Any], user_column: object | None, tenant_column: object | None
    ) -> Rule:
        """Add (or replace) the rule of ``model``."""
        if user_column is None and tenant_column is None:
            raise ConfigurationError(
                f"protect({getattr(model, '__name__', model)!r}) needs user_column=, "
                "tenant_column= or both"
            )
        user_key = None if user_column is None else _column_key(model, user_column, "user_column")
        tenant_key = (
            None if tenant_column is None else _column_key(model, tenant_column, "tenant_column")
        )
        rule = Rule(model, user_key, tenant_key)
        self.rules[model] = rule
        self._lookup.clear()
        self.options = tuple(r.options for r in self.rules.values())
        self.any_user_only = any(r.tenant_key is None for r in self.rules.values())
        self.any_typed = any(
            r.user_type is not str or r.tenant_type is not str for r in self.rules.values()
        )
        self.any_tenant = any(r.tenant_key is not None for r in self.rules.values())
        self.tables.update(inspect(model).tables)
        return rule

    def rule_for(self, cls: type[Any]) -> Rule | None:
        """The rule that covers instances of ``cls`` (its own or a base class's)."""
        try:
            return self._lookup[cls]
        except KeyError:
            pass
        found = None
        for base in cls.__mro__:
            found = self.rules.get(base)
            if found is not None:
                break
        self._lookup[cls] = found
        return found

    def apply(self, state: ORMExecuteState, principal: Principal) -> None:
        """``do_orm_execute``: add the criteria to ORM selects, updates and deletes."""
        if state.is_select or state.is_update or state.is_delete:
            if state.is_column_load or state.is_relationship_load:
                # Refreshes of rows already loaded, and relationship loads that carry
                # the criteria of the statement that loaded their parent.
                return
            if self.any_typed or (self.any_tenant if principal[0] is None else self.any_user_only):
                for mapper in state.all_mappers:
                    rule = self.rule_for(mapper.class_)
                    if rule is not None:
                        refused = rule.refusal(principal)
                        if refused is not None:
                            raise refused
                        # An id that is not its owner column's canonical text is refused
                        # here, typed, before SQLAlchemy would wrap it in a StatementError.
                        rule.values_of(principal)
            state.statement = state.statement.options(*self.options)
        elif state.is_insert:
            table = getattr(state.statement, "table", None)
            if table is not None and table in self.tables:
                raise UsageError(
                    f"an ORM bulk insert() into the protected table {table.name!r} is not "
                    "stamped with the owner",
                    hint="Add the objects with session.add() so each row is stamped and checked",
                )

    def check_flush(self, session: Session, principal: Principal) -> None:
        """``before_flush``: stamp new rows, refuse foreign rows and owner changes."""
        for obj in session.new:
            rule = self.rule_for(type(obj))
            if rule is None:
                continue
            refused = rule.refusal(principal)
            if refused is not None:
                raise refused
            tenant, user = rule.values_of(principal)
            for key, mine in ((rule.user_key, user), (rule.tenant_key, tenant)):
                if key is None:
                    continue
                value = getattr(obj, key)
                if value is None:
                    setattr(obj, key, mine)
                elif value != mine:
                    raise self._foreign(rule, "insert", principal, key, value)
        for collection, verb in ((session.dirty, "update"), (session.deleted, "delete")):
            for obj in collection:
                rule = self.rule_for(type(obj))
                if rule is None:
                    continue
                refused = rule.refusal(principal)
                if refused is not None:
                    raise refused
                tenant, user = rule.values_of(principal)
                for committed in (True, False):
                    owner = rule.owner_of(obj, committed=committed)
                    for key, index, mine in (
                        (rule.tenant_key, 0, tenant),
                        (rule.user_key, 1, user),
                    ):
                        if key is not None and owner[index] != mine:
                            raise self._foreign(
                                rule,
                                verb if committed else "change the owner of",
                                principal,
                                key,
                                owner[index],
                            )

    @staticmethod
    def _foreign(
        rule: Rule, verb: str, principal: Principal, key: str, value: object
    ) -> CrossContextAccessError:
        shown = redact(value) if isinstance(value, str) else repr(value)
        return CrossContextAccessError(
            f"refused to {verb} a {rule.model.__name__} row with {key}={shown!r} under the "
            f"context of {redact_principal(principal)}",
            hint="A user may only write rows it owns; the owner columns are stamped for you",
        )
