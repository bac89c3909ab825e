"""The shared test harness: a real anvil node and a real PostgreSQL.

PostgreSQL is the server at `KEEPER_TEST_DATABASE_URL` (a `postgresql://` URL of a user that
may CREATE/DROP databases) when set, else an embedded server (pgserver) started for the
session. The schema is migrated once into a template database; every test that asks for
`database_url` gets a fresh copy of it (`CREATE DATABASE ... TEMPLATE`), dropped afterwards.

Fixtures:
- `anyio_backend`: "asyncio", so `@pytest.mark.anyio` tests and async fixtures run on asyncio.
- `anvil`: one anvil node for the session (`keeper.dev.anvil.Anvil`).
- `anvil_factory`: `(**start_anvil kwargs) -> Anvil`, nodes stopped at the end of the test.
- `node_factory`: parametrized over anvil and Hardhat's node: `() -> DevNode` (see
  `tests/support/dev_nodes.py`), nodes stopped at the end of the test.
- `database_server_url`: URL of the PostgreSQL server (its maintenance database).
- `template_database`: name of the migrated template database of this session.
- `database_factory`: `(template=None) -> url` of a new database (empty, or a copy of
  `template`), dropped at the end of the test.
- `database_url`: URL of a fresh, migrated database for this test.
- `empty_database_url`: URL of a fresh database with no keeper schema at all.
- `db`: an asyncpg connection to `database_url` (async fixture: mark the test `anyio`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
import structlog

from keeper import db as keeper_db
from keeper import logs
from keeper.db.migrations import migrate
from keeper.dev.anvil import Anvil, start_anvil
from tests.support.dev_nodes import NODE_KINDS, AnvilNode, DevNode, start_hardhat

# Fixtures defined in support modules, available to every test.
pytest_plugins = ("tests.support.world",)

T = TypeVar("T")

# Every keeper the tests start (in-process or as a subprocess, which inherits this) serves its
# health port on a free port, so that daemons running side by side never fight over 9464.
# Tests about the port itself set the port in their configuration or environment.
os.environ.setdefault("KEEPER_HEALTH__PORT", "0")

# Database names are interpolated into CREATE/DROP DATABASE (identifiers cannot be bound as
# parameters), so they are only ever built by this file and must match this pattern.
_SAFE_DB_NAME = re.compile(r"^[a-z0-9_]{1,63}$")

# Unique per pytest process, so parallel runs (xdist workers, CI jobs) sharing one server
# never touch each other's databases.
_PREFIX = f"keeper_test_{os.getpid()}"
_counter = itertools.count()


def _quoted_db_name(name: str) -> str:
    if not _SAFE_DB_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    return f'"{name}"'


def _with_database(server_url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    _quoted_db_name(name)
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run async setup code from a sync fixture.

    In a worker thread with its own event loop, so it neither collides with nor disturbs the
    loop of the anyio test runner: that keeps these fixtures usable from sync and async tests.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, func, *args).result()


async def _admin(server_url: str, *statements: str) -> None:
    conn = await keeper_db.connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _create_database(server_url: str, name: str, template: str | None = None) -> str:
    quoted = _quoted_db_name(name)
    create = f"CREATE DATABASE {quoted}"
    # template0, not the default template1: nothing someone installed into template1 of a
    # shared server leaks into the "empty" databases.
    create += f" TEMPLATE {_quoted_db_name(template)}" if template else " TEMPLATE template0"
    _run(_admin, server_url, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", create)
    return _with_database(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    _run(_admin, server_url, f"DROP DATABASE IF EXISTS {_quoted_db_name(name)} WITH (FORCE)")


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Put structlog's configuration back after each test. A test that runs `keeper.cli.main`
    in-process configures it to print to the sys.stderr of that moment, which is pytest's
    capture file for the test: closed afterwards, a later test's log line would fail there.
    `keeper.logs.configure` with JSON lines also sets the root logger's handlers and the hooks
    of uncaught exceptions: put back too."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    logs._state["json"] = False


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run anyio tests and async fixtures on asyncio, the keeper's backend."""
    return "asyncio"


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil node shared by the session, on a free port."""
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def anvil_factory() -> Iterator[Callable[..., Anvil]]:
    """Start extra anvil nodes with `start_anvil` keyword arguments; all stop after the test."""
    nodes: list[Anvil] = []

    def factory(**kwargs: Any) -> Anvil:
        node = start_anvil(**kwargs)
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(params=NODE_KINDS)
def node_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], DevNode]]:
    """Start development nodes of one kind (the test runs once per kind), on free ports, with
    the dev accounts funded and automine; all stop after the test."""
    nodes: list[DevNode] = []

    def factory() -> DevNode:
        node: DevNode = AnvilNode(start_anvil()) if request.param == "anvil" else start_hardhat()
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def database_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the PostgreSQL server: `KEEPER_TEST_DATABASE_URL`, else an embedded server."""
    url = os.environ.get("KEEPER_TEST_DATABASE_URL")
    if url:
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise pytest.UsageError("KEEPER_TEST_DATABASE_URL must be a postgresql:// URL")
        yield url
        return
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers); pgserver
        # then uses /tmp, which is fine for a throwaway server.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    pgdata: Path = tmp_path_factory.mktemp("pgserver") / "pgdata"
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def template_database(database_server_url: str) -> Iterator[str]:
    """Name of a database migrated once for the session, cloned by `database_url`."""
    name = f"{_PREFIX}_template"
    url = _create_database(database_server_url, name)
    try:
        _run(migrate, url)  # migrate() closes its connection: CREATE ... TEMPLATE needs none open
        yield name
    finally:
        _drop_database(database_server_url, name)


@pytest.fixture
def database_factory(database_server_url: str) -> Iterator[Callable[..., str]]:
    """`(template=None) -> url`: a new database, empty or cloned; all dropped after the test."""
    names: list[str] = []

    def factory(template: str | None = None) -> str:
        name = f"{_PREFIX}_{next(_counter)}"
        names.append(name)
        return _create_database(database_server_url, name, template)

    try:
        yield factory
    finally:
        for name in names:
            _drop_database(database_server_url, name)


@pytest.fixture
def database_url(database_factory: Callable[..., str], template_database: str) -> str:
    """URL of a fresh database with the full keeper schema, private to this test."""
    return database_factory(template_database)


@pytest.fixture
def empty_database_url(database_factory: Callable[..., str]) -> str:
    """URL of a fresh database without any keeper schema (for migration tests)."""
    return database_factory()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to `database_url`, closed after the test (needs `anyio` mark)."""
    conn = await keeper_db.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
