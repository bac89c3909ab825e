"""Failure accounting of the daemon's loops: nothing a pass raises stops the daemon.

Each long-running loop (the indexer's `sync`, the planners' `plan`, the transaction manager's
`tx`) runs its passes under a `LoopGuard`. A pass that raises is counted, reported and retried
after a growing pause, while the other loops go on:

- an **outage** (the RPC or the database unreachable after the client's own retries, another
  indexer holding the cursor) is logged as one line and waited out;
- a **fault** (any other error: a node answer nothing expected, a bug) is logged with its
  traceback the first time it is seen and as one line while it repeats, so a deterministic error
  neither floods the log nor becomes a restart loop under systemd.

Errors that must stop the process (a reorg below the finalized block, a lost leader lock) and
cancellation are not the guard's business: they are raised through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from keeper import metrics
from keeper.chain.rpc import RpcUnavailable
from keeper.db import DatabaseUnavailable

log = structlog.get_logger(__name__)

# The loops, the usage part of the planning pass, which fails on its own (keeper.plan.planner), and
# the start-up's chain checks, which wait for the RPC like the loops do; retention is a loop too.
LOOPS = ("sync", "plan", "tx", "usage", "start", "retention")
LOOP_FAILURES = Counter(
    "keeper_loop_failures_total",
    "Passes of a daemon loop that failed, by loop (sync, plan, tx; usage: the usage part of a "
    "planning pass, which fails without holding up settlement and refunds; start: the start-up's "
    "chain checks; retention: keeper.db.retention) and kind: outage "
    "(RPC or database unreachable, waited out) or fault (an unexpected error, logged with its "
    "traceback).",
    ["loop", "kind"],
    registry=metrics.REGISTRY,
)
for _loop in LOOPS:
    for _kind in ("outage", "fault"):
        LOOP_FAILURES.labels(loop=_loop, kind=_kind)

# What counts as an outage everywhere; a loop may add its own (the indexer's CursorMoved).
OUTAGES: tuple[type[Exception], ...] = (
    RpcUnavailable,
    DatabaseUnavailable,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def describe(exc: BaseException) -> str:
    """One line naming an error: its message, or its type when the message is empty."""
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    return f"{name}: {text[0]}" if text else name


class LoopGuard:
    """Counts, reports and paces the failed passes of one loop (see the module docstring).

    `interval` is the loop's normal pause; after `n` consecutive failures the pause is
    `interval * 2**n`, at most `max_delay`. `on_error` receives each failure's one-line text
    (the daemon shows the latest in /status)."""

    def __init__(
        self,
        loop: str,
        interval: float,
        *,
        outages: tuple[type[Exception], ...] = OUTAGES,
        on_error: Callable[[str], None] | None = None,
        max_delay: float = 60.0,
        logger: Any = None,
        event: str | None = None,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.outages = outages
        self.on_error = on_error
        self.max_delay = max_delay
        self.failures = 0
        self.log = logger if logger is not None else log
        self.event = event or ("sync_failed" if loop == "sync" else f"{loop}_pass_failed")
        self._last_fault: str | None = None

    def failed(self, exc: Exception) -> float:
        """Account for a failed pass; return how long to pause before the next one."""
        self.failures += 1
        delay = float(min(self.interval * 2.0**self.failures, self.max_delay))
        text = describe(exc)
        event = self.event
        if isinstance(exc, self.outages):
            LOOP_FAILURES.labels(loop=self.loop, kind="outage").inc()
            self.log.error(event, error=str(exc), retry_in_s=delay, failures=self.failures)
        else:
            LOOP_FAILURES.labels(loop=self.loop, kind="fault").inc()
            first = text != self._last_fault
            self._last_fault = text
            self.log.error(
                event,
                error=text,
                unexpected=True,
                retry_in_s=delay,
                failures=self.failures,
                # The traceback once per distinct error; a repeat is one line.
                exc_info=exc if first else None,
            )
        if self.on_error is not None:
            self.on_error(f"{self.loop} pass failed: {text}")
        return delay

    def succeeded(self) -> None:
        """A pass went through: the next failure starts the pacing afresh."""
        self.failures = 0
        self._last_fault = None
