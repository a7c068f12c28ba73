"""Which reads of a protected table a statement would make without the owner criteria.

SQLAlchemy adds loader criteria to the ORM entities of each SELECT it compiles
with the ORM, but which ones depends on its version (2.0 leaves out an entity
named only in a WHERE clause: ``exists().where(Item.id == x)``, ``has()``,
``any()``), and never to a bare ``Table``. So the check looks at what would be
rendered: the statement is compiled by a compiler that records, for every
SELECT (top level, subqueries, EXISTS, scalar subqueries, CTEs, each member of
a UNION) and for the extra FROMs of an UPDATE or DELETE, the FROM list and the
WHERE clause. Every protected table among them, or alias of one, must be
compared on each owner column with the principal's bound parameter: in the
WHERE clause, or in the ON clause of a join that filters it (an inner join, or
the right side of a LEFT OUTER JOIN). The verdict is kept per statement shape
(SQLAlchemy's cache key, which it memoizes on the statement and reuses to run
it), so a shape is compiled here once.

Raw SQL (``text()``, ``literal_column()``) is not looked into: row-level
security covers it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, final

from sqlalchemy import Table, column, literal_column, select, table
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, Grouping
from sqlalchemy.sql.selectable import AliasedReturnsRows, Join, TableClause
from sqlalchemy.sql.util import ClauseAdapter
from sqlalchemy.sql.visitors import cloned_traverse

from isolation._compat import (
    add_where_criteria,
    cache_key,
    deannotate,
    dml_values,
    from_objects,
    where_criteria,
    with_options,
)
from isolation._errors import UsageError

__all__ = ["Coverage", "Guard"]

Verdict = tuple[str | None, tuple[object, ...]]
"""What a statement reads unfiltered (``None``: nothing), and whose guards it met."""

# Verdicts kept per manager: past this many shapes the cache starts again.
_CACHE_SIZE: Final = 2000
# A compiler class per dialect compiler class, recording what each SELECT renders.
_RECORDERS: dict[type, type] = {}


@final
class Guard:
    """What makes a read of one protected table filtered: each owner column (by name)
    compared with a bound parameter computed by one of its callables."""

    __slots__ = ("criteria", "owner", "table", "wanted")

    def __init__(
        self,
        owner: object,
        table: TableClause,
        wanted: Mapping[str, Iterable[Callable[[], object]]],
        criteria: Any = None,
    ) -> None:
        self.owner = owner
        self.table = table
        self.wanted = {name: tuple(found) for name, found in wanted.items()}
        # The criteria on this table alone (None: its rule's span several tables).
        self.criteria = criteria

    def met_by(self, leaf: Any, conjuncts: Iterable[Any]) -> bool:
        """Whether ``conjuncts`` (AND-ed terms) compare every owner column of ``leaf``."""
        missing = set(self.wanted)
        for term in conjuncts:
            if not isinstance(term, BinaryExpression) or term.operator is not operator.eq:
                continue
            left, right = term.left, term.right
            if not isinstance(right, BindParameter):
                left, right = right, left
            if not isinstance(right, BindParameter) or right.callable is None:
                continue
            name = getattr(left, "name", None)
            owner = getattr(left, "table", None)
            if name not in missing or owner is None or _base(owner) is not leaf:
                continue
            if right.callable in self.wanted[name]:
                missing.discard(name)
        return not missing


@final
class Coverage:
    """The protected tables of one manager, and the verdicts on the shapes seen."""

    __slots__ = ("_by_name", "_guards", "_verdicts")

    def __init__(self, guards: Iterable[Guard]) -> None:
        self._guards: dict[TableClause, list[Guard]] = {}
        for guard in guards:
            self._guards.setdefault(guard.table, []).append(guard)
        # Another Table object of the same schema and name (another MetaData, a
        # reflected copy), or a lightweight table() of the same name, reads the
        # same rows: matched by name.
        self._by_name: dict[str, list[Guard]] = {}
        for found, guards_of in self._guards.items():
            for name in {found.fullname, found.name}:
                self._by_name.setdefault(name, []).extend(guards_of)
        self._verdicts: dict[tuple[Any, ...], Verdict] = {}

    def verdict(self, statement: Any, dialect: Any) -> Verdict:
        """What ``statement`` reads of a protected table without the criteria (or
        ``None``), and the owners of the guards of the protected tables it reads."""
        key = cache_key(statement)
        if key is None:
            return self._judge(statement, dialect)
        entry = (dialect, key.key)
        try:
            return self._verdicts[entry]
        except KeyError:
            pass
        verdict = self._judge(statement, dialect)
        if len(self._verdicts) >= _CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[entry] = verdict
        return verdict

    def _judge(self, statement: Any, dialect: Any) -> Verdict:
        owners: dict[int, object] = {}
        for where, froms in _levels(statement, dialect):
            conjuncts = tuple(_conjuncts(where))
            for leaf, on in _leaves(froms, ()):
                guards = self._guards_of(leaf)
                if guards is None:
                    continue
                terms = conjuncts + tuple(_conjuncts(on))
                met = [guard for guard in guards if guard.met_by(leaf, terms)]
                if not met:
                    return _describe(leaf), ()
                owners.update((id(guard.owner), guard.owner) for guard in met)
        return None, tuple(owners.values())

    def repaired(self, statement: Any) -> Any | None:
        """A copy of ``statement`` whose SELECTs carry the criteria of each protected
        table (or alias of one) directly in their FROM list, or ``None`` if none has one.

        What SQLAlchemy leaves unfiltered is mostly an entity named only in a WHERE
        clause (2.0: ``exists()``, ``has()``, ``any()``; a criterion wrapped in
        ``and_()`` on a select of no entity) or a bare ``Table``: added to the WHERE
        clause of that SELECT, the criteria filter it; the same for the extra FROMs of
        an UPDATE or DELETE. Joined tables are left alone (in the WHERE clause they
        would empty an outer join). The copy is checked again before it runs.
        """
        changed = False

        def visit_select(element: Any) -> None:
            nonlocal changed
            added = []
            for found in element.get_final_froms():
                criteria = None if isinstance(found, Join) else self._criteria_of(_base(found))
                if criteria is not None:
                    added.append(criteria)
            if added:
                # A clone made by this traversal, not yet shared: extended in place.
                add_where_criteria(element, added)
                changed = True

        def visit_dml(element: Any) -> None:
            # UPDATE ... FROM / DELETE ... USING: the tables the WHERE clause and the
            # SET values name besides the target are its extra FROMs (inner-joined).
            nonlocal changed
            target = _base(element.table)
            values = dml_values(element).values()
            named = {
                _base(found)
                for clause in (*where_criteria(element), *values)
                for found in from_objects(clause)
            }
            added = [
                criteria
                for found in named
                if found is not target and not isinstance(found, Join)
                for criteria in (self._criteria_of(found),)
                if criteria is not None
            ]
            if added:
                add_where_criteria(element, added)
                changed = True

        # Loader options are not clause elements to copy (and cannot be): kept as they are.
        kept = {"stop_on": with_options(statement)}
        visitors = {"select": visit_select, "update": visit_dml, "delete": visit_dml}
        copy = cloned_traverse(statement, kept, visitors)
        return copy if changed else None

    def _criteria_of(self, leaf: Any) -> Any | None:
        target = leaf
        while isinstance(target, AliasedReturnsRows):
            target = target.element
        guards = self._guards.get(target) if isinstance(target, TableClause) else None
        criteria = None if not guards else guards[0].criteria
        if criteria is None or target is leaf:
            return criteria
        return ClauseAdapter(leaf).traverse(criteria)

    def _guards_of(self, leaf: Any) -> list[Guard] | None:
        target = leaf
        while isinstance(target, AliasedReturnsRows):
            target = target.element
        if not isinstance(target, TableClause):
            return None
        found = self._guards.get(target)
        if found is None:
            found = self._by_name.get(target.fullname)
        if found is None and not isinstance(target, Table):
            found = self._by_name.get(target.name)
        return found


def _describe(leaf: Any) -> str:
    target = leaf
    while isinstance(target, AliasedReturnsRows):
        target = target.element
    name = getattr(target, "fullname", "?")
    return f"the protected table {name!r}" + ("" if target is leaf else " (through an alias)")


def _base(element: Any) -> Any:
    return deannotate(element)


def _conjuncts(clauses: Iterable[Any]) -> Iterator[Any]:
    """The AND-ed terms of ``clauses`` (nested ANDs and parentheses flattened)."""
    for clause in clauses:
        if isinstance(clause, Grouping):
            yield from _conjuncts((clause.element,))
        elif isinstance(clause, BooleanClauseList) and clause.operator is operator.and_:
            yield from _conjuncts(clause.clauses)
        else:
            yield clause


def _leaves(froms: Iterable[Any], on: tuple[Any, ...]) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Each FROM element outside joins, with the ON clauses that filter its rows: an
    inner join's for both sides, a LEFT OUTER JOIN's for its right side only, a FULL
    OUTER JOIN's for neither (a join keeps the rows its ON clause drops from the side
    it preserves)."""
    for element in froms:
        if isinstance(element, Join):
            own = (element.onclause,) if element.onclause is not None else ()
            left = () if element.isouter else own
            right = () if element.full else own
            yield from _leaves((element.left,), on + left)
            yield from _leaves((element.right,), on + right)
        else:
            yield _base(element), on


def _levels(statement: Any, dialect: Any) -> list[tuple[Any, tuple[Any, ...]]]:
    """``(WHERE criteria, FROM elements)`` of every SELECT level ``statement`` renders,
    and of the extra FROMs of an UPDATE or DELETE."""
    compiler = _recorder_for(dialect)
    return list(compiler(dialect, statement).isolation_levels)


def _recorder_for(dialect: Any) -> Any:
    """The recording subclass of ``dialect``'s statement compiler (made once per class).

    Raises:
        UsageError: The compiler's hooks moved (another SQLAlchemy version): nothing
            would be recorded, so every statement would pass unchecked; refused instead.
    """
    base = dialect.statement_compiler
    found = _RECORDERS.get(base)
    if found is not None:
        return found

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        self.isolation_levels = []  # before compiling, which the base's __init__ does
        base.__init__(self, *args, **kwargs)

    def _compose_select_body(
        self: Any,
        text: Any,
        select_: Any,
        compile_state: Any,
        inner_columns: Any,
        froms: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        self.isolation_levels.append((where_criteria(select_), tuple(froms)))
        return base._compose_select_body(
            self, text, select_, compile_state, inner_columns, froms, *args, **kwargs
        )

    def update_from_clause(
        self: Any, statement: Any, from_table: Any, extra_froms: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self.isolation_levels.append((where_criteria(statement), tuple(extra_froms)))
        return base.update_from_clause(self, statement, from_table, extra_froms, *args, **kwargs)

    def delete_extra_from_clause(
        self: Any, statement: Any, from_table: Any, extra_froms: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self.isolation_levels.append((where_criteria(statement), tuple(extra_froms)))
        return base.delete_extra_from_clause(
            self, statement, from_table, extra_froms, *args, **kwargs
        )

    recorder = type(
        f"IsolationRecording{base.__name__}",
        (base,),
        {
            "__init__": init,
            "_compose_select_body": _compose_select_body,
            "update_from_clause": update_from_clause,
            "delete_extra_from_clause": delete_extra_from_clause,
        },
    )
    probe = table("isolation_probe", column("x"))
    seen = recorder(dialect, select(literal_column("1")).select_from(probe)).isolation_levels
    if len(seen) != 1 or len(seen[0][1]) != 1 or seen[0][1][0] is not probe:
        raise UsageError(
            "protect() cannot see the FROM list of a compiled SELECT in this SQLAlchemy "
            "version, so it cannot tell which statements read a protected table: refused"
        )
    _RECORDERS[base] = recorder
    return recorder
