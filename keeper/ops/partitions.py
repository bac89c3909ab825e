"""`keeper db archive-events`: move the event partitions of old, finalized blocks into the archive.

The event tables are partitioned by chain and block range (sql/schema.sql, section 0018). A range
wholly below `--below` is archived when `--below` is at or below the chain's finalized and
indexed blocks + 1, so no rollback can reach it: each event table's partition of the range is
detached and moved, whole, into schema `archive`, and a new partition in its place keeps only
the rows the projections are recomputed from (`event_tables.keep`). The projections, and so
`keeper verify`, are unchanged; views that sum event history count what is still attached.

Rows of the DEFAULT partitions below `--below` (written before the tables were partitioned)
are first moved into ranges of `partition_blocks` blocks, so that they can be archived too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import asyncpg

from keeper.db import Conn
from keeper.db.queries import load_queries
from keeper.errors import KeeperError

# A swap waits at most half a second for each table's lock (archive_event_range), then is tried
# again after these pauses.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)


class ArchiveRefused(KeeperError):
    """The event ranges cannot be archived."""


@dataclass(frozen=True)
class ArchivedRange:
    """One block range [from_block, to_block) and what archiving it moved."""

    from_block: int
    to_block: int
    archived: int = 0  # rows moved into schema `archive`
    kept: int = 0  # rows kept attached for the projections


@dataclass
class ArchiveReport:
    """What `archive_events` did (or, with dry_run, would do)."""

    chain_id: int
    below: int
    dry_run: bool
    ranges: list[ArchivedRange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return asdict(self)

    def text(self) -> str:
        """One line per range, then a summary."""
        verb = "would archive" if self.dry_run else "archived"
        lines = []
        for r in self.ranges:
            line = f"{verb} blocks {r.from_block} to {r.to_block - 1} of chain {self.chain_id}"
            if not self.dry_run:
                line += f": {r.archived} rows into schema archive, {r.kept} kept attached"
            lines.append(line)
        if not self.ranges:
            lines.append(f"chain {self.chain_id}: no event range wholly below block {self.below}")
        return "\n".join(lines)


async def archive_events(
    conn: Conn, chain_id: int, below: int, *, partition_blocks: int, dry_run: bool = False
) -> ArchiveReport:
    """Archive chain `chain_id`'s event ranges wholly below block `below` (see the module)."""
    q = load_queries("partitions.sql")
    limit = await conn.fetchrow(q["archive_limit"], chain_id)
    if limit is None or limit["safe"] is None:
        raise ArchiveRefused(
            f"chain {chain_id}: nothing is indexed and finalized yet",
            help="archive once the keeper has indexed the chain past its finalized block",
        )
    safe = int(limit["safe"])
    if below > safe + 1:
        raise ArchiveRefused(
            f"--below {below}: chain {chain_id} is finalized and indexed up to block {safe} "
            "only, and a rollback may still rewrite what is above it",
            help=f"pass --below {safe + 1} or lower",
        )
    report = ArchiveReport(chain_id, below, dry_run)
    start = int(limit["start_block"])
    if not dry_run and below > start:
        await _retrying(
            conn, q["ensure_event_partitions"], chain_id, start, below - 1, partition_blocks
        )
    for r in await conn.fetch(q["ranges_below"], chain_id, below):
        first, end = int(r["from_block"]), int(r["to_block"])
        if dry_run:
            report.ranges.append(ArchivedRange(first, end))
            continue
        row = await _retrying(conn, q["archive_event_range"], chain_id, first, fetch_row=True)
        report.ranges.append(ArchivedRange(first, end, int(row["archived"]), int(row["kept"])))
    return report


async def _retrying(conn: Conn, query: str, *args: Any, fetch_row: bool = False) -> Any:
    """Run `query` (its own transaction), again after a pause while its locks stay taken."""
    for delay in (*RETRY_DELAYS, None):
        try:
            if fetch_row:
                return await conn.fetchrow(query, *args)
            return await conn.fetchval(query, *args)
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            if delay is None:
                raise ArchiveRefused(
                    f"the event tables stayed locked: {exc}",
                    help="a long transaction holds a lock on an event table (see pg_locks); "
                    "run the command again later: what was archived stays archived",
                ) from exc
            await anyio.sleep(delay)
    raise AssertionError("unreachable")
