"""`keeper demo`, running: the keeper daemon on the demo's chain and database, a workload that
keeps coming (`keeper.dev.demo_live`), and a line every few seconds of what the keeper did.

`supervise` runs `keeper run` in its own session (a Ctrl-C on the terminal reaches only the
demo, which stops everything in order), its stdout and stderr going to `keeper.log`, on the
files `keeper.dev.demo_keeper` wrote. While it runs, the chain workload's thread sends, usage
rows go into `usage_inbox` every `USAGE_INTERVAL` seconds, and every `ACTIVITY_INTERVAL` seconds
one line says what the chain and the database show the keeper did since the last line, with
the usage charged per endpoint.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from anyio.abc import Process

from keeper import db
from keeper.chain.deployment import Deployment
from keeper.db.queries import load_queries
from keeper.dev.anvil import Anvil, rpc
from keeper.dev.demo_keeper import SHUTDOWN_GRACE, KeeperFiles
from keeper.dev.demo_live import ChainWorkload, LiveStream, usage_rows
from keeper.dev.demo_report import Activity, activity_text

ACTIVITY_INTERVAL = 5.0
USAGE_INTERVAL = 3.0
USAGE_ROWS_PER_TICK = 4
STOP_TIMEOUT = SHUTDOWN_GRACE + 10.0  # then the daemon is killed
LOG_TAIL_LINES = 20


async def read_activity(
    conn: db.Conn, chain_id: int, since_block: int, to_block: int, since_time: Any
) -> tuple[Activity, Any]:
    """The figures of blocks (since_block, to_block] and of transactions after `since_time`;
    returns them with the database's time, the next `since_time`."""
    queries = load_queries("demo.sql")
    row = await conn.fetchrow(queries["activity"], chain_id, since_block, to_block, since_time)
    assert row is not None
    figures = {k: db.to_int(v) for k, v in row.items() if k != "as_of"}
    split = await conn.fetch(queries["usage_by_endpoint"], chain_id, since_block, to_block)
    by_endpoint = [(r["endpoint"] or "own price", db.to_int(r["charged"])) for r in split]
    return Activity(block=to_block, usage_by_endpoint=by_endpoint, **figures), row["as_of"]


# --------------------------------------------------------------------------- supervision


def daemon_environment() -> dict[str, str]:
    """This environment without `KEEPER_<SECTION>__<FIELD>` overrides: the demo's daemon
    runs on the demo's configuration, whatever the shell exports."""
    return {
        k: v for k, v in os.environ.items() if not (k.upper().startswith("KEEPER_") and "__" in k)
    }


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of the file at `path` (none if it cannot be read)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]
    except OSError:
        return []


@dataclass
class LiveDemo:
    """Everything the running phase works with."""

    files: KeeperFiles
    rpc_url: str
    dsn: str
    deployment: Deployment
    node: Anvil | None
    streams: list[LiveStream]
    amount: Callable[[int], str]
    say: Callable[[str], None]
    payers: dict[str, int]
    payees: dict[str, int]
    price_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)  # payee -> endpoints
    duration: float | None = None
    messages: queue.Queue[str] = field(default_factory=queue.Queue)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


class _Stop:
    """Why the running phase ends: a signal or the duration (status 0), or a death (1)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.status = 0

    def request(self, status: int = 0) -> None:
        if not self.event.is_set():
            self.status = status
            self.event.set()


def _now() -> str:
    """The wall-clock time that starts each printed line."""
    return time.strftime("%H:%M:%S")


def supervise(live: LiveDemo) -> int:
    """Run the keeper daemon, the workload and the activity lines until SIGINT/SIGTERM, the
    duration, or the death of the daemon (or of anvil); stop the daemon first (SIGTERM, wait),
    then the workload. Returns the exit status: 0, or 1 when something died."""
    return anyio.run(_supervise, live)


async def _supervise(live: LiveDemo) -> int:
    stop = _Stop()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        workload = ChainWorkload(
            live.rpc_url,
            live.deployment,
            live.payers,
            live.payees,
            amount=live.amount,
            streams=live.streams,
            messages=live.messages,
            price_lists=live.price_lists,
        )
        start_block = int(str(rpc(live.rpc_url, "eth_blockNumber")), 16)
        pool = await db.create_pool(live.dsn, min_size=1, max_size=2)
        proc: Process | None = None
        try:
            start_time = await pool.fetchval("SELECT now()")
            with live.files.log.open("wb") as log_file:
                proc = await anyio.open_process(
                    [sys.executable, "-m", "keeper", "run", "--config", str(live.files.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=daemon_environment(),
                )
            live.say(f"{_now()}  keeper run started (pid {proc.pid})")
            workload.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_on_signal, signals, stop, live)
                tg.start_soon(_watch_daemon, proc, stop, live)
                if live.node is not None:
                    tg.start_soon(_watch_anvil, live.node, stop, live)
                if live.duration is not None:
                    tg.start_soon(_after, live.duration, stop, live)
                tg.start_soon(_feed_usage, pool, live)
                tg.start_soon(_report, pool, live, stop, start_block, start_time)
                await stop.event.wait()
                await _stop_daemon(proc, live)
                tg.cancel_scope.cancel()
            await anyio.to_thread.run_sync(workload.stop)
            live.say("workload stopped")
        finally:
            with anyio.CancelScope(shield=True):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await anyio.to_thread.run_sync(workload.stop)
                with anyio.move_on_after(5):
                    await pool.close()
    return stop.status


async def _on_signal(signals: Any, stop: _Stop, live: LiveDemo) -> None:
    async for signum in signals:
        live.say(f"stopping the demo ({signal.Signals(signum).name}): the keeper first")
        stop.request(0)
        return


async def _after(seconds: float, stop: _Stop, live: LiveDemo) -> None:
    await anyio.sleep(seconds)
    live.say(f"stopping the demo (--duration {seconds:g} s is up): the keeper first")
    stop.request(0)


async def _watch_daemon(proc: Process, stop: _Stop, live: LiveDemo) -> None:
    status = await proc.wait()
    if stop.event.is_set():
        return
    live.say(f"the keeper exited on its own with status {status}; the end of {live.files.log}:")
    for line in log_tail(live.files.log):
        live.say(f"  | {line}")
    live.say("stopping the demo")
    stop.request(1)


async def _watch_anvil(node: Anvil, stop: _Stop, live: LiveDemo) -> None:
    await anyio.to_thread.run_sync(node.process.wait, abandon_on_cancel=True)
    if not stop.event.is_set():
        live.say(f"anvil exited with status {node.process.returncode}; stopping the demo")
        stop.request(1)


async def _stop_daemon(proc: Process, live: LiveDemo) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
        if proc.returncode is None:
            live.say(f"the keeper did not stop within {STOP_TIMEOUT:g} s: killed")
            proc.kill()
            await proc.wait()
            return
        if proc.returncode != 0:
            live.say(f"the keeper stopped with status {proc.returncode} (see {live.files.log})")
            return
    live.say("keeper stopped")


async def _feed_usage(pool: asyncpg.Pool, live: LiveDemo) -> None:
    insert = load_queries("demo.sql")["insert_usage_rows"]
    for tick in itertools.count():
        await anyio.sleep(USAGE_INTERVAL)
        columns = usage_rows(
            live.streams, tick * USAGE_ROWS_PER_TICK, USAGE_ROWS_PER_TICK, live.run_id
        )
        try:
            await pool.execute(insert, *columns)
        except (asyncpg.PostgresError, OSError) as exc:
            live.say(f"{_now()}  workload: usage rows not inserted: {exc}")


async def _report(
    pool: asyncpg.Pool, live: LiveDemo, stop: _Stop, start_block: int, start_time: Any
) -> None:
    """Every ACTIVITY_INTERVAL seconds, the workload's news and one activity line; silent
    once the demo is stopping (the lines would describe a keeper on its way out)."""
    queries = load_queries("demo.sql")
    chain_id = live.deployment.chain_id
    since_block, since_time = start_block, start_time
    while True:
        await anyio.sleep(ACTIVITY_INTERVAL)
        if stop.event.is_set():
            return
        while not live.messages.empty():
            live.say(f"{_now()}  {live.messages.get_nowait()}")
        try:
            async with pool.acquire() as conn:
                progress = await conn.fetchrow(queries["indexer_progress"], chain_id)
                if progress is None or not progress["backfill_done"]:
                    indexed = "-" if progress is None else progress["indexed_block"]
                    live.say(f"{_now()}  keeper starting: indexed block {indexed}")
                    continue
                to_block = max(int(progress["indexed_block"]), since_block)
                activity, since_time = await read_activity(
                    conn, chain_id, since_block, to_block, since_time
                )
        except (asyncpg.PostgresError, OSError) as exc:
            live.say(f"{_now()}  the database did not answer: {exc}")
            continue
        since_block = to_block
        live.say(f"{_now()}  {activity_text(activity, live.amount)}")
