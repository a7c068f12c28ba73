"""Whether the PostgreSQL and Redis servers a report was given answer.

A report asked to check a server must not read a server that does not answer
as a leak, nor pass without checking it. The runner probes each requested
server once, before its first check: one connection and one trivial command,
with a bounded wait. A server that does not answer, or refuses the connection
(an unknown role or database, a wrong password), makes its checks errors, not
violations. A check that crashes on a lost connection mid-run is an error too
(:func:`is_connection_failure`).
"""

from __future__ import annotations

import importlib
import importlib.util
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import anyio

from isolation.report._registry import Backend

__all__ = ["Probe", "describe_server", "is_connection_failure", "probe_server"]

Probe = Callable[[Backend, str], "str | None"]
"""``probe(backend, url)``: ``None`` when the server answers, else why it did not."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a probe waits for the server to connect and answer."""

_NAMES: Final = {Backend.POSTGRES: "PostgreSQL", Backend.REDIS: "Redis"}


def describe_server(backend: Backend, url: str) -> str:
    """``"PostgreSQL at host:port/db"``: where the server is, never the URL's credentials."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # an unparsable port
        return f"{_NAMES.get(backend, str(backend))} (an invalid URL)"
    where = f"{host or 'localhost'}{f':{port}' if port else ''}{parts.path}"
    return f"{_NAMES.get(backend, str(backend))} at {where}"


def probe_server(backend: Backend, url: str) -> str | None:
    """Connect to the server at ``url`` and run one command; ``None``, or why that failed.

    PostgreSQL is probed with asyncpg (else psycopg), Redis with redis-py; with
    no driver installed nothing is probed (the checks that need it are not run).
    """
    try:
        if backend is Backend.POSTGRES:
            _probe_postgres(url)
        elif backend is Backend.REDIS:
            _probe_redis(url)
    except Exception as exc:  # what failed is the answer: the probe reports it
        return f"{describe_server(backend, url)} did not answer: {_one_line(exc)}"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocking import hook, or a half-imported module
        return False


def _libpq_url(url: str) -> str:
    # "postgresql+asyncpg://..." is SQLAlchemy's spelling; the drivers want "postgresql://...".
    scheme, sep, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}{sep}{rest}"


def _probe_postgres(url: str) -> None:
    dsn = _libpq_url(url)
    if _installed("asyncpg"):
        asyncpg: Any = importlib.import_module("asyncpg")  # untyped

        async def probe() -> None:
            with anyio.fail_after(CONNECT_TIMEOUT):
                connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
                try:
                    await connection.fetchval("SELECT 1")
                finally:
                    await connection.close()

        anyio.run(probe, backend="asyncio")
    elif _installed("psycopg"):
        psycopg: Any = importlib.import_module("psycopg")

        with psycopg.connect(dsn, connect_timeout=int(CONNECT_TIMEOUT)) as connection:
            connection.execute("SELECT 1")


def _probe_redis(url: str) -> None:
    if not _installed("redis"):
        return
    redis: Any = importlib.import_module("redis")
    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )
    try:
        client.ping()
    finally:
        client.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _connection_error_types() -> tuple[type[BaseException], ...]:
    """The drivers' "could not connect, or lost the connection" errors, of those imported."""
    found: list[type[BaseException]] = [ConnectionError, socket.gaierror]
    asyncpg_errors = sys.modules.get("asyncpg.exceptions")
    if asyncpg_errors is not None:
        for name in (
            "PostgresConnectionError",  # SQLSTATE class 08
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "InvalidAuthorizationSpecificationError",  # an unknown role, a wrong password
            "InvalidCatalogNameError",  # an unknown database
        ):
            found.append(getattr(asyncpg_errors, name))
    psycopg_errors = sys.modules.get("psycopg.errors")
    if psycopg_errors is not None:
        for name in (
            "ConnectionException",
            "CannotConnectNow",
            "InvalidAuthorizationSpecification",
            "InvalidCatalogName",
        ):
            found.append(getattr(psycopg_errors, name))
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None:
        found.append(redis_errors.ConnectionError)  # AuthenticationError is one
    return tuple(found)


def _is_connection_error(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, types):
        return True
    # psycopg raises its OperationalError itself, not a subclass, when it cannot connect;
    # its subclasses (a deadlock, a cancelled query) are findings.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and type(exc) is psycopg.OperationalError


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a server's lost or refused connection, not a finding.

    True when every exception of a group has, in its chain of causes, a
    connection error of the standard library or of a driver (SQLAlchemy wraps
    the driver's). Timeouts are not connection failures: a check's hang guard
    firing is a finding about the library.
    """
    types = _connection_error_types()
    return all(
        any(_is_connection_error(link, types) for link in _chain(leaf)) for leaf in _leaves(exc)
    )
