"""One line of a usage file as values: the CSV header and lines, and JSON lines.

Values are kept as the text they had in the file: nothing here parses an amount, a stream id or
a timestamp (the keeper's validation does, and keeps what it refuses with a reason). A line
that cannot be read at all raises `MalformedLine`, whose message becomes the detail of the row
rejected with reason `malformed_line`; what makes the whole file unreadable (a bad header, an
unknown JSON key) raises `UsageImportError`.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from keeper.errors import KeeperError

REQUIRED_FIELDS = ("stream_id", "units", "producer_key")
# `endpoint` (the name of the payee's endpoint the usage is billed at) came with price lists:
# files without it import as before.
OPTIONAL_FIELDS = ("label", "observed_at", "chain_id", "endpoint")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
FIELD_LIST = f"{', '.join(REQUIRED_FIELDS)} and optionally {', '.join(OPTIONAL_FIELDS)}"
SNIPPET_CHARS = 80  # of a line or value quoted in a message
_MAX_DEPTH = 20  # arrays and objects inside one JSON line; a usage row needs one
_KNOWN = frozenset(FIELDS)


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
            help=f"the columns are {FIELD_LIST}; nothing was imported",
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
            help=f"the columns are {FIELD_LIST}; nothing was imported",
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
    start = line[:SNIPPET_CHARS]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in start)
    return shown + ("…" if len(line) > SNIPPET_CHARS else "")
