"""Retention: finished outbox rows and reconciled usage rows leave the live tables.

Once older than `retention.keep_days` (and at or below the finalized block, where a block is
involved), these rows are moved into the tables of schema `archive` (mode `archive`) or deleted
(mode `delete`), in batches of `retention.batch_rows` parents, each batch one short transaction
(`sql/retention.sql`):

- **intents** that are final, failed or replanned, with their attempts, batch items and fault
  row (children first, then the intents);
- **usage reports** recorded or rejected, with their inbox rows; their producer keys stay in
  `usage_retired_keys`, which the intake's duplicate check reads too, so a replayed row is
  refused as before;
- **inbox rows rejected at intake** (they have no report).

What the keeper still needs stays: an intent the manager or the planners may read again (see
`finished_intents`), a pending report, an unvalidated row. A batch selects its rows with
`FOR UPDATE SKIP LOCKED` and waits at most `lock_timeout` for any lock, so a run never holds up
the planner or the manager; a batch that times out ends the run, and the next run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import Counter

from keeper import metrics
from keeper.config import RetentionConfig
from keeper.db import Conn
from keeper.db.queries import Queries, load_queries

# The live tables retention takes rows from, children before their parents.
INTENT_TABLES = ("tx_faults", "attempts", "batch_items", "intents")
USAGE_TABLES = ("usage_reports", "usage_inbox")
TABLES = INTENT_TABLES + USAGE_TABLES
ACTIONS = ("archived", "deleted")

RETIRED_ROWS = Counter(
    "keeper_retention_rows_total",
    "Rows retention took from the live tables, by table and action: archived (moved into "
    "schema archive) or deleted.",
    ["table", "action"],
    registry=metrics.REGISTRY,
)
for _table in TABLES:
    for _action in ACTIONS:
        RETIRED_ROWS.labels(table=_table, action=_action)

# The named query of each table's move (archive_*) or deletion (delete_*).
_QUERY_OF = {
    "tx_faults": "tx_faults",
    "attempts": "attempts",
    "batch_items": "batch_items",
    "intents": "intents",
    "usage_reports": "reports",
    "usage_inbox": "inbox",
}

# The three kinds of parents, in the order a run takes them.
_STEPS = ("intents", "reports", "rejected")


def _count(status: str) -> int:
    """The row count of a command status (`INSERT 0 5`, `DELETE 5`)."""
    return int(status.split()[-1])


@dataclass
class RetentionRun:
    """One run: batch after batch until nothing is due (`step` returns False). Counts what it
    took per table."""

    retention: Retention
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    lock_timeouts: int = 0
    finalized_block: int | None = None
    _bounds: tuple[Any, int] | None = None
    _steps: list[str] = field(default_factory=lambda: list(_STEPS))

    async def step(self, conn: Conn) -> bool:
        """One batch in its own transaction; False once the run is over (nothing due, no
        finalized block known yet, or a lock not granted in time)."""
        r = self.retention
        if self._bounds is None:
            row = await conn.fetchrow(r.q["bounds"], r.chain_id, r.keep_seconds)
            if row is None or row["finalized_block"] is None:
                self._steps.clear()
                return False
            self._bounds = (row["cutoff"], int(row["finalized_block"]))
            self.finalized_block = self._bounds[1]
        if not self._steps:
            return False
        cutoff, finalized = self._bounds
        kind = self._steps[0]
        try:
            async with conn.transaction():
                await conn.execute(r.q["lock_timeout"])
                taken, rows = await r.batch(conn, kind, cutoff, finalized)
        except asyncpg.LockNotAvailableError:
            self.lock_timeouts += 1
            self._steps.clear()
            return False
        self.batches += 1
        for table, n in rows.items():
            self.rows[table] += n
            RETIRED_ROWS.labels(table=table, action=r.action).inc(n)
        if taken < r.batch_rows:
            self._steps.pop(0)
        return bool(self._steps)


class Retention:
    """Retires one chain's finished outbox rows and reconciled usage rows."""

    def __init__(
        self, chain_id: int, settings: RetentionConfig, *, queries: Queries | None = None
    ) -> None:
        self.chain_id = chain_id
        self.settings = settings
        self.keep_seconds = float(settings.keep_days * 86_400)
        self.batch_rows = settings.batch_rows
        self.archive = settings.mode == "archive"
        self.action = "archived" if self.archive else "deleted"
        self.q = queries or load_queries("retention.sql")

    def start(self) -> RetentionRun:
        """A new run (its bounds are read at its first step)."""
        return RetentionRun(self)

    async def run(self, conn: Conn) -> RetentionRun:
        """Every batch due, one after the other on `conn` (the command line's run; the daemon
        steps a run itself, pausing between batches)."""
        run = self.start()
        while await run.step(conn):
            pass
        return run

    async def batch(
        self, conn: Conn, kind: str, cutoff: Any, finalized: int
    ) -> tuple[int, dict[str, int]]:
        """One batch of `kind` (intents, reports or rejected inbox rows) inside the caller's
        transaction: how many parents it took, and the rows per table."""
        q, limit = self.q, self.batch_rows
        if kind == "intents":
            rows = await conn.fetch(q["finished_intents"], self.chain_id, cutoff, finalized, limit)
            return len(rows), await self._take(conn, INTENT_TABLES, [r["id"] for r in rows])
        if kind == "reports":
            rows = await conn.fetch(
                q["reconciled_reports"], self.chain_id, cutoff, finalized, limit
            )
            return len(rows), await self._take(conn, USAGE_TABLES, [r["inbox_id"] for r in rows])
        rows = await conn.fetch(q["rejected_rows"], self.chain_id, cutoff, limit)
        return len(rows), await self._take(conn, ("usage_inbox",), [r["id"] for r in rows])

    async def _take(self, conn: Conn, tables: tuple[str, ...], ids: list[int]) -> dict[str, int]:
        if not ids:
            return {}
        prefix = "archive_" if self.archive else "delete_"
        return {
            table: _count(await conn.execute(self.q[prefix + _QUERY_OF[table]], ids))
            for table in tables
        }
