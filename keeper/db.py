"""Connecting to PostgreSQL.

asyncpg's connection errors are wrapped here, where they enter the keeper, into
`DatabaseUnavailable`, which tells the operator what to check; the DSN in the message has its
password masked.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from keeper.errors import KeeperError

_HELP = (
    "check that PostgreSQL is running and reachable from this host, and that the database URL "
    "(host, port, user, password, database name) is right"
)

# What asyncpg raises when it cannot get a working session: the server is down or unreachable
# (OSError, which includes timeouts), refuses us, or the database does not exist.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ClientConfigurationError,
)


class DatabaseUnavailable(KeeperError):
    """Cannot connect to PostgreSQL."""

    def __init__(self, message: str | None = None, *, dsn: str = "", help: str = _HELP) -> None:  # noqa: A002
        super().__init__(message, help=help)
        self.dsn = dsn


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***`, fit for logs and error messages."""
    dsn = re.sub(r"(password=)[^&\s]*", r"\1***", dsn)
    parts = urlsplit(dsn)
    if parts.scheme and parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        return urlunsplit(parts)
    return dsn


def _unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    safe = redact_dsn(dsn)
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {safe}: {exc}", dsn=safe)


# Session settings of every keeper connection. JIT compilation off: the keeper's queries are
# short, and on large tables the planner's cost estimates can trigger hundreds of
# milliseconds of compilation for a query that runs in a few.
SERVER_SETTINGS = {"jit": "off"}


def _settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "server_settings": {**SERVER_SETTINGS, **kwargs.get("server_settings", {})}}


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """Open one connection (`kwargs` go to `asyncpg.connect`), or raise `DatabaseUnavailable`."""
    try:
        return await asyncpg.connect(dsn, **_settings(kwargs))
    except _CONNECT_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """Open a connection pool (`kwargs` go to `asyncpg.create_pool`).

    The first `min_size` connections are opened here, so a wrong URL or a server that is down
    fails at start-up with `DatabaseUnavailable` rather than at the first query.
    """
    try:
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, **_settings(kwargs)
        )
    except _CONNECT_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc


def to_int(value: Any) -> int:
    """A numeric(78,0) value read from Postgres (asyncpg gives `Decimal`) as an exact `int`.

    Money and ids are integers; an integral Decimal converts exactly, anything else is a bug.
    """
    result = int(value)
    if result != value:
        raise ValueError(f"expected an integral numeric, got {value!r}")
    return result


# What the keeper's queries run on: a plain connection or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
