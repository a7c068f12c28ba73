"""The index of the live scopes' walked objects, per principal.

A new build's walk is compared with the objects reached from the live
instances of *other* principals, and registered, in one atomic step under the
index's lock: of two conflicting builds exactly one is refused.

Each scope's :class:`ScopeRecord` holds strong references to the walks made
for it (ids are reused once objects die, so weak or id-only bookkeeping gives
false results) until the scope ends; then its entries leave the index, so
nothing outlives the scope. The bare ``@request_scoped`` decorator shares one
module-level index; a registry can own its own.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, final

import attrs

from isolation._errors import ScopeEndedError
from isolation.factories._graph import Path, WalkResult

if TYPE_CHECKING:
    from isolation.context._model import Principal
    from isolation.context._scope import Scope

__all__ = ["Conflict", "ScopeRecord", "SharedStateIndex", "default_index"]


@attrs.frozen(kw_only=True)
class Conflict:
    """One object reachable from two principals' instances.

    Attributes:
        principals: This build's principal, then the other's.
        paths: The path to the shared object on each side, in the same order.
        factories: The names of the two factories.
        shared_type: The type name of the shared object.
        same_object: The two instances are one and the same object.
    """

    principals: tuple[Principal, Principal]
    paths: tuple[Path, Path]
    factories: tuple[str, str]
    shared_type: str
    same_object: bool


@final
class ScopeRecord:
    """What one scope has registered in one index: its principal and its walks.

    Held by the scope (in its storage) and by the index while the scope lives.
    """

    __slots__ = ("__weakref__", "_where", "closed", "principal", "scope_ref")

    def __init__(self, principal: Principal, scope: Scope, index: SharedStateIndex) -> None:
        self.principal = principal
        self.closed = False
        # id -> (walk that registered it, factory name): the strong references.
        self._where: dict[int, tuple[WalkResult, str]] = {}
        # A safety net: if the scope dies without its finalizer running (its end
        # raced a build in another thread), the record is dropped at the next add.
        me = weakref.ref(self)
        self.scope_ref: weakref.ref[Scope] = weakref.ref(scope, lambda _ref: index._dead_record(me))

    def live(self) -> bool:
        """Whether the scope of this record is still live."""
        if self.closed:
            return False
        scope = self.scope_ref()
        return scope is not None and not scope.ended

    def __len__(self) -> int:
        return len(self._where)


@final
class SharedStateIndex:
    """Objects reached from the live scoped instances, with the principal of each.

    **Safe to share between threads**: every method takes the index's lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, dict[ScopeRecord, None]] = {}
        self._dead: list[weakref.ref[ScopeRecord]] = []

    @property
    def size(self) -> int:
        """The number of distinct objects indexed."""
        return len(self._entries)

    def new_record(self, principal: Principal, scope: Scope) -> ScopeRecord:
        """A record for ``scope``, to pass to :meth:`add` and :meth:`close`."""
        return ScopeRecord(principal, scope, self)

    def add(self, record: ScopeRecord, result: WalkResult, factory: str) -> Conflict | None:
        """Compare ``result`` with other principals' live walks; register it if none conflicts.

        One atomic step. Returns the first conflict in breadth-first order of
        ``result`` (so the shallowest shared object) and registers nothing, or
        ``None`` after registering every object of ``result`` under ``record``.

        Raises:
            ScopeEndedError: ``record`` was closed (its scope ended).
        """
        with self._lock:
            self._drain_dead()
            if record.closed:
                raise ScopeEndedError("the scope's record is closed")
            entries = self._entries
            stale: list[ScopeRecord] = []
            conflict: Conflict | None = None
            for oid in result.mutable:
                holders = entries.get(oid)
                if not holders:
                    continue
                for other in holders:
                    if other is record or other.principal == record.principal:
                        continue
                    if not other.live():
                        stale.append(other)
                        continue
                    theirs, their_factory = other._where[oid]
                    conflict = Conflict(
                        principals=(record.principal, other.principal),
                        paths=(result.path(oid), theirs.path(oid)),
                        factories=(factory, their_factory),
                        shared_type=type(result.obj(oid)).__qualname__,
                        same_object=oid == id(result.root) and oid == id(theirs.root),
                    )
                    break
                if conflict is not None:
                    break
            for other in stale:
                self._close_locked(other)
            if conflict is not None:
                return conflict
            where = record._where
            for oid in result.mutable:
                if oid in where:
                    continue
                where[oid] = (result, factory)
                holders = entries.get(oid)
                if holders is None:
                    entries[oid] = {record: None}
                else:
                    holders[record] = None
            return None

    def close(self, record: ScopeRecord) -> None:
        """Remove ``record``'s entries (its scope ended); idempotent."""
        with self._lock:
            self._close_locked(record)

    def _close_locked(self, record: ScopeRecord) -> None:
        if record.closed:
            return
        record.closed = True
        entries = self._entries
        for oid in record._where:
            holders = entries.get(oid)
            if holders is not None:
                holders.pop(record, None)
                if not holders:
                    del entries[oid]
        record._where = {}

    def _dead_record(self, record: weakref.ref[ScopeRecord]) -> None:
        # A weakref callback: it may run in any thread, even one holding the
        # lock, so it only queues the record (list.append is atomic).
        self._dead.append(record)

    def _drain_dead(self) -> None:
        while self._dead:
            record = self._dead.pop()()
            if record is not None:
                self._close_locked(record)


_DEFAULT = SharedStateIndex()


def default_index() -> SharedStateIndex:
    """The module-level index shared by every bare ``@request_scoped`` factory."""
    return _DEFAULT
