"""The usage inbox's row grammar: every value a producer can write parses or is rejected with its
reason, and nothing a row holds makes the intake raise (README, "Usage reports").

Numbers (stream_id, units, chain_id) are ASCII digits with an optional sign and only ASCII
whitespace around them; observed_at is unix seconds or RFC 3339 within
[EARLIEST_OBSERVED_AT, received_at + OBSERVED_AT_SKEW]. `keeper usage import` reads files with the
same grammar, and the intake (`keeper.plan.usage`) judges parsed rows against the index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, UTC, datetime, timedelta
from typing import Any

from keeper.plan.accrual import MAX_USAGE_SEQ
from keeper.plan.batches import MAX_REPORT_SEQ, MAX_REPORT_STREAM_ID

# ASCII whitespace, the only kind a value may have around it (what PostgreSQL's integer input
# skips too); Python's str.strip() would also take NBSP, U+3000 and the like.
WHITESPACE = " \t\n\v\f\r"

# A whole number: PostgreSQL's integer syntax before version 16 (no 0x…, no 1_000). `[0-9]`,
# not `\d`, which would take any script's digits (so does int(): '\u0665' is 5 to it).
_WHOLE = re.compile(r"([+-]?)([0-9]+)")

# Significant digits read exactly; a longer number is beyond every range the keeper checks
# (2^256 has 78 digits) and comes back as ±10^HUGE_DIGITS, so its length is never why it is
# refused, and int() never meets thousands of digits (it refuses more than 4,300).
HUGE_DIGITS = 80

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def blank(value: str | None) -> bool:
    """Whether a field is missing: NULL, empty, or nothing but ASCII whitespace."""
    return value is None or not value.strip(WHITESPACE)


def whole_number(text: str) -> int | None:
    """The integer `text` writes, or None if it is not a whole number.

    A whole number is optional ASCII whitespace, an optional sign, one or more ASCII digits 0-9
    (leading zeros allowed, any number of them) and optional ASCII whitespace again. A value
    of more than `HUGE_DIGITS` significant digits is returned as ±10**HUGE_DIGITS.
    """
    match = _WHOLE.fullmatch(text.strip(WHITESPACE))
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    value = 10**HUGE_DIGITS if len(digits) > HUGE_DIGITS else int(digits)
    return -value if sign == "-" else value


def parse_chain_id(text: str) -> int | None:
    """The integer a chain_id value reads as (a whole number in bigint's range), else None."""
    value = whole_number(text)
    return value if value is not None and _BIGINT_MIN <= value <= _BIGINT_MAX else None


MAX_USAGE_UNITS = 2**64 - 1  # StreamManager.MAX_USAGE_UNITS

# The contract keeps a stream's usage sequence in 32 bits (StreamManager.MAX_USAGE_SEQ), and a
# report word carries 32.
MAX_SEQ = min(MAX_USAGE_SEQ, MAX_REPORT_SEQ)

MAX_ENDPOINT_NAME_BYTES = 32  # an endpoint's name is a bytes32 on chain

MAX_KEY_LENGTH = 200

MAX_LABEL_LENGTH = 200

# The range of observed_at (and of received_at, which a producer may set too): not before the
# start of Ethereum (no chain the keeper serves has blocks from earlier), and not more than
# OBSERVED_AT_SKEW after the row arrived (a producer's clock may run a little ahead of the
# database's). Both keep every accepted time well inside what Python and PostgreSQL hold.
EARLIEST_OBSERVED_AT = datetime(2015, 7, 30, tzinfo=UTC)

OBSERVED_AT_SKEW = timedelta(minutes=5)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_UNIX_SECONDS = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]+))?")

# RFC 3339, also with a space for the T and an offset of hours only or with seconds, as
# PostgreSQL prints a timestamptz (`2026-11-21 10:00:00.5+00`); `[0-9]`: ASCII digits only.
_TIMESTAMP = re.compile(
    r"(?P<year>[0-9]{4,})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}(?::[0-9]{2}(?::[0-9]{2})?|[0-9]{2})?)?"
)

_NUMBER_GRAMMAR = "ASCII digits, optionally signed, with only ASCII whitespace around them"


@dataclass(frozen=True)
class Rejection:
    """Why a usage row is not charged: a stable code and a readable detail."""

    reason: str
    detail: str


@dataclass(frozen=True)
class ParsedRow:
    """A usage row's fields, well-formed."""

    stream_id: int
    units: int
    producer_key: str
    label: str | None
    observed_at: datetime
    endpoint: str | None = None  # the endpoint's name; None: none named


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _whole(name: str, value: str | None) -> int | Rejection:
    if value is None or blank(value):
        return Rejection(f"missing_{name}", f"{name} is empty")
    number = whole_number(value)
    if number is None:
        return Rejection(
            f"malformed_{name}", f"{name} {_shown(value)} is not a whole number ({_NUMBER_GRAMMAR})"
        )
    return number


def _written(number: int, value: str) -> str:
    """A number for a detail: its digits, or the start of the value when it has too many."""
    return str(number) if abs(number) < 10**HUGE_DIGITS else _shown(value.strip(WHITESPACE))


# Stand-ins for times before or after what Python's datetime holds (both out of range).
_TOO_EARLY = datetime.min.replace(tzinfo=UTC)

_TOO_LATE = datetime.max.replace(tzinfo=UTC)


def _from_unix(whole: str, fraction: str) -> datetime:
    magnitude = abs(whole_number(whole) or 0)
    micros = magnitude * 10**6 + int(fraction[:6].ljust(6, "0"))  # finer digits are dropped
    if whole.startswith("-"):
        micros = -micros
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return _TOO_EARLY if micros < 0 else _TOO_LATE


def _from_timestamp(m: re.Match[str]) -> datetime | str:
    """The time a `_TIMESTAMP` match names, or what is wrong with it."""
    if m["offset"] is None:
        return "has no time zone offset (add Z or +HH:MM)"
    offset = timedelta(0)
    if m["offset"] not in ("Z", "z"):
        digits = m["offset"][1:].replace(":", "")
        hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            return "has an offset that is not a time zone offset"
        offset = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        if m["offset"][0] == "-":
            offset = -offset
    digits = m["year"].lstrip("0")
    year = int(digits or 0) if len(digits) <= 4 else MAXYEAR + 1
    try:
        # A year Python cannot hold is checked in a leap year: out of range if it is a date.
        local = datetime(
            year if MINYEAR <= year <= MAXYEAR else 2000,
            int(m["month"]),
            int(m["day"]),
            int(m["hour"]),
            int(m["minute"]),
            int(m["second"] or 0),
            int((m["fraction"] or "")[:6].ljust(6, "0")),  # finer digits are dropped
            tzinfo=UTC,
        )
    except ValueError:
        return "is not a valid date and time"
    if year < MINYEAR:
        return _TOO_EARLY
    if year > MAXYEAR:
        return _TOO_LATE
    try:
        return local - offset
    except OverflowError:
        return _TOO_EARLY if offset > timedelta(0) else _TOO_LATE


def _observed_at(value: str | None, received_at: datetime) -> datetime | Rejection:
    if value is None or blank(value):
        return received_at
    text = value.strip(WHITESPACE)
    when: datetime | str
    if (unix := _UNIX_SECONDS.fullmatch(text)) is not None:
        when = _from_unix(unix[1], unix[2] or "")
    elif (stamp := _TIMESTAMP.fullmatch(text)) is not None:
        when = _from_timestamp(stamp)
    else:
        when = "is neither an RFC 3339 time (2026-11-21T10:00:00Z) nor unix seconds"
    if isinstance(when, str):
        return Rejection("malformed_observed_at", f"observed_at {_shown(value)} {when}")
    if when < EARLIEST_OBSERVED_AT:
        return Rejection(
            "observed_at_out_of_range",
            f"observed_at {_shown(value)} is before {EARLIEST_OBSERVED_AT:%Y-%m-%d}, "
            "the earliest accepted",
        )
    if when > received_at + OBSERVED_AT_SKEW:
        return Rejection(
            "observed_at_out_of_range",
            f"observed_at {_shown(value)} is more than {_duration(OBSERVED_AT_SKEW)} after "
            f"the row arrived (received_at {received_at.isoformat()})",
        )
    return when


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"


def received_at_out_of_range(received_at: str) -> Rejection:
    """The rejection of a row whose received_at (which a producer may set) is not a time it can
    have arrived at: before EARLIEST_OBSERVED_AT or more than OBSERVED_AT_SKEW from now."""
    return Rejection(
        "received_at_out_of_range",
        f"received_at {_shown(received_at)} is not a time the row can have arrived at "
        f"(from {EARLIEST_OBSERVED_AT:%Y-%m-%d} to {_duration(OBSERVED_AT_SKEW)} from now); "
        "leave received_at to its default",
    )


def parse_row(
    stream_id: str | None,
    units: str | None,
    producer_key: str | None,
    label: str | None,
    observed_at: str | None,
    received_at: datetime,
    endpoint: str | None = None,
) -> ParsedRow | Rejection:
    """Check one inbox row's fields (not yet against the chain). `received_at` must be a time
    the row can have arrived at (the intake rejects other rows with
    `received_at_out_of_range` first). Nothing a field holds makes this raise."""
    if producer_key is None or blank(producer_key):
        return Rejection("missing_producer_key", "producer_key is empty")
    if len(producer_key) > MAX_KEY_LENGTH:
        return Rejection(
            "malformed_producer_key",
            f"producer_key is {len(producer_key)} characters (at most {MAX_KEY_LENGTH})",
        )
    sid = _whole("stream_id", stream_id)
    if isinstance(sid, Rejection):
        return sid
    if not 0 < sid <= MAX_REPORT_STREAM_ID:
        return Rejection(
            "stream_id_out_of_range",
            f"stream_id {_written(sid, stream_id or '')} is not a stream id a usage report can "
            "carry (1 to 2^64-1)",
        )
    count = _whole("units", units)
    if isinstance(count, Rejection):
        return count
    if count <= 0:
        return Rejection(
            "units_not_positive", f"units {_written(count, units or '')} is not positive"
        )
    if count > MAX_USAGE_UNITS:
        return Rejection(
            "units_out_of_range",
            f"units {_written(count, units or '')} is above the contract's maximum per report "
            f"({MAX_USAGE_UNITS})",
        )
    if label is not None and len(label) > MAX_LABEL_LENGTH:
        return Rejection(
            "malformed_label", f"label is {len(label)} characters (at most {MAX_LABEL_LENGTH})"
        )
    name = _endpoint_name(endpoint)
    if isinstance(name, Rejection):
        return name
    when = _observed_at(observed_at, received_at)
    if isinstance(when, Rejection):
        return when
    return ParsedRow(sid, count, producer_key, label, when, name)


def _endpoint_name(value: str | None) -> str | Rejection | None:
    """The endpoint a row names, exactly as written (names are matched as the payee published
    them); None when blank."""
    if value is None or blank(value):
        return None
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_ENDPOINT_NAME_BYTES:
        return Rejection(
            "malformed_endpoint",
            f"endpoint {_shown(value)} is {size} bytes in UTF-8 (an endpoint's name is at most "
            f"{MAX_ENDPOINT_NAME_BYTES})",
        )
    return value


def _parse(row: Mapping[str, Any], now: datetime) -> ParsedRow | Rejection:
    """An `unvalidated` row checked (its received_at is NULL when Python cannot hold it)."""
    received_at = row["received_at"]
    if received_at is None or not EARLIEST_OBSERVED_AT <= received_at <= now + OBSERVED_AT_SKEW:
        return received_at_out_of_range(row["received_text"])
    return parse_row(
        row["stream_id"],
        row["units"],
        row["producer_key"],
        row["label"],
        row["observed_at"],
        received_at,
        row["endpoint"],
    )
