"""`keeper usage import`'s reading side: a CSV or JSON-lines file of usage rows, one line at a
time, as the rows to copy into `usage_inbox` (`UsageReader.records`).

A file of millions of rows never sits in memory. Only `chain_id`, a bigint column, is read as
an integer, in the whole-number grammar the validation uses for `stream_id` and `units` too
(`whole_number`, from `keeper.plan.inbox` so that the import command does not load the chain
libraries `keeper.plan.usage` needs). A line that cannot be read at all is not dropped: it
becomes a row rejected with reason `malformed_line`.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from keeper.ops.usage_lines import (
    FIELD_LIST,
    FIELDS,
    SNIPPET_CHARS,
    MalformedLine,
    UsageImportError,
    parse_csv_header,
    parse_csv_line,
    parse_json_line,
    snippet,
    unknown_keys,
)
from keeper.plan.inbox import (
    blank,
    parse_chain_id,
    whole_number,
)

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
FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MALFORMED = "malformed_line"

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

_BOM = b"\xef\xbb\xbf"


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


class UsageReader:
    """The rows of one usage file, read a line at a time.

    A CSV file's header is read and checked when the reader is made, so a bad or missing header
    (an empty file) fails before a database is touched. `records()` then yields one COPY row
    per non-blank line and keeps the counts (`queued`, `malformed`, `blank_lines`), the number
    of the line last read (`line`), the bytes read so far (`bytes_read`) and the size of
    the file when it is a regular one (`total_bytes`).
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
        self.total_bytes = file_size(stream)  # None when unknown: no percentage then
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

    def _next_row_line(self) -> bytes | None:
        """The next line that is not blank (the blank ones are counted), or None at the end."""
        while (raw := self._next_line()) is not None:
            if raw.strip():
                return raw
            self.blank_lines += 1
        return None

    def _read_header(self) -> None:
        raw = self._next_row_line()
        if raw is None:
            # Without a header nothing says what the columns are: an error, as a file whose
            # first line is not a header is (an empty export usually means the producer failed).
            raise UsageImportError(
                f"{self.source}: no header row (the file "
                f"{'is empty' if self.line == 0 else 'holds only blank lines'})",
                source=self.source,
                line=self.line or None,
                help=f"a CSV file starts with a header row naming its columns, {FIELD_LIST}; "
                "nothing was imported",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageImportError(
                f"{self.source}:{self.line}: the header row is not UTF-8 "
                f"({_decode_problem(raw, exc)})",
                source=self.source,
                line=self.line,
                help="nothing was imported; save the file as UTF-8",
            ) from exc
        self.header = parse_csv_header(text, self.source, self.line)
        self._positions = [self.header.index(f) if f in self.header else -1 for f in FIELDS]

    def records(self, validated_at: datetime | None) -> Iterator[Record]:
        """One COPY row per non-blank line; `validated_at` goes to the rejected ones.

        Raises `UsageImportError` for a chain_id that is not an integer and, in JSON lines, a
        key that is not a usage field (the import stops: its transaction writes nothing).
        """
        while (raw := self._next_row_line()) is not None:
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
                help=f"the keys are {FIELD_LIST}; nothing was imported",
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
    return repr(value if len(value) <= SNIPPET_CHARS else value[: SNIPPET_CHARS - 3] + "...")


def _lenient(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _decode_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}"
