"""Connecting to PostgreSQL.

asyncpg's connection errors are wrapped here, where they enter the keeper, into
`DatabaseUnavailable`, which tells the operator what to check; the DSN in the message has its
password masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any, TypeAlias

import asyncpg

from keeper import urls
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
# ...and what it raises reading a URL it cannot make sense of (int() of a "port").
_CONNECT_OR_URL_ERRORS: tuple[type[BaseException], ...] = (*_CONNECT_ERRORS, ValueError)


class DatabaseUnavailable(KeeperError):
    """Cannot connect to PostgreSQL."""

    def __init__(self, message: str | None = None, *, dsn: str = "", help: str = _HELP) -> None:  # noqa: A002
        super().__init__(message, help=help)
        self.dsn = dsn


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***`, fit for logs and error messages. Never
    raises, whatever `dsn` is (see keeper.urls)."""
    return urls.redact_dsn(dsn)


def _unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    safe = redact_dsn(dsn)
    # asyncpg's ValueErrors come from reading the URL and may quote a piece of it.
    detail = f"the URL could not be read ({type(exc).__name__})" if _is_parse(exc) else exc
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {safe}: {detail}", dsn=safe)


def _is_parse(exc: BaseException) -> bool:
    return isinstance(exc, ValueError) and not isinstance(exc, asyncpg.ClientConfigurationError)


def _checked(dsn: str) -> None:
    """Refuse a malformed URL before asyncpg reads it: asyncpg would fail with a message
    quoting part of it (a password taken for a port number)."""
    problem = urls.database_url_problem(dsn)
    if problem is not None:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL: the database URL is malformed: {problem}",
            dsn=redact_dsn(dsn),
            help="give a postgresql://user:password@host:port/dbname URL, with special "
            "characters of the user name and password percent-encoded",
        )


# Session settings of every keeper connection. JIT compilation off: the keeper's queries are
# short, and on large tables the planner's cost estimates can trigger hundreds of
# milliseconds of compilation for a query that runs in a few.
SERVER_SETTINGS = {"jit": "off"}


def _settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "server_settings": {**SERVER_SETTINGS, **kwargs.get("server_settings", {})}}


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """Open one connection (`kwargs` go to `asyncpg.connect`), or raise `DatabaseUnavailable`."""
    _checked(dsn)
    try:
        return await asyncpg.connect(dsn, **_settings(kwargs))
    except _CONNECT_OR_URL_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """Open a connection pool (`kwargs` go to `asyncpg.create_pool`).

    The first `min_size` connections are opened here, so a wrong URL or a server that is down
    fails at start-up with `DatabaseUnavailable` rather than at the first query.
    """
    _checked(dsn)
    try:
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, **_settings(kwargs)
        )
    except _CONNECT_OR_URL_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc


def to_int(value: Any) -> int:
    """A numeric(78,0) value read from Postgres (asyncpg gives `Decimal`) as an exact `int`.

    Money and ids are integers; an integral Decimal converts exactly, anything else is a bug.
    """
    result = int(value)
    if result != value:
        raise ValueError(f"expected an integral numeric, got {value!r}")
    return result


# How long a caller waits for a spare connection the pool said it had (another task may have
# taken it in between) before it goes on without.
SPARE_WAIT = 0.5


async def spare_connections(pool: asyncpg.Pool, stack: AsyncExitStack, n: int) -> list[Any]:
    """`n` more connections from `pool`, held until `stack` closes, only if the pool has them
    idle or can open them; else none (a planning pass never waits for another loop's
    connection: it runs on one)."""
    if n <= 0 or pool.get_idle_size() + pool.get_max_size() - pool.get_size() < n:
        return []
    spare = []
    for _ in range(n):
        try:
            spare.append(await stack.enter_async_context(pool.acquire(timeout=SPARE_WAIT)))
        except TimeoutError:
            break
    return spare if len(spare) == n else []


_BARE_WORD = re.compile(r"[a-z][a-z_]*")


def array_literal(values: Iterable[int | None]) -> str:
    """A PostgreSQL array literal of whole numbers (NULL for None), passed as one text
    parameter and cast on the server: asyncpg checks every element of an array parameter (a
    pass writes 200,000 of them), PostgreSQL's array input parses the text in C. Each value
    goes through int(), so nothing but a number can change the literal's shape."""
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def word_array_literal(values: Iterable[str | None]) -> str:
    """`array_literal` of the keeper's own words (kinds, verdicts, reason codes: lowercase
    letters and underscores); anything else, a producer's text say, is refused."""
    items = list(values)
    for word in set(items):
        if word is not None and (_BARE_WORD.fullmatch(word) is None or word == "null"):
            raise ValueError(f"{word!r} is not a bare word for an array literal")
    return "{" + ",".join("NULL" if v is None else v for v in items) + "}"


# What the keeper's queries run on: a plain connection or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
