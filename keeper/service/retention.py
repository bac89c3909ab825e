"""The leader's retention loop: a run every `retention.interval` seconds (keeper.db.retention)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import asyncpg
import structlog

from keeper.db.retention import TABLES, Retention
from keeper.loops import LoopGuard

if TYPE_CHECKING:
    from keeper.service.daemon import Heartbeat

log = structlog.get_logger(__name__)


async def _pause(shutdown: anyio.Event, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await shutdown.wait()


async def retention_loop(
    retention: Retention,
    pool: asyncpg.Pool,
    *,
    shutdown: anyio.Event,
    heartbeat: Heartbeat,
    guard: LoopGuard,
) -> None:
    """Retire old rows every `retention.interval` seconds, batch after batch, each batch its own
    short transaction with `batch_pause` seconds between two, until nothing is due or a stop is
    requested; one `retention_run` line per run. A failed run is counted and retried after
    `guard`'s pause, like every loop's pass (keeper.loops)."""
    settings = retention.settings
    while not shutdown.is_set():
        started = time.perf_counter()
        current = retention.start()
        try:
            while not shutdown.is_set():
                # Busy per batch, not per run: a first run over a long history takes a while.
                with heartbeat.busy("retention"):
                    async with pool.acquire() as conn:
                        more = await current.step(conn)
                if not more:
                    break
                await _pause(shutdown, settings.batch_pause)
        except Exception as exc:  # contained: see keeper.loops
            await _pause(shutdown, guard.failed(exc))
            continue
        guard.succeeded()
        log.info(
            "retention_run",
            mode=settings.mode,
            keep_days=settings.keep_days,
            finalized_block=current.finalized_block,
            batches=current.batches,
            lock_timeouts=current.lock_timeouts,
            seconds=round(time.perf_counter() - started, 3),
            **{table: current.rows[table] for table in TABLES},
        )
        await _pause(shutdown, settings.interval)
