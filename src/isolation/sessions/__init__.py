"""Database sessions bound to the user's scope (extra ``sqlalchemy``; asyncio only).

:class:`SessionManager` gives each scope one SQLAlchemy ``AsyncSession``,
admits it under a global bound and a per-user limit, commits or rolls it back
at the end of its block, and filters protected ORM models to the current
principal. Row-level security on PostgreSQL lives in
:mod:`isolation.sessions.postgres` (extra ``postgres``).
"""

from isolation._deprecated import moved as _moved
from isolation.sessions._manager import SessionManager as SessionManager
from isolation.sessions._tenancy import OwnerColumn as OwnerColumn

__all__ = ["OwnerColumn", "SessionManager"]

# SessionStats, the type of SessionManager.stats() (read by attribute), left the
# surface (issue 19): the old path warns for one release.
__getattr__ = _moved(__name__, {"SessionStats": ("isolation.sessions._manager", "SessionStats")})
