"""`keeper usage import`: a CSV or JSON-lines file of usage rows into `usage_inbox`.

The file is read one line at a time and copied in chunks, all in one transaction, so a file of
millions of rows never sits in memory and a failure part-way leaves nothing imported. Values are
stored as the text they had in the file: nothing here parses an amount, a stream id or a
timestamp (the keeper's validation does, and keeps what it refuses with a reason). Only
`chain_id`, a bigint column, is read as an integer, in the whole-number grammar the validation
uses for `stream_id` and `units` too (`whole_number`, kept here so that the import command does
not load the chain libraries `keeper.plan.usage` needs). A line that cannot be read at all is not
dropped: it is stored as a row rejected with reason `malformed_line`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import asyncpg

from keeper import db
from keeper.db import Conn
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.plan.inbox import (
    blank,
    parse_chain_id,
    whole_number,
)

TABLE = "usage_inbox"
QUERY_FILE = "usage_import.sql"
COLUMNS = (
    "chain_id",
    "stream_id",
    "units",
    "producer_key",
    "label",
    "observed_at",
    "source",
    "verdict",
    "reason",
    "detail",
    "validated_at",
    "endpoint",  # last: it came later, and a row's other columns keep their places
)
REQUIRED_FIELDS = ("stream_id", "units", "producer_key")
# `endpoint` (the name of the payee's endpoint the usage is billed at) came with price lists:
# files without it import as before.
OPTIONAL_FIELDS = ("label", "observed_at", "chain_id", "endpoint")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK_ROWS = 10_000  # rows per COPY
MALFORMED = "malformed_line"
NEXT_STEP = (
    "the keeper validates queued rows on its next planning pass; "
    "see keeper.usage_pending and keeper.usage_rejected"
)

# A COPY row: the values of COLUMNS, in order.
Record = tuple[
    int | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    str | None,
    str | None,
    str | None,
    datetime | None,
    str | None,
]
_SOURCE = COLUMNS.index("source")

_BOM = b"\xef\xbb\xbf"
_SNIPPET_CHARS = 80
_MAX_DEPTH = 20  # arrays and objects inside one JSON line; a usage row needs one
_KNOWN = frozenset(FIELDS)
_FIELD_LIST = f"{', '.join(REQUIRED_FIELDS)} and optionally {', '.join(OPTIONAL_FIELDS)}"
_COPY_ROW = re.compile(rf"COPY {TABLE}, line ([0-9]+)")


class UsageImportError(KeeperError):
    """The usage file was not imported."""

    def __init__(
        self,
        message: str | None = None,
        *,
        source: str = "",
        line: int | None = None,
        help: str | None = None,  # noqa: A002
    ) -> None:
        super().__init__(message, help=help)
        self.source = source
        self.line = line


class MalformedLine(ValueError):
    """A line that cannot be read as a row; the message says why (it becomes the detail)."""


class _Number(str):
    """A JSON number as the text it was written with (1e3 stays "1e3", 10**80 stays exact)."""

    __slots__ = ()


def _not_json(name: str) -> Any:
    raise MalformedLine(f"not valid JSON ({name} is not a JSON value)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json would keep the last of two equal keys: which value was meant is not ours to guess.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedLine(f"key {key!r} appears twice")
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(
    parse_int=_Number, parse_float=_Number, parse_constant=_not_json, object_pairs_hook=_unique_keys
)


# --------------------------------------------------------------------------- reading


def file_format(file: str, explicit: str | None = None) -> str:
    """The format of `file` ("csv" or "jsonl"): `explicit` if given, else from the extension."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise UsageImportError(f"unknown format {explicit!r}", help="use csv or jsonl")
        return explicit
    fmt = EXTENSIONS.get(Path(file).suffix.lower()) if file != "-" else None
    if fmt is None:
        what = "standard input" if file == "-" else f"{file} from its extension"
        raise UsageImportError(
            f"cannot tell the format of {what}",
            help="pass --format csv or --format jsonl (or name the file .csv, .jsonl or .ndjson)",
        )
    return fmt


def source_name(file: str) -> str:
    """What the `source` column says before `:<line>` for `file` by default."""
    return "stdin" if file == "-" else file


@contextmanager
def open_file(file: str) -> Iterator[BinaryIO]:
    """`file` opened for reading bytes (standard input for "-", which is left open)."""
    if file == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(file, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise UsageImportError(f"cannot read {file}: {exc.strerror or exc}", source=file) from exc
    with stream:
        yield stream


def file_size(stream: BinaryIO) -> int | None:
    """The size in bytes of a regular file, None for a pipe or terminal (no percentage then)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def parse_csv_header(text: str, source: str = "<string>", line: int = 1) -> tuple[str, ...]:
    """The column names of a CSV header line, checked: all known, none twice, required present.

    Names are taken without surrounding spaces. Raises `UsageImportError` naming every
    unknown, repeated or missing column.
    """
    try:
        names = tuple(name.strip() for name in next(csv.reader([text], strict=True)))
    except csv.Error as exc:
        raise UsageImportError(
            f"{source}:{line}: the header row is not valid CSV ({exc})",
            source=source,
            line=line,
            help="nothing was imported",
        ) from exc
    unknown = [n for n in names if n not in _KNOWN]
    if unknown:
        raise UsageImportError(
            f"{source}: unknown column{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} in the header row",
            source=source,
            line=line,
            help=f"the columns are {_FIELD_LIST}; nothing was imported",
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageImportError(
            f"{source}: column{'s' if len(repeated) > 1 else ''} "
            f"{', '.join(map(repr, repeated))} appear{'' if len(repeated) > 1 else 's'} twice "
            "in the header row",
            source=source,
            line=line,
            help="nothing was imported",
        )
    missing = [n for n in REQUIRED_FIELDS if n not in names]
    if missing:
        raise UsageImportError(
            f"{source}: the header row lacks {', '.join(map(repr, missing))}",
            source=source,
            line=line,
            help=f"the columns are {_FIELD_LIST}; nothing was imported",
        )
    return names


def parse_csv_line(text: str, width: int) -> list[str | None]:
    """The `width` fields of one CSV line; an empty field is None. Raises `MalformedLine`."""
    if '"' in text or "\r" in text:
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise MalformedLine(f"not valid CSV ({exc})") from None
    else:
        fields = text.split(",")  # what the csv module makes of a line without quotes
    if len(fields) != width:
        raise MalformedLine(f"{len(fields)} fields where the header has {width}")
    return [value or None for value in fields]


def parse_json_line(text: str) -> dict[str, str | None]:
    """One JSON line as {key: value as text}; null is None. Raises `MalformedLine`.

    Keys are not checked here (see `unknown_keys`). Numbers keep the text they were written
    with; true/false are "true"/"false"; an array or object value is its JSON text.
    """
    if _too_deep(text):
        # Checked first: json's C scanner recurses on the C stack, and with the recursion limit
        # some libraries set (py_ecc, imported with web3, sets 100,000) a line of 100,000 `[`
        # would crash the process instead of raising RecursionError.
        raise MalformedLine(f"JSON nested deeper than {_MAX_DEPTH} levels")
    try:
        obj = _DECODER.decode(text)
    except MalformedLine:
        raise
    except json.JSONDecodeError as exc:
        raise MalformedLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise MalformedLine("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise MalformedLine(f"a JSON {_json_kind(obj)}, not an object")
    values = {key: _json_text(value) for key, value in obj.items()}
    if "\\u0000" in text and any(v is not None and "\x00" in v for v in values.values()):
        raise MalformedLine("a NUL character (\\u0000), which PostgreSQL text cannot hold")
    if "\\u" in text:
        # A \ud800-style escape decodes to a lone surrogate, which no UTF-8 column can hold.
        for value in values.values():
            if value is not None and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise MalformedLine(
                        "a \\u escape that is not a character (lone surrogate)"
                    ) from None
    return values


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= _MAX_DEPTH:
        return False  # the usual line: no scan
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def unknown_keys(row: dict[str, str | None]) -> list[str]:
    """The keys of a JSON row that are not usage fields."""
    return [key for key in row if key not in _KNOWN]


def _json_kind(value: Any) -> str:
    if isinstance(value, _Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    return "null"


def _json_text(value: Any) -> str | None:
    if type(value) is str or value is None:
        return value
    if isinstance(value, str):
        return str(value)  # a plain str, also for a _Number
    if isinstance(value, bool):
        return "true" if value else "false"
    return _json_dump(value)


def _json_dump(value: Any) -> str:
    # json.dumps would quote the numbers, which are _Number strings here.
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_dump(k)}:{_json_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def snippet(line: str) -> str:
    """The start of a line for a detail text, with control characters escaped."""
    start = line[:_SNIPPET_CHARS]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in start)
    return shown + ("…" if len(line) > _SNIPPET_CHARS else "")


class UsageReader:
    """The rows of one usage file, read a line at a time.

    A CSV file's header is read and checked when the reader is made, so a bad or missing header
    (an empty file) fails before a database is touched. `records()` then yields one COPY row
    per non-blank line and keeps the counts (`queued`, `malformed`, `blank_lines`), the number
    of the line last read (`line`) and the bytes read so far (`bytes_read`).
    """

    def __init__(
        self, stream: BinaryIO, fmt: str, *, source: str, chain_id: int | None = None
    ) -> None:
        if fmt not in FORMATS:
            raise UsageImportError(f"unknown format {fmt!r}", help="use csv or jsonl")
        self.format = fmt
        self.source = source
        self.chain_id = chain_id
        self.line = 0
        self.bytes_read = 0
        self.queued = 0
        self.malformed = 0
        self.blank_lines = 0
        self.header: tuple[str, ...] | None = None
        self._positions: list[int] = []  # per field of FIELDS: its CSV column, -1 if none
        self._stream = stream
        self._lines = iter(stream)
        if fmt == "csv":
            self._read_header()

    @property
    def rows_read(self) -> int:
        """Lines that held a row, readable or not (blank lines and the header excluded)."""
        return self.queued + self.malformed

    def _next_line(self) -> bytes | None:
        """The next line without its line ending, or None at the end of the file."""
        raw = next(self._lines, None)
        if raw is None:
            return None
        self.line += 1
        self.bytes_read += len(raw)
        if self.line == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return raw

    def _read_header(self) -> None:
        while (raw := self._next_line()) is not None:
            if not raw.strip():
                self.blank_lines += 1
                continue
            where = f"{self.source}:{self.line}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageImportError(
                    f"{where}: the header row is not UTF-8 ({_decode_problem(raw, exc)})",
                    source=self.source,
                    line=self.line,
                    help="nothing was imported; save the file as UTF-8",
                ) from exc
            self.header = parse_csv_header(text, self.source, self.line)
            self._positions = [self.header.index(f) if f in self.header else -1 for f in FIELDS]
            return
        # Without a header nothing says what the columns are: an error, as a file whose first
        # line is not a header is (an empty export usually means the producer failed).
        raise UsageImportError(
            f"{self.source}: no header row (the file "
            f"{'is empty' if self.line == 0 else 'holds only blank lines'})",
            source=self.source,
            line=self.line or None,
            help=f"a CSV file starts with a header row naming its columns, {_FIELD_LIST}; "
            "nothing was imported",
        )

    def records(self, validated_at: datetime | None) -> Iterator[Record]:
        """One COPY row per non-blank line; `validated_at` goes to the rejected ones.

        Raises `UsageImportError` for a chain_id that is not an integer and, in JSON lines, a
        key that is not a usage field (the import stops: its transaction writes nothing).
        """
        while (raw := self._next_line()) is not None:
            if not raw.strip():
                self.blank_lines += 1
                continue
            source = f"{self.source}:{self.line}"
            try:
                fields = dict(zip(FIELDS, self._parse(raw), strict=True))
            except MalformedLine as exc:
                self.malformed += 1
                yield (
                    self.chain_id,
                    None,
                    None,
                    None,
                    None,
                    None,
                    source,
                    "rejected",
                    MALFORMED,
                    f"{exc}; the line starts: {snippet(_lenient(raw))}",
                    validated_at,
                    None,
                )
                continue
            self.queued += 1
            chain_id = fields["chain_id"]
            yield (
                self.chain_id
                if chain_id is None or blank(chain_id)
                else self._chain_id(chain_id, source),
                fields["stream_id"],
                fields["units"],
                fields["producer_key"],
                fields["label"],
                fields["observed_at"],
                source,
                None,
                None,
                None,
                None,
                fields["endpoint"],
            )

    def _parse(self, raw: bytes) -> list[str | None]:
        """The values of FIELDS in a line. Raises `MalformedLine`, or `UsageImportError` for
        an unknown JSON key."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedLine(f"not UTF-8 ({_decode_problem(raw, exc)})") from None
        if "\x00" in text:
            raise MalformedLine("a NUL character, which PostgreSQL text cannot hold")
        if self.header is not None:
            fields = parse_csv_line(text, len(self.header))
            return [fields[i] if i >= 0 else None for i in self._positions]
        row = parse_json_line(text)
        unknown = unknown_keys(row)
        if unknown:
            raise UsageImportError(
                f"{self.source}:{self.line}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}",
                source=self.source,
                line=self.line,
                help=f"the keys are {_FIELD_LIST}; nothing was imported",
            )
        return [row.get(f) for f in FIELDS]

    def _chain_id(self, text: str, source: str) -> int:
        value = parse_chain_id(text)
        if value is None:
            problem = (
                "is not an integer"
                if whole_number(text) is None
                else "is out of range (-2^63 to 2^63-1)"
            )
            raise UsageImportError(
                f"{source}: chain_id {_shown(text)} {problem}, and usage_inbox.chain_id is a "
                "bigint column",
                source=self.source,
                line=self.line,
                help="nothing was imported; correct or empty that chain_id (rows without one "
                "take --chain-id) and import the file again",
            )
        return value


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SNIPPET_CHARS else value[: _SNIPPET_CHARS - 3] + "...")


def _lenient(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _decode_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}"


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar: rows read and their rate (and % of the file when its size is
    known), redrawn in place at most every `interval` seconds."""

    def __init__(
        self,
        out: TextIO,
        *,
        total_bytes: int | None = None,
        interval: float = 0.1,
        clock: Any = time.monotonic,
    ) -> None:
        self._out = out
        self._total = total_bytes or None
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._next = self._started + interval
        self._width = 0

    @classmethod
    def on_terminal(cls, out: TextIO, *, total_bytes: int | None = None) -> Progress | None:
        """A bar on `out` if it is a terminal; None (no bar) for a pipe or a file."""
        try:
            tty = out.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(out, total_bytes=total_bytes) if tty else None

    def update(self, rows: int, bytes_read: int) -> None:
        """Redraw if the last redraw is `interval` old; cheap enough to call for every row."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        self._draw(rows, bytes_read, now)

    def finish(self, rows: int, bytes_read: int) -> None:
        """Draw the final state and end the line."""
        self._draw(rows, bytes_read, self._clock())
        self._out.write("\n")
        self._out.flush()

    def _draw(self, rows: int, bytes_read: int, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        text = f"{rows:,} rows  {rows / elapsed:,.0f} rows/s  {elapsed:.1f} s"
        if self._total:
            text = f"{min(bytes_read / self._total, 1.0):4.0%}  {text}"
        padded = text.ljust(self._width)
        self._width = len(text)
        self._out.write(f"\r{padded}")
        self._out.flush()


# --------------------------------------------------------------------------- importing


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
    progress: Progress | None = None,
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
                    progress.update(reader.rows_read, reader.bytes_read)
            if chunk:
                copying = chunk
                await conn.copy_records_to_table(TABLE, records=copying, columns=COLUMNS)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise _write_failed(exc, reader, copying) from exc
    finally:
        if progress is not None:
            progress.finish(reader.rows_read, reader.bytes_read)
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
    dsn: str, reader: UsageReader, *, progress: Progress | None = None
) -> ImportSummary:
    """Connect to `dsn` and `import_usage` there."""
    conn = await db.connect(dsn)
    try:
        return await import_usage(conn, reader, progress=progress)
    finally:
        await conn.close()
