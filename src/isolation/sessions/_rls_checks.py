"""The row-level security start check of a manager: once, before its first session.

With ``row_level_security``, the role the sessions connect as must not bypass
the policies, and every table the manager filters or was told about must have
them (``postgres.check_role`` / ``check_role_sync``). The check runs before the
first session (or at ``start()``), and again after :meth:`SessionManager.protect`
adds tables (also while the check runs: it then runs again before any session
proceeds). A refusal leaves it pending: every later session runs it again and
is refused again (fail closed), until the role or the tables are fixed.
"""

from __future__ import annotations

import asyncio
import threading
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from isolation.sessions._tenancy import Tenancy
    from isolation.sessions.postgres import Binding

__all__ = ["StartChecks"]


@final
class StartChecks:
    """Whether the start check is owed, and running it once at a time (async or sync)."""

    __slots__ = (
        "_async_lock",
        "_binding",
        "_engine",
        "_rls_tables",
        "_sync_lock",
        "_tenancy",
        "_version",
        "pending",
    )

    def __init__(
        self, binding: Binding | None, engine: AsyncEngine | Engine, rls_tables: Iterable[str]
    ) -> None:
        self._binding = binding
        # The manager's engine, with the option the unmanaged-connection guard lets through.
        self._engine = engine
        self._rls_tables = tuple(rls_tables)
        self._tenancy: Tenancy | None = None
        self.pending = binding is not None
        # Bumped by again(): a check that ran while tables were added is owed again.
        self._version = 0
        self._async_lock: asyncio.Lock | None = None  # made on the running loop
        self._sync_lock = threading.Lock()

    def again(self, tenancy: Tenancy) -> None:
        """New tables to check (``protect()``): the next session runs the check first."""
        self._tenancy = tenancy
        if self._binding:
            self.pending = True
            self._version += 1

    def _tables(self) -> set[str]:
        tables = set(self._rls_tables)
        if self._tenancy is not None:
            tables.update(table.fullname for table in self._tenancy.tables)
        return tables

    def new_loop(self) -> None:
        """The manager reopens, perhaps on another event loop: its lock is made anew."""
        self._async_lock = None

    async def run(self) -> None:
        """Run the check if it is owed (the async face)."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            while self.pending:  # again, if protect() added tables while it ran
                version = self._version
                binding = self._binding
                if binding:
                    from isolation.sessions.postgres import check_role

                    binding.user_only_tables = await check_role(
                        typing.cast("AsyncEngine", self._engine), self._tables(), binding=binding
                    )
                self.pending = self._version != version

    def run_sync(self) -> None:
        """Run the check if it is owed (the sync face, in the calling thread)."""
        with self._sync_lock:
            while self.pending:  # again, if protect() added tables while it ran
                version = self._version
                binding = self._binding
                if binding:
                    from isolation.sessions.postgres import check_role_sync

                    binding.user_only_tables = check_role_sync(
                        typing.cast("Engine", self._engine), self._tables(), binding=binding
                    )
                self.pending = self._version != version
