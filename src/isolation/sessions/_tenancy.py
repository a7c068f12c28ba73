"""Tenant filtering in the ORM: the rules behind :meth:`SessionManager.protect`.

The ORM line of defence works on any database. For every protected model:

* every ORM select, update and delete, and every ORM insert into an
  unprotected table that reads a protected model (``from_select``, a scalar
  subquery), gets ``with_loader_criteria`` comparing
  the owner columns with the **current** principal, relationship loads
  (``select``, ``selectin``, ``subquery``; ``joined`` is part of its parent's
  statement) and column loads (``refresh()``, expired attributes) included: a
  parent that was never loaded by a filtered statement (``merge(load=False)``,
  ``make_transient_to_detached``) still reaches only the principal's rows. The
  criteria are built once per model with bound parameters whose value is read
  from the bound scope at execution time, so the compiled statement is cached
  once for every user and still carries each user's own values;
* every row the ORM turns into an object is checked again as it loads (the
  instance ``load`` and ``refresh`` events): a row of another principal,
  reached through a path the criteria do not cover (``from_statement(text())``),
  raises :class:`~isolation.CrossContextAccessError` instead of reaching code;
  a row of ``from_statement()`` or of an entity aliased to a text or Core
  subquery without the owner columns raises :class:`~isolation.UsageError`,
  and the objects they load are flushed only after their rows are checked in
  the database (their owner column may be forged);
* new rows are stamped with the principal, by a flush and by
  ``bulk_insert_mappings`` / ``bulk_save_objects`` alike; writing a row owned
  by another principal, or setting an owner column to another principal
  (``update().values(owner=...)``, a bulk mapping, a flush) raises
  :class:`~isolation.CrossContextAccessError` before anything is sent;
* writes addressed by primary key (ORM bulk UPDATE by primary key,
  ``bulk_update_mappings``, ``bulk_save_objects``, a flush of an object the
  session did not load or create) first check in the database, under the
  criteria, that every key is one of the principal's rows;
* a model protected by ``user_column`` alone is refused under a context that
  has a ``tenant_id`` (alice of one tenant would read alice of another), and a
  model with a ``tenant_column`` is refused under a context without one.

* every statement is checked as it would be rendered (:mod:`._coverage`): a
  SELECT in it that reads a protected table without the criteria gets them, or
  the statement is refused with :class:`~isolation.UsageError`; so is a Core
  UPDATE or DELETE of a protected table;
* owner columns hold ``str``, ``int`` or ``uuid.UUID`` values, or any type
  given with an :class:`OwnerColumn` converter: the context's ids are converted
  once per session for the criteria, stamps and comparisons.

Raw ``text()`` SQL is not rewritten (documented limit: use row-level security
on PostgreSQL); ORM bulk ``insert()`` is refused.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, final

import attrs
from sqlalchemy import bindparam, event, inspect, select, tuple_
from sqlalchemy.orm import (
    ColumnProperty,
    Mapper,
    ORMExecuteState,
    Session,
    with_loader_criteria,
)
from sqlalchemy.orm.attributes import InstrumentedAttribute
from sqlalchemy.orm.context import FromStatement
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.sql.selectable import Alias, Join, TableClause
from sqlalchemy.sql.util import find_tables
from sqlalchemy.types import TypeDecorator

from isolation._compat import (
    deannotate,
    from_obj,
    multi_values,
    of_type,
    parent_entity,
    raw_columns,
    set_clause,
    setup_joins,
)
from isolation._errors import (
    ConfigurationError,
    CrossContextAccessError,
    InvalidContextError,
    NoContextError,
    UsageError,
)
from isolation._redact import redact, redact_principal
from isolation.context._interface import bound_scope
from isolation.context._principal import Principal
from isolation.context._validate import owner_refusal, owner_value
from isolation.sessions._coverage import Coverage, Guard

__all__ = ["OwnerColumn", "Rule", "Tenancy", "TenantSession"]

# Key of InstanceState.info: the object entered a protected session without being
# loaded by it (add() of a detached object, merge(load=False)), so the rows its
# flush would write are checked in the database first.
_UNVERIFIED: Final = "isolation.unverified"
# Execution option set on ORM selects whose rows the criteria may not cover
# (from_statement(), an entity aliased to a text or Core subquery): what they
# load must carry its owner columns, and counts as unverified.
_UNCOVERED: Final = "isolation_uncovered"
# Primary keys per ownership query (SQLite allows 32766 parameters, old builds 999).
_BATCH: Final = 500
_UNLOADED: Final = object()
# Models whose instance events are installed (once, whichever manager protects them).
_LISTENED: weakref.WeakSet[type[Any]] = weakref.WeakSet()


def _bound_user_id() -> str:
    scope = bound_scope()
    if scope is None:
        raise NoContextError("a protected model was queried with no isolation scope bound")
    return scope.context.user_id


def _bound_tenant_id() -> str | None:
    scope = bound_scope()
    if scope is None:
        raise NoContextError("a protected model was queried with no isolation scope bound")
    return scope.context.tenant_id


def _python_type(model: type[Any], key: str) -> type | None:
    """The Python type of an owner column's values, or ``None`` when its type does not say."""
    try:
        column_type = inspect(model).columns[key].type
        python_type = column_type.python_type
        # A TypeDecorator that does not say (SQLModel's AutoString says object): its impl's.
        while python_type is object and isinstance(column_type, TypeDecorator):
            column_type = column_type.impl_instance
            python_type = column_type.python_type
    except (KeyError, NotImplementedError):
        return None
    return python_type if isinstance(python_type, type) and python_type is not object else None


def _type_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _column_text(model: type[Any], key: str, python_type: type | None) -> str:
    """``Item.owner_id (Uuid, values uuid.UUID)``: the owner column as messages name it."""
    column_type = getattr(inspect(model).attrs[key].columns[0], "type", None)
    held = "" if python_type is None else f", values {_type_name(python_type)}"
    return f"{model.__name__}.{key} ({type(column_type).__name__}{held})"


Converter = Callable[[str], object]


@final
@attrs.frozen
class OwnerColumn:
    """An owner column given to :meth:`SessionManager.protect` with its ``converter``.

    ``converter`` turns the bound context's id (a ``str``) into the value the
    column holds, for a column type whose values are neither ``str``, ``int``
    nor ``uuid.UUID`` (those three are converted without one). It must map one
    id to one value and back (``"7"`` and ``"07"`` must not both give ``7``):
    two ids of the application would otherwise be one owner in the database.
    An id it refuses (any exception) or converts to a value of another type
    than the column's is refused with :class:`~isolation.InvalidContextError`.
    """

    column: object
    converter: Converter = attrs.field(validator=attrs.validators.is_callable())


def _owner_key(model: type[Any], given: object, parameter: str) -> tuple[str, Converter | None]:
    if isinstance(given, OwnerColumn):
        return _column_key(model, given.column, parameter), given.converter
    return _column_key(model, given, parameter), None


def _folding(model: type[Any], key: str) -> str | None:
    """Why the owner column ``key`` compares case- or accent-insensitively, or ``None``.

    The criteria compare with SQL ``=``: under such a collation ``"0oa1AbC"`` and
    ``"0oa1abc"`` (two case-sensitive OIDC subjects, two principals here) would be
    one owner to the database. Only what the model declares can be seen here; a
    database's or server's default collation cannot (see the docs' limit).
    """
    for column in inspect(model).attrs[key].columns:
        column_type = getattr(column, "type", None)
        if type(column_type).__name__.lower() == "citext":
            return "its type is citext"
        collation = str(getattr(column_type, "collation", None) or "")
        folded = collation.lower()
        parts = set(folded.replace("-", "_").split("_"))
        if folded in {"nocase", "rtrim"} or "ci" in parts or "ai" in parts:
            return f"its collation {collation!r} folds case, accents or trailing spaces"
    return None


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


def _shown(value: object) -> str:
    """A value for a message, its type visible (``UUID('...')`` is not ``'...'``), redacted."""
    if isinstance(value, str) or value is None:
        return repr(redact(value)) if isinstance(value, str) else "None"
    return f"{type(value).__name__}({redact(str(value))!r})"


@final
class Rule:
    """The owner columns of one protected model."""

    __slots__ = (
        "bound",
        "columns",
        "converters",
        "criteria",
        "last",
        "lenient",
        "model",
        "names",
        "options",
        "owners",
        "pk_keys",
        "tenant_key",
        "typed",
        "user_key",
    )

    def __init__(
        self,
        model: type[Any],
        user_key: str | None,
        tenant_key: str | None,
        converters: dict[str, Converter] | None = None,
    ) -> None:
        self.model = model
        self.user_key = user_key
        self.tenant_key = tenant_key
        for key in (user_key, tenant_key):
            folding = None if key is None else _folding(model, key)
            if folding is not None:
                raise ConfigurationError(
                    f"protect({model.__name__}): the owner column {key!r} compares ids "
                    f"loosely ({folding}), so two principals could be one owner",
                    hint="Give owner columns a binary collation (the type's default)",
                )
        given = converters or {}
        # Per owner index (0 tenant, 1 user): how the context's id becomes the
        # column's value (None: the id as it is), and the int or UUID type whose
        # canonical text a str given for the column may be (owner_value): "123"
        # and "0123" must not be one owner to the database.
        converted: list[Converter | None] = []
        lenient: list[type | None] = []
        for field, key in (("tenant_id", tenant_key), ("user_id", user_key)):
            python_type = None if key is None else _python_type(model, key)
            custom = None if key is None else given.get(key)
            converted.append(
                None if key is None else self._converter(field, key, python_type, custom)
            )
            builtin = custom is None and python_type in (int, uuid.UUID)
            lenient.append(python_type if builtin else None)
        self.converters = (converted[0], converted[1])
        self.lenient = (lenient[0], lenient[1])
        self.typed = any(c is not None for c in self.converters)
        self.last: tuple[Principal, tuple[object, object]] | None = None
        mapper: Mapper[Any] = inspect(model)
        # (attribute key, index in the principal) of each owner column.
        self.owners: tuple[tuple[str, int], ...] = tuple(
            (key, index) for key, index in ((tenant_key, 0), (user_key, 1)) if key is not None
        )
        # The owner columns as update().values() names them: Column objects and names.
        self.columns: dict[object, str] = {}
        # The execute parameter names that set an owner column (attribute key, column
        # key and name, the multi-table "table_column" bind name) -> attribute key.
        self.names: dict[str, str] = {}
        for key, _ in self.owners:
            prop = mapper.attrs[key]
            assert isinstance(prop, ColumnProperty)
            self.columns[key] = key
            self.names[key] = key
            for column in prop.columns:
                self.columns[column] = key
                self.columns[getattr(column, "key", key)] = key
                for name in (getattr(column, "key", None), getattr(column, "name", None)):
                    if isinstance(name, str):
                        self.names[name] = key
                        table = getattr(column, "table", None)
                        if table is not None:
                            self.names[f"{table.name}_{name}"] = key
        self.pk_keys: tuple[str, ...] = tuple(
            mapper.get_property_by_column(column).key for column in mapper.primary_key
        )
        clauses = []
        name = model.__name__.lower()
        # The callables of the criteria's parameters, per attribute key: what the
        # coverage check recognises the criteria by in a compiled statement.
        self.bound: dict[str, Callable[[], object]] = {}
        if user_key is not None:
            bound_user: Any = _bound_user_id if self.converters[1] is None else self._bound_user
            self.bound[user_key] = bound_user
            clauses.append(
                getattr(model, user_key)
                == bindparam(f"isolation_{name}_user", callable_=bound_user, unique=True)
            )
        if tenant_key is not None:
            bound_tenant: Any = (
                _bound_tenant_id if self.converters[0] is None else self._bound_tenant
            )
            self.bound[tenant_key] = bound_tenant
            clauses.append(
                getattr(model, tenant_key)
                == bindparam(f"isolation_{name}_tenant", callable_=bound_tenant, unique=True)
            )
        criteria = clauses[0] if len(clauses) == 1 else clauses[0] & clauses[1]
        self.criteria = criteria
        self.options = with_loader_criteria(model, criteria, include_aliases=True)

    def _converter(
        self, field: str, key: str, python_type: type | None, custom: Converter | None
    ) -> Converter | None:
        """How an id becomes the value of the owner column ``key`` (``None``: as it is).

        A refusal (:class:`~isolation.InvalidContextError`) names the column, its type
        and the id's; a converter's own exception is not chained (it may quote the id).
        """
        column = _column_text(self.model, key, python_type)
        if custom is not None:
            described = getattr(custom, "__qualname__", type(custom).__name__)

            def convert(value: str) -> object:
                try:
                    result = custom(value)
                except Exception as exc:
                    raise owner_refusal(
                        field,
                        f"cannot be converted for the owner column {column}: the converter "
                        f"{described} raised {type(exc).__name__} on this str",
                        value,
                    ) from None
                if python_type is not None and not isinstance(result, python_type):
                    raise owner_refusal(
                        field,
                        f"was converted by {described} to a {_type_name(type(result))}, but "
                        f"the owner column {column} holds {_type_name(python_type)}",
                        value,
                    )
                return result

            return convert
        if python_type is None or python_type is str:
            return None
        if python_type not in (int, uuid.UUID):
            raise ConfigurationError(
                f"protect({self.model.__name__}): the owner column {column} holds "
                f"{_type_name(python_type)} values, and a context's id is a str",
                hint=f"Give it as OwnerColumn({key!r}, converter=...) to say how an id converts",
            )
        kind: type = python_type

        def builtin(value: str) -> object:
            try:
                return owner_value(field, value, kind)
            except InvalidContextError as exc:
                raise owner_refusal(
                    field, f"{exc.rule}; the owner column is {column}, the id a str", value
                ) from None

        return builtin

    def _bound_user(self) -> object:
        convert = self.converters[1]
        assert convert is not None
        return convert(_bound_user_id())

    def _bound_tenant(self) -> object:
        tenant = _bound_tenant_id()
        convert = self.converters[0]
        assert convert is not None
        return None if tenant is None else convert(tenant)

    def values_of(self, principal: Principal) -> tuple[object, object]:
        """``(tenant, user)`` of ``principal`` as the owner columns hold them.

        Raises:
            InvalidContextError: An id cannot be its owner column's value (not the
                canonical text of an int or UUID column, refused by a converter).
        """
        if not self.typed:
            return principal
        # Asked once per loaded row with the session's one principal object: keep
        # the last answer (holding the principal, so its identity cannot be reused).
        last = self.last
        if last is not None and last[0] is principal:
            return last[1]
        tenant_id, user_id = principal
        to_tenant, to_user = self.converters
        user = user_id if to_user is None else to_user(user_id)
        tenant = tenant_id if tenant_id is None or to_tenant is None else to_tenant(tenant_id)
        self.last = (principal, (tenant, user))
        return tenant, user

    def owns(self, index: int, value: object, mine: object) -> bool:
        """Whether ``value``, given for owner column ``index`` (0 tenant, 1 user), is the
        principal's ``mine``: a ``str`` for an int or UUID column counts when it is the
        canonical text of ``mine`` (what ``current_context()`` holds), no other spelling;
        a column with a converter takes its own values only.
        """
        if value == mine:
            return True
        kind = self.lenient[index]
        if kind is None or not isinstance(value, str):
            return False
        try:
            return owner_value("user_id" if index else "tenant_id", value, kind) == mine
        except InvalidContextError:
            return False

    def foreign(
        self, verb: str, principal: Principal, key: str, value: object
    ) -> CrossContextAccessError:
        """The refusal of ``value`` for the owner column ``key``, both values' types shown."""
        index = 0 if key == self.tenant_key else 1
        try:
            mine = _shown(self.values_of(principal)[index])
        except InvalidContextError:
            mine = "not convertible to it"
        return CrossContextAccessError(
            f"refused to {verb} a {self.model.__name__} row with {key}={_shown(value)} under "
            f"the context of {redact_principal(principal)}, whose {key} is {mine}",
            hint="A user may only read and write rows it owns; the owner columns are stamped "
            "for you",
        )

    def guards(self) -> list[Guard]:
        """What filters a read of each table holding owner columns (the coverage check)."""
        mapper: Mapper[Any] = inspect(self.model)
        wanted: dict[Any, dict[str, list[Callable[[], object]]]] = {}
        for key, _ in self.owners:
            prop = mapper.attrs[key]
            assert isinstance(prop, ColumnProperty)
            for column in prop.columns:
                table = getattr(column, "table", None)
                name = getattr(column, "name", None)
                if isinstance(table, TableClause) and isinstance(name, str):
                    wanted.setdefault(table, {}).setdefault(name, []).append(self.bound[key])
        alone = len(wanted) == 1
        return [
            Guard(self, table, names, self.criteria if alone else None)
            for table, names in wanted.items()
        ]

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

    def owner_of(self, obj: object, *, committed: bool) -> tuple[Any, Any]:
        """The ``(tenant, user)`` an instance belongs to (its loaded or its new values).

        The owner columns' values as they are: not a checked :class:`Principal`.
        """
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

    def check_mapping(
        self,
        values: Any,
        principal: Principal,
        verb: str,
        *,
        stamp: bool = False,
        names: dict[str, str] | None = None,
    ) -> None:
        """Refuse owner values of another principal in ``values`` (parameter name -> value),
        under every name that sets an owner column (``names``, by default the rule's).

        With ``stamp``, a missing or ``None`` owner value is set to the principal's.
        """
        owned = self.values_of(principal)
        if stamp:
            for key, index in self.owners:
                if values.get(key) is None:
                    values[key] = owned[index]
        for name, key in (self.names if names is None else names).items():
            if name not in values:
                continue
            index = 0 if key == self.tenant_key else 1
            value = values[name]
            if value is None or not self.owns(index, value, owned[index]):
                raise self.foreign(verb, principal, key, value)

    def identity(self, values: Any) -> tuple[Any, ...]:
        """The primary key in a bulk mapping, for the ownership query."""
        try:
            return tuple(values[key] for key in self.pk_keys)
        except KeyError:
            raise UsageError(
                f"a bulk update of {self.model.__name__} names no primary key",
                hint=f"Give {', '.join(self.pk_keys)} in every mapping",
            ) from None

    def verify_owned(
        self,
        session: Session,
        identities: Iterable[tuple[Any, ...]],
        principal: Principal,
        verb: str,
    ) -> None:
        """Refuse unless every primary key is one of the principal's rows in the database.

        One query per ``_BATCH`` keys, with the owner columns compared with the
        principal explicitly (not through the session's criteria).
        """
        wanted = list(dict.fromkeys(identities))
        if not wanted:
            return
        keys = [getattr(self.model, key) for key in self.pk_keys]
        owned = self.values_of(principal)
        owners = [getattr(self.model, key) == owned[index] for key, index in self.owners]
        found: set[tuple[Any, ...]] = set()
        for chunk in _batches(wanted):
            if len(keys) == 1:
                where = keys[0].in_([identity[0] for identity in chunk])
            else:
                where = tuple_(*keys).in_(chunk)
            rows = session.execute(select(*keys).where(where, *owners))
            found.update(tuple(row) for row in rows)
        missing = [identity for identity in wanted if identity not in found]
        if missing:
            raise CrossContextAccessError(
                f"refused to {verb} {len(missing)} {self.model.__name__} row(s) by primary key "
                f"under the context of {redact_principal(principal)}: they are not its rows "
                "(another principal's, or missing)",
                hint="A user may only write rows it owns; load them with a select first",
            )


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


class _SessionOwner(Protocol):
    """What the session manager attaches to each managed session."""

    principal: Principal
    tenancy: Tenancy | None

    def guard(self) -> None: ...


def _check_loaded(state: InstanceState[Any], context: Any, attrs: Iterable[str] | None) -> None:
    # Runs for every row the ORM turns into an object: kept to a few lookups.
    owner: _SessionOwner | None = getattr(
        getattr(context, "session", None), "_isolation_owner", None
    )
    if owner is None:
        return
    tenancy = owner.tenancy
    if tenancy is None:
        return
    rule = tenancy.rule_for(state.class_)
    if rule is None or (attrs is not None and not all(key in attrs for key, _ in rule.owners)):
        return
    principal = owner.principal
    owned = rule.values_of(principal)
    loaded = state.dict
    for key, index in rule.owners:
        value = loaded.get(key, _UNLOADED)
        if value is _UNLOADED:
            if not _uncovered_load(context):
                return  # a deferred owner column: the statement's criteria covered it
            _drop(state, context)
            raise UsageError(
                f"a {rule.model.__name__} row loaded from SQL the criteria do not reach "
                f"(from_statement(), an entity aliased to a subquery) has no {key!r} owner "
                "column, so protect() cannot tell whose row it is",
                hint=f"Select the owner column {key!r} in the statement, or use select(Model)",
            )
        if value != owned[index]:
            _drop(state, context)
            raise rule.foreign("load", principal, key, value)
    if _uncovered_load(context):
        # No criteria reached this row: its owner column may be forged ("SELECT id,
        # 'alice' AS owner ..."), so a flush of the object checks its row first.
        state.info[_UNVERIFIED] = True


def _uncovered_load(context: Any) -> bool:
    """Whether the rows come from a statement whose owner columns the criteria may not
    have reached (see :func:`_uncovered`)."""
    return bool(getattr(context, "execution_options", {}).get(_UNCOVERED))


def _uncovered(statement: Any) -> bool:
    """Whether an ORM select loads rows the criteria do not compare on the real owner
    columns: ``select(Model).from_statement(...)``, or an entity aliased to an arbitrary
    selectable (``aliased(Model, text(...).columns(...).subquery())``, whose owner
    column the SQL may forge), selected, joined (``contains_eager``) or in the FROM
    list. Plain tables, their aliases and joins are covered."""
    if isinstance(statement, FromStatement):
        return True
    # Entities loaded from its columns, its joins (contains_eager: the target, or the
    # relationship's of_type()) and its FROM list.
    joined = tuple(part for join in setup_joins(statement) for part in join[:2] if part is not None)
    for element in (
        *raw_columns(statement),
        *joined,
        *from_obj(statement),
    ):
        target = of_type(element)
        entity = inspect(target) if target is not None else parent_entity(element)
        if entity is not None and entity.is_aliased_class:
            selectable = entity.selectable
            while isinstance(selectable, Alias):
                selectable = selectable.element
            if not isinstance(selectable, (TableClause, Join)):
                return True
    return False


def _drop(state: InstanceState[Any], context: Any) -> None:
    """Leave nothing of a refused row reachable: not in the identity map (a later
    ``get()`` would answer from it), not in the object's attributes."""
    session = context.session
    obj = state.obj()
    if obj is not None and state.session_id == session.hash_key:
        session.expunge(obj)
    loaded = state.dict
    for attr in state.manager:
        loaded.pop(attr, None)


def _on_attach(session: Session, instance: object) -> None:
    """Session ``detached_to_persistent``: an object with a key that this session did
    not load (``add()`` of a detached object, ``merge(load=False)``) is unverified."""
    owner: _SessionOwner | None = getattr(session, "_isolation_owner", None)
    tenancy = None if owner is None else owner.tenancy
    if tenancy is not None and tenancy.rule_for(type(instance)) is not None:
        inspect(instance).info[_UNVERIFIED] = True


def _on_load(state: InstanceState[Any], context: Any) -> None:
    """Instance ``load``: a row turned into an object must be the principal's."""
    _check_loaded(state, context, None)


def _on_refresh(state: InstanceState[Any], context: Any, attrs: Iterable[str] | None) -> None:
    """Instance ``refresh``: the same, when the refresh reloaded the owner columns.

    Refreshes without a query context (values an ORM update evaluated in Python,
    composites) carry no row from the database and are left alone.
    """
    _check_loaded(state, context, attrs)


@final
class Tenancy:
    """The protected models of one manager, and the hooks that enforce them."""

    __slots__ = (
        "_lookup",
        "any_tenant",
        "any_typed",
        "any_user_only",
        "coverage",
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
        self.coverage = Coverage(())

    def protect(
        self, model: type[Any], user_column: object | None, tenant_column: object | None
    ) -> Rule:
        """Add (or replace) the rule of ``model``; a column may be an :class:`OwnerColumn`."""
        if user_column is None and tenant_column is None:
            raise ConfigurationError(
                f"protect({getattr(model, '__name__', model)!r}) needs user_column=, "
                "tenant_column= or both"
            )
        converters: dict[str, Converter] = {}
        keys: list[str | None] = []
        for given, parameter in ((user_column, "user_column"), (tenant_column, "tenant_column")):
            if given is None:
                keys.append(None)
                continue
            key, converter = _owner_key(model, given, parameter)
            keys.append(key)
            if converter is not None:
                converters[key] = converter
        rule = Rule(model, keys[0], keys[1], converters)
        self.rules[model] = rule
        self.coverage = Coverage(guard for r in self.rules.values() for guard in r.guards())
        self._lookup.clear()
        self.options = tuple(r.options for r in self.rules.values())
        self.any_user_only = any(r.tenant_key is None for r in self.rules.values())
        self.any_tenant = any(r.tenant_key is not None for r in self.rules.values())
        self.any_typed = any(r.typed for r in self.rules.values())
        self.tables.update(inspect(model).tables)
        if model not in _LISTENED:
            # Mapper-wide events: they act only in sessions whose manager protects the model.
            event.listen(model, "load", _on_load, propagate=True, raw=True)
            event.listen(model, "refresh", _on_refresh, propagate=True, raw=True)
            _LISTENED.add(model)
        return rule

    def serving_rule(self, cls: type[Any], principal: Principal) -> Rule | None:
        """The rule that covers ``cls`` (``None``: unprotected), after refusing a
        principal it cannot serve (a tenant context on a user-only rule, or none)."""
        rule = self.rule_for(cls)
        if rule is not None:
            refused = rule.refusal(principal)
            if refused is not None:
                raise refused
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
        """``do_orm_execute``: criteria on every ORM select (relationship and column loads
        too), update and delete; checks of what an update sets and whom a bulk write by
        primary key addresses."""
        if state.is_select or state.is_update or state.is_delete:
            self._refuse_principal(state, principal)
            if state.is_relationship_load:
                # The parent may never have been loaded by a filtered statement
                # (merge(load=False), a detached object from a cache): refuse a
                # foreign one; its children get the criteria below in any case.
                parent = state.lazy_loaded_from
                if parent is not None:
                    self._check_parent(parent, principal)
            elif state.is_column_load:
                # SQLAlchemy leaves loader criteria out of the loads that refresh an
                # object (refresh(), expired or deferred attributes): the WHERE clause
                # gets them, so another principal's row is not found.
                target = state.bind_mapper
                rule = None if target is None else self.rule_for(target.class_)
                if rule is not None:
                    statement: Any = state.statement
                    state.statement = statement.where(rule.criteria)
            elif not state.is_select:
                self._check_write(state, principal)
            elif _uncovered(state.statement):
                state.update_execution_options(**{_UNCOVERED: True})
            state.statement = state.statement.options(*self.options)
            self._check_covered(state, principal)
        elif state.is_insert:
            table = getattr(state.statement, "table", None)
            if table is not None and table in self.tables:
                raise UsageError(
                    f"an ORM bulk insert() into the protected table {table.name!r} is not "
                    "stamped with the owner",
                    hint="Add the objects with session.add() so each row is stamped and checked",
                )
            self._filter_insert(state, principal)
        elif isinstance(state.statement, FromStatement):
            # from_statement(text(...)): no criteria can reach its rows; they are
            # checked as they load, and their objects in the database before a flush.
            self._refuse_principal(state, principal)
            state.update_execution_options(**{_UNCOVERED: True})
            self._check_covered(state, principal)

    def _refuse_aliased_target(self, state: ORMExecuteState) -> None:
        """Refuse an UPDATE or DELETE of an alias of a protected table (ORM
        ``update(aliased(Model))``, Core ``delete(table.alias())``): the owner criteria
        name the table, so the database would join it to the alias and write every row
        of the alias, other users' included."""
        target = getattr(state.statement, "table", None)
        if target is None:
            return
        plain = deannotate(target)
        if plain in self.tables or not any(plain.is_derived_from(t) for t in self.tables):
            return
        verb = "UPDATE" if state.is_update else "DELETE"
        raise UsageError(
            f"an {verb} of an alias of a protected table gets the owner criteria on the "
            "table, not on the alias it writes, so protect() refuses it",
            hint=f"Write the {verb} on the mapped class itself (update(Model), delete(Model)); "
            "use an alias only inside its WHERE clause",
        )

    def _check_covered(self, state: ORMExecuteState, principal: Principal) -> None:
        """Refuse a statement that would read a protected table without the criteria
        (see :mod:`._coverage`), or a Core UPDATE or DELETE of one; then refuse the
        principal to the rules of the tables it reads (a model named only inside
        ``exists()`` is not among the statement's mappers)."""
        statement: Any = state.statement
        if state.is_update or state.is_delete:
            self._refuse_aliased_target(state)
        if (state.is_update or state.is_delete) and not state.is_orm_statement:
            target = getattr(statement, "table", None)
            if target is not None and deannotate(target) in self.tables:
                raise UsageError(
                    f"a Core {'UPDATE' if state.is_update else 'DELETE'} of the protected "
                    f"table {target.name!r} gets no owner criteria, so protect() refuses it",
                    hint="Write it on the mapped class (update(Model)), or use row-level "
                    "security for Core and raw SQL",
                )
        dialect = state.session.get_bind(mapper=state.bind_mapper).dialect
        unfiltered, rules = self.coverage.verdict(statement, dialect)
        if unfiltered is not None:
            repaired = self.coverage.repaired(statement)
            if repaired is not None:
                unfiltered, rules = self.coverage.verdict(repaired, dialect)
                if unfiltered is None:
                    state.statement = repaired
        if unfiltered is not None:
            raise UsageError(
                f"this statement reads {unfiltered} where protect() cannot apply the owner "
                "criteria (a bare Table or table(), a FULL OUTER JOIN, the preserved side of "
                "an outer join, or a subquery this SQLAlchemy version leaves unfiltered), so "
                "it is refused",
                hint="Name the mapped class (select(Model), Model.column, select_from(Model)); "
                "for raw SQL and Core, use row-level security",
            )
        if self.any_typed or (self.any_tenant if principal[0] is None else self.any_user_only):
            for found in rules:
                assert isinstance(found, Rule)
                refused = found.refusal(principal)
                if refused is not None:
                    raise refused
                found.values_of(principal)

    def _refuse_principal(self, state: ORMExecuteState, principal: Principal) -> None:
        """Refuse a principal that a rule of a model the statement touches cannot serve."""
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

    def _filter_insert(self, state: ORMExecuteState, principal: Principal) -> None:
        """An ORM insert into an unprotected table that reads protected models
        (``insert().from_select(select(Model...))``, a scalar subquery in ``values()``):
        the criteria, which SQLAlchemy applies to the embedded selects as to any
        subquery, and the rules' refusals of the principal."""
        statement: Any = state.statement
        found = find_tables(statement, check_columns=True)
        # The rows of a multi-row values() are not among the children it visits.
        for rows in multi_values(statement):
            for row in rows:
                for value in row.values() if isinstance(row, dict) else row:
                    if isinstance(value, ClauseElement):
                        found += find_tables(value, check_columns=True)
        read = [table for table in found if table in self.tables]
        if read:
            for rule in self.rules.values():
                if any(table in read for table in inspect(rule.model).tables):
                    refused = rule.refusal(principal)
                    if refused is not None:
                        raise refused
                    rule.values_of(principal)
            state.statement = statement.options(*self.options)
            self._check_covered(state, principal)

    def _check_parent(self, parent: InstanceState[Any], principal: Principal) -> None:
        rule = self.rule_for(parent.class_)
        if rule is None:
            return
        loaded = parent.dict
        owned = rule.values_of(principal)
        for key, index in rule.owners:
            if key in loaded and not rule.owns(index, loaded[key], owned[index]):
                raise rule.foreign("load the relationships of", principal, key, loaded[key])

    def _check_write(self, state: ORMExecuteState, principal: Principal) -> None:
        """An ORM update/delete: owner columns set only to the principal's values, and the
        rows of a bulk write by primary key the principal's."""
        mapper = state.bind_mapper
        rule = None if mapper is None else self.rule_for(mapper.class_)
        if rule is None:
            return
        statement = state.statement
        pairs = set_clause(statement)
        if pairs is None and state.is_update:
            # SQLAlchemy's (private) record of the SET clause: fail closed if it moves.
            raise UsageError(
                "protect() cannot read the SET clause of this ORM update() in this "
                "SQLAlchemy version, so it refuses it"
            )
        owned = rule.values_of(principal)
        parameters = state.parameters
        many: list[Any] = []
        if parameters:
            many = parameters if isinstance(parameters, list) else [parameters]
        names = rule.names
        for column, value in pairs or ():
            key = rule.columns.get(column)
            if key is None:
                continue
            index = 0 if key == rule.tenant_key else 1
            if not isinstance(value, BindParameter) or value.callable is not None:
                raise rule.foreign("set the owner of", principal, key, "<SQL expression>")
            # An execute parameter named like the bind replaces its value
            # (values(owner=bindparam("o", mine)) run with {"o": other}).
            given = sum(1 for mapping in many if value.key in mapping)
            default_used = given < len(many) or not many
            if default_used and not rule.owns(index, value.value, owned[index]):
                raise rule.foreign("set the owner of", principal, key, value.value)
            if given and value.key not in names:
                names = {**names, value.key: key}
        if state.execution_options.get("dml_strategy") == "core_only":
            # Run as Core: SQLAlchemy applies no loader criteria, so the WHERE
            # clause carries them.
            where: Any = statement
            state.statement = where.where(rule.criteria)
        if not many:
            return
        for mapping in many:
            rule.check_mapping(mapping, principal, "set the owner of", names=names)
        if state.is_executemany and state.execution_options.get("dml_strategy") != "core_only":
            verb = "update" if state.is_update else "delete"
            rule.verify_owned(state.session, (rule.identity(m) for m in many), principal, verb)

    def check_flush(self, session: Session, principal: Principal) -> None:
        """``before_flush``: stamp new rows, refuse foreign rows and owner changes, and
        check in the database the rows of objects the session neither loaded nor created."""
        for obj in session.new:
            rule = self.serving_rule(type(obj), principal)
            if rule is None:
                continue
            tenant, user = rule.values_of(principal)
            for key, mine in ((rule.user_key, user), (rule.tenant_key, tenant)):
                if key is None:
                    continue
                value = getattr(obj, key)
                if value is None:
                    setattr(obj, key, mine)
                elif not rule.owns(0 if key == rule.tenant_key else 1, value, mine):
                    raise rule.foreign("insert", principal, key, value)
        for collection, verb in ((session.dirty, "update"), (session.deleted, "delete")):
            unverified: dict[Rule, list[tuple[Any, ...]]] = {}
            states: list[InstanceState[Any]] = []
            for obj in collection:
                rule = self.serving_rule(type(obj), principal)
                if rule is None:
                    continue
                owned = rule.values_of(principal)
                for committed in (True, False):
                    owner = rule.owner_of(obj, committed=committed)
                    for key, index in rule.owners:
                        if not rule.owns(index, owner[index], owned[index]):
                            raise rule.foreign(
                                verb if committed else "change the owner of",
                                principal,
                                key,
                                owner[index],
                            )
                state = inspect(obj)
                if state.key is not None and state.info.get(_UNVERIFIED):
                    unverified.setdefault(rule, []).append(state.key[1])
                    states.append(state)
            for rule, identities in unverified.items():
                rule.verify_owned(session, identities, principal, verb)
            for state in states:
                state.info.pop(_UNVERIFIED, None)

    def check_bulk_objects(
        self, session: Session, objects: Sequence[object], principal: Principal
    ) -> None:
        """``bulk_save_objects``: stamp and check new objects; check the owner values and,
        in the database, the rows of the objects it updates."""
        unverified: dict[Rule, list[tuple[Any, ...]]] = {}
        for obj in objects:
            rule = self.serving_rule(type(obj), principal)
            if rule is None:
                continue
            owned = rule.values_of(principal)
            state: InstanceState[Any] = inspect(obj)
            if state.key is None:
                for key, index in rule.owners:
                    value = state.dict.get(key)
                    if value is None:
                        setattr(obj, key, owned[index])
                    elif not rule.owns(index, value, owned[index]):
                        raise rule.foreign("insert", principal, key, value)
                continue
            for key, index in rule.owners:
                if key not in state.dict:
                    continue
                history = state.attrs[key].history
                for value in (*history.deleted, state.dict[key]):
                    if not rule.owns(index, value, owned[index]):
                        raise rule.foreign("update", principal, key, value)
            if state.session_id != session.hash_key or state.info.get(_UNVERIFIED):
                unverified.setdefault(rule, []).append(state.key[1])
        for rule, identities in unverified.items():
            rule.verify_owned(session, identities, principal, "update")

    def check_bulk_mappings(
        self,
        session: Session,
        mapper: Any,
        mappings: Sequence[Any],
        principal: Principal,
        *,
        insert: bool,
    ) -> None:
        """``bulk_insert_mappings`` (stamp, refuse foreign owners) and
        ``bulk_update_mappings`` (refuse owner values, check the rows in the database)."""
        rule = self.rule_for(inspect(mapper).class_)
        if rule is None:
            return
        refused = rule.refusal(principal)
        if refused is not None:
            raise refused
        verb = "insert" if insert else "set the owner of"
        for mapping in mappings:
            rule.check_mapping(mapping, principal, verb, stamp=insert)
        if not insert:
            rule.verify_owned(session, (rule.identity(m) for m in mappings), principal, "update")


class TenantSession(Session):
    """A ``Session`` whose legacy bulk methods are checked like its flushes.

    ``bulk_save_objects``, ``bulk_insert_mappings`` and ``bulk_update_mappings``
    emit their statements without ``do_orm_execute`` or ``before_flush``; the
    managed session class derives from this one so that they are guarded,
    stamped and checked as well.
    """

    _isolation_owner: Any = None

    def _isolation_tenancy(self) -> tuple[Tenancy, Principal] | None:
        owner: _SessionOwner | None = self._isolation_owner
        if owner is None:
            return None
        owner.guard()
        return None if owner.tenancy is None else (owner.tenancy, owner.principal)

    def bulk_save_objects(
        self,
        objects: Iterable[object],
        return_defaults: bool = False,
        update_changed_only: bool = True,
        preserve_order: bool = True,
    ) -> None:
        """Save ``objects`` in bulk, after the tenancy checks (see the class)."""
        found = self._isolation_tenancy()
        if found is not None:
            objects = list(objects)
            found[0].check_bulk_objects(self, objects, found[1])
        super().bulk_save_objects(objects, return_defaults, update_changed_only, preserve_order)

    def bulk_insert_mappings(
        self,
        mapper: Any,
        mappings: Iterable[dict[str, Any]],
        return_defaults: bool = False,
        render_nulls: bool = False,
    ) -> None:
        """Insert ``mappings`` in bulk, stamped and checked (see the class)."""
        found = self._isolation_tenancy()
        if found is not None:
            mappings = list(mappings)
            found[0].check_bulk_mappings(self, mapper, mappings, found[1], insert=True)
        super().bulk_insert_mappings(mapper, mappings, return_defaults, render_nulls)

    def bulk_update_mappings(self, mapper: Any, mappings: Iterable[dict[str, Any]]) -> None:
        """Update ``mappings`` in bulk, after checking whose rows they are (see the class)."""
        found = self._isolation_tenancy()
        if found is not None:
            mappings = list(mappings)
            found[0].check_bulk_mappings(self, mapper, mappings, found[1], insert=False)
        super().bulk_update_mappings(mapper, mappings)


event.listen(TenantSession, "detached_to_persistent", _on_attach)

OwnerColumn.__module__ = "isolation.sessions"
