"""`keeper usage import`: a CSV or JSON-lines file of usage rows into `usage_inbox`.

The file is read one line at a time (`keeper.ops.usage_files`) and copied in chunks, all in one
transaction, so a file of millions of rows never sits in memory and a failure part-way leaves
nothing imported. The rows are left for the keeper's validation; only unreadable lines arrive
already rejected.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import asyncpg

from keeper import db
from keeper.db import Conn
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.ops.usage_files import COLUMNS, Record, UsageReader
from keeper.ops.usage_lines import UsageImportError
from keeper.progress import ProgressLine, is_terminal

TABLE = "usage_inbox"
QUERY_FILE = "usage_import.sql"
CHUNK_ROWS = 10_000  # rows per COPY
PROGRESS_INTERVAL = 0.1  # seconds between frames of the progress bar, and before the first
NEXT_STEP = (
    "the keeper validates queued rows on its next planning pass; "
    "see keeper.usage_pending and keeper.usage_rejected"
)

_SOURCE = COLUMNS.index("source")
_COPY_ROW = re.compile(rf"COPY {TABLE}, line ([0-9]+)")


@dataclass(frozen=True)
class ImportSummary:
    """What one import wrote."""

    source: str
    rows_read: int
    queued: int
    malformed: int
    blank_lines: int
    elapsed_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The summary as `--json` prints it."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_queued": self.queued,
            "malformed_rejected": self.malformed,
            "blank_lines_skipped": self.blank_lines,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "next": NEXT_STEP,
        }

    def text(self) -> str:
        """The summary as `keeper usage import` prints it."""
        width = len(f"{self.rows_read:,}")
        return (
            f"imported {self.source} in {self.elapsed_seconds:.1f} s\n"
            f"  rows read                         {self.rows_read:>{width},}\n"
            f"  rows queued for validation        {self.queued:>{width},}\n"
            f"  malformed lines kept as rejected  {self.malformed:>{width},}\n"
            f"  blank lines skipped               {self.blank_lines:>{width},}\n"
            f"{NEXT_STEP}"
        )


async def import_usage(
    conn: Conn,
    reader: UsageReader,
    *,
    chunk_size: int = CHUNK_ROWS,
    progress: ProgressLine | None = None,
) -> ImportSummary:
    """Copy every row of `reader` into `usage_inbox` in one transaction; return the counts.

    Rows go in `chunk_size` at a time, so memory holds one chunk, not the file. Any failure
    (a value the reader refuses, a COPY the server refuses, a lost connection) raises
    `UsageImportError` and rolls the whole import back. The rows are left for the keeper's
    validation (verdict NULL); only unreadable lines arrive already rejected.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    started = time.monotonic()
    copying: list[Record] = []
    try:
        async with conn.transaction():
            now: datetime = await conn.fetchval(load_queries(QUERY_FILE)["transaction_time"])
            chunk: list[Record] = []
            for record in reader.records(now):
                chunk.append(record)
                if len(chunk) >= chunk_size:
                    copying, chunk = chunk, []
                    await conn.copy_records_to_table(TABLE, records=copying, columns=COLUMNS)
                if progress is not None:
                    draw_progress(progress, reader.rows_read, reader.bytes_read, reader.total_bytes)
            if chunk:
                copying = chunk
                await conn.copy_records_to_table(TABLE, records=copying, columns=COLUMNS)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise _write_failed(exc, reader, copying) from exc
    finally:
        if progress is not None:
            draw_progress(
                progress, reader.rows_read, reader.bytes_read, reader.total_bytes, final=True
            )
    return ImportSummary(
        source=reader.source,
        rows_read=reader.rows_read,
        queued=reader.queued,
        malformed=reader.malformed,
        blank_lines=reader.blank_lines,
        elapsed_seconds=time.monotonic() - started,
    )


def _write_failed(exc: BaseException, reader: UsageReader, copying: list[Record]) -> KeeperError:
    # The server names the row of the COPY it refused ("COPY usage_inbox, line 3"): point the
    # operator at that row's line of the file.
    where = f"{reader.source} (after line {reader.line})"
    match = _COPY_ROW.search(str(getattr(exc, "context", None) or ""))
    if match is not None and 0 < int(match.group(1)) <= len(copying):
        where = str(copying[int(match.group(1)) - 1][_SOURCE])
    return UsageImportError(
        f"{where}: the import into {TABLE} failed: {exc}",
        source=reader.source,
        line=reader.line,
        help="nothing was imported (the transaction was rolled back); "
        "fix the cause and import the whole file again",
    )


async def import_to_database(
    dsn: str, reader: UsageReader, *, progress: ProgressLine | None = None
) -> ImportSummary:
    """Connect to `dsn` and `import_usage` there."""
    conn = await db.connect(dsn)
    try:
        return await import_usage(conn, reader, progress=progress)
    finally:
        await conn.close()


def progress_bar(
    out: TextIO, *, clock: Callable[[], float] = time.monotonic
) -> ProgressLine | None:
    """The import's progress bar on `out` if it is a terminal; None (no bar) for a pipe or a
    file. Redrawn at most every `PROGRESS_INTERVAL` seconds, and not before the first is up."""
    if not is_terminal(out):
        return None
    return ProgressLine(
        out, tty=True, tty_interval=PROGRESS_INTERVAL, delay=PROGRESS_INTERVAL, clock=clock
    )


def draw_progress(
    bar: ProgressLine, rows: int, bytes_read: int, total_bytes: int | None, *, final: bool = False
) -> None:
    """Draw rows read and their rate (and % of the file when its size is known) if a frame is
    due; cheap enough to call for every row. `final` draws the last frame and ends the line."""
    if not bar.due(final=final):
        return
    elapsed = max(bar.elapsed, 1e-9)
    text = f"{rows:,} rows  {rows / elapsed:,.0f} rows/s  {elapsed:.1f} s"
    if total_bytes:
        text = f"{min(bytes_read / total_bytes, 1.0):4.0%}  {text}"
    bar.draw(text, final=final)
