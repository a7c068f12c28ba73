"""The chat's table: one row per message, owned by one principal ``(tenant, owner)``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Integer, String, Text, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Message", "make_engine"]


class Base(DeclarativeBase):
    pass


class Message(Base):
    """A message of a user's conversation: theirs, or the assistant's reply to them.

    ``SessionManager.protect()`` stamps ``tenant`` and ``owner`` on new rows
    and filters every ORM query to the current principal.
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    owner: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    author: Mapped[str] = mapped_column(String(16), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author,
            "text": self.text,
            "created_at": self.created_at,
        }


def make_engine(database_url: str) -> AsyncEngine:
    """An engine; for SQLite, WAL mode, a busy timeout and SQLAlchemy's own ``BEGIN``.

    The last is SQLAlchemy's documented recipe for pysqlite, so that nested
    session blocks (SAVEPOINTs) work.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url)
    if url.database in (None, "", ":memory:"):
        # One in-memory database lives in one connection (a StaticPool).
        engine = create_async_engine(url)
    else:
        engine = create_async_engine(url, pool_size=5, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine
