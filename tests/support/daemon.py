"""`keeper run` as a subprocess for the acceptance tests: the process (`Keeper`), a database
whose index can be snapshotted and compared (`Db`), and `wait_until`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from keeper import db as keeper_db
from keeper.db.outbox import IntentRequest, Outbox, Planned
from tests.support.activity import (
    indexed_logs,
)

# The console script installed next to this interpreter; `python -m keeper` when the tests run
# from an interpreter without it (then the entry point itself is tested by test_python_m).
_SCRIPT = Path(sys.executable).with_name("keeper")
KEEPER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keeper"]


# Rows that depend on where ranges happened to end or on the wall clock, not on the chain:
# `blocks` below the unfinalized window holds backfill's range-end checkpoints (compared above
# the finalized block only), and timestamptz columns are when a row was written.
VOLATILE_TYPES = {"timestamp with time zone", "timestamp without time zone"}


SPECIAL_TABLES = {"blocks"}


class Db:
    """A synchronous window on one database (its own event loop and connection)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._runner = asyncio.Runner()
        self._conn: asyncpg.Connection = self._runner.run(keeper_db.connect(url))

    def close(self) -> None:
        self._runner.run(self._conn.close())
        self._runner.close()

    def run(self, coro: Any) -> Any:
        return self._runner.run(coro)

    def cursor(self) -> int:
        """The indexed block (-1 before the keeper created its cursor or its schema)."""
        try:
            value = self.run(self._conn.fetchval("SELECT indexed_block FROM ingest_cursor"))
        except asyncpg.UndefinedTableError:
            return -1
        return -1 if value is None else int(value)

    def finalized(self) -> int:
        value = self.run(self._conn.fetchval("SELECT finalized_block FROM ingest_cursor"))
        return -1 if value is None else int(value)

    def logs(self) -> list[tuple[int, int, str]]:
        result: list[tuple[int, int, str]] = self.run(indexed_logs(self._conn))
        return result

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows (sorted, without wall-clock columns); `blocks` above finality."""
        return dict(self.run(_snapshot(self._conn)))


class Keeper:
    """`keeper run --config FILE`, restartable; every run appends to one log file."""

    def __init__(self, config: Path, log_file: Path) -> None:
        self.config = config
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_offset = 0  # where the current run's lines begin in the log file

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*KEEPER, "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final write, mid-transaction if it was in one."""
        assert self.proc is not None
        assert self.proc.poll() is None, self.tail()
        self.proc.kill()
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def terminate(self, within: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns the exit status and how long the process took to exit."""
        assert self.proc is not None
        assert self.proc.poll() is None, self.tail()
        # Until the interpreter has started and `keeper run` installed its handler, SIGTERM's
        # default action would kill the process: wait until this run has logged its start.
        wait_until("keeper_started", self.started_logged, self, timeout=60)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"keeper ignored SIGTERM for {within}s\n{self.tail()}") from None
        return status, time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def started_logged(self) -> bool:
        """Whether the current run logged `keeper_started` (runs killed earlier may not have)."""
        with self.log_file.open("rb") as log:
            log.seek(self.log_offset)
            return b"keeper_started" in log.read()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_until(what: str, check: Callable[[], bool], keeper: Keeper, timeout: float = 60.0) -> None:
    """Poll `check` until true; fail early if the keeper died, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if keeper.proc is not None and keeper.proc.poll() is not None:
            raise AssertionError(
                f"keeper exited ({keeper.proc.returncode}) waiting for {what}\n{keeper.tail()}"
            )
        time.sleep(0.003)
    raise AssertionError(f"timed out waiting for {what}\n{keeper.tail()}")


async def _snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = [
        str(r["table_name"])
        for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
    ]
    finalized = await conn.fetchval("SELECT finalized_block FROM ingest_cursor")
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in tables:
        columns = [
            str(r["column_name"])
            for r in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                table,
            )
            if r["data_type"] not in VOLATILE_TYPES
        ]
        assert table.isidentifier() and all(c.isidentifier() for c in columns)
        listed = ", ".join(f'"{c}"' for c in columns)
        # Identifiers from the catalog, checked above; nothing comes from input.
        query = f'SELECT {listed} FROM "{table}"'  # noqa: S608
        args: list[Any] = []
        if table in SPECIAL_TABLES:
            query += " WHERE number > $1"
            args.append(finalized)
        rows = await conn.fetch(f"{query} ORDER BY {listed}", *args)
        out[table] = [tuple(r.values()) for r in rows]
    return out


class Outboxes:
    """A synchronous window on the keeper's database (its own event loop and connection)."""

    def __init__(self, url: str) -> None:
        self._runner = asyncio.Runner()
        self._conn: asyncpg.Connection = self._runner.run(keeper_db.connect(url))

    def close(self) -> None:
        self._runner.run(self._conn.close())
        self._runner.close()

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = self._runner.run(self._conn.fetch(query, *args))
        return rows

    def plan(self, chain_id: int, requests: Sequence[IntentRequest]) -> list[int]:
        """Plan `requests` in one transaction (the keeper sees all of them or none)."""

        async def plan_all() -> list[int]:
            outbox = Outbox(chain_id)
            ids = []
            async with self._conn.transaction():
                for req in requests:
                    planned = await outbox.plan(self._conn, req)
                    assert isinstance(planned, Planned)
                    ids.append(planned.intent_id)
            return ids

        result: list[int] = self._runner.run(plan_all())
        return result

    def intent_states(self, ids: Sequence[int] | None) -> Counter[str]:
        """States of the intents `ids` (None: of every intent)."""
        rows = self.fetch(
            "SELECT state FROM intents WHERE $1::bigint[] IS NULL OR id = ANY($1::bigint[])",
            None if ids is None else list(ids),
        )
        return Counter(r["state"] for r in rows)

    def attempts(self, ids: Sequence[int] | None = None) -> list[asyncpg.Record]:
        """Attempts (of the intents `ids`, or all), oldest first."""
        return self.fetch(
            "SELECT id, intent_id, state, tx_hash, broadcast_block FROM attempts "
            "WHERE $1::bigint[] IS NULL OR intent_id = ANY($1::bigint[]) ORDER BY id",
            None if ids is None else list(ids),
        )


def keeper(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEEPER, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
