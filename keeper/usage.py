"""The usage oracle: from the usage inbox to reports recorded on chain, exactly once.

Producers put rows into `usage_inbox` (INSERT, COPY or `keeper usage import`). A planning pass
then, in one database transaction:

1. **validates** unvalidated rows in id order (`intake`). A row that is malformed, names an
   unknown or closed stream, has units outside 1..2^64-1 (StreamManager.MAX_USAGE_UNITS) or
   repeats a producer key already accepted is kept with `verdict = 'rejected'`, a reason code
   and a readable detail. An accepted row gets the stream's next usage sequence number in
   `usage_reports`, committed before any transaction carrying it is signed. A row naming a
   stream above the highest indexed id may be a stream the indexer has not reached yet: it
   waits up to `unknown_stream_grace` seconds before it is rejected as unknown.
2. **reconciles** pending reports from the indexed events (`reconcile`): `recorded` from
   UsageRecorded with the charged amount, fee and shortfall; `rejected` (`stream_closed`) when
   the stream closed first. A reconciliation whose block was reorged away is undone first.
3. **plans** `recordUsageBatch` batches (`usage_batches`): per stream, the run of pending
   reports that continues the contract's sequence, never a stream that has usage on its way
   (so two signers never race one stream's sequence), packed whole into batches by payee.

Exactly-once rests on the contract: a report applies only as `last + 1`. A rebroadcast, a
replacement or a reorged batch that lands again is skipped as a replay; a batch that arrives
ahead of an earlier one is skipped as a gap and its reports, still pending, go out again.
The keeper must be the only oracle reporting on its streams: a sequence number another oracle
used is reported as `sequence_taken`, not charged twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog
from eth_abi.abi import encode
from eth_utils import keccak

from keeper.db import Conn, to_int
from keeper.queries import Queries, load_queries
from keeper.rpc import ChainClient

log = structlog.get_logger(__name__)

MAX_USAGE_UNITS = 2**64 - 1  # StreamManager.MAX_USAGE_UNITS
MAX_SEQ = 2**48 - 1  # the contract keeps a stream's usage sequence in 48 bits
MAX_UINT256 = 2**256 - 1
MAX_KEY_LENGTH = 200
MAX_LABEL_LENGTH = 200

_INTEGER = re.compile(r"[+-]?[0-9]+")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


ORACLE_ROLE = keccak(text="ORACLE_ROLE")
_HAS_ROLE = keccak(text="hasRole(bytes32,address)")[:4]


async def signers_without_oracle_role(
    client: ChainClient, stream_manager: str, signers: Sequence[str]
) -> list[str]:
    """The signers (addresses) that may not call recordUsageBatch."""
    lacking = []
    for address in signers:
        data = _HAS_ROLE + encode(["bytes32", "address"], [ORACLE_ROLE, address])
        answer = await client.request(
            "eth_call", [{"to": stream_manager, "data": "0x" + data.hex()}, "latest"]
        )
        if int(answer, 16) == 0:
            lacking.append(address)
    return lacking


def intake_lock_key(chain_id: int) -> int:
    """The advisory lock key of a chain's usage intake (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-usage-intake" + chain_id.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _integer(name: str, value: str | None) -> int | Rejection:
    if value is None or not value.strip():
        return Rejection(f"missing_{name}", f"{name} is empty")
    text = value.strip()
    if not _INTEGER.fullmatch(text) or len(text.lstrip("+-")) > 78:
        return Rejection(f"malformed_{name}", f"{name} {_shown(value)} is not a whole number")
    return int(text)


def _observed_at(value: str | None, received_at: datetime) -> datetime | Rejection:
    if value is None or not value.strip():
        return received_at
    text = value.strip()
    try:
        if _UNIX_SECONDS.fullmatch(text):
            return datetime.fromtimestamp(0, UTC) + timedelta(seconds=float(text))
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return Rejection(
            "malformed_observed_at",
            f"observed_at {_shown(value)} is neither an ISO 8601 time nor unix seconds",
        )
    if parsed.tzinfo is None:
        return Rejection(
            "malformed_observed_at", f"observed_at {_shown(value)} has no time zone offset"
        )
    return parsed


def parse_row(
    stream_id: str | None,
    units: str | None,
    producer_key: str | None,
    label: str | None,
    observed_at: str | None,
    received_at: datetime,
) -> ParsedRow | Rejection:
    """Check one inbox row's fields (not yet against the chain)."""
    if producer_key is None or not producer_key.strip():
        return Rejection("missing_producer_key", "producer_key is empty")
    if len(producer_key) > MAX_KEY_LENGTH:
        return Rejection(
            "malformed_producer_key",
            f"producer_key is {len(producer_key)} characters (at most {MAX_KEY_LENGTH})",
        )
    sid = _integer("stream_id", stream_id)
    if isinstance(sid, Rejection):
        return sid
    if not 0 < sid <= MAX_UINT256:
        return Rejection("malformed_stream_id", f"stream_id {sid} is not a stream id")
    count = _integer("units", units)
    if isinstance(count, Rejection):
        return count
    if count <= 0:
        return Rejection("units_not_positive", f"units {count} is not positive")
    if count > MAX_USAGE_UNITS:
        return Rejection(
            "units_out_of_range",
            f"units {count} is above the contract's maximum per report ({MAX_USAGE_UNITS})",
        )
    if label is not None and len(label) > MAX_LABEL_LENGTH:
        return Rejection(
            "malformed_label", f"label is {len(label)} characters (at most {MAX_LABEL_LENGTH})"
        )
    when = _observed_at(observed_at, received_at)
    if isinstance(when, Rejection):
        return when
    return ParsedRow(sid, count, producer_key, label, when)


@dataclass(frozen=True)
class StreamState:
    """What validation needs to know about a stream."""

    status: str
    next_seq: int  # the sequence number the next accepted report gets


@dataclass
class IntakeReport:
    """What one validation pass did."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # rows for a stream the indexer may not have reached yet

    @property
    def validated(self) -> int:
        return self.accepted + sum(self.rejected.values())


@dataclass(frozen=True)
class Verdict:
    """One row's outcome: accepted with a sequence number, or rejected."""

    inbox_id: int
    row: ParsedRow | None
    seq: int | None = None
    rejection: Rejection | None = None


def judge(
    rows: Sequence[tuple[int, ParsedRow | Rejection, datetime]],
    streams: dict[int, StreamState],
    accepted_keys: dict[str, int],
    *,
    highest_stream: int,
    now: datetime,
    grace: timedelta,
) -> tuple[list[Verdict], int]:
    """Decide each parsed row in order (pure: the caller reads and writes the database).
    Returns the verdicts and how many rows wait for their stream to be indexed. `streams` and
    `accepted_keys` are updated as rows are accepted."""
    verdicts: list[Verdict] = []
    waiting = 0
    for inbox_id, parsed, received_at in rows:
        if isinstance(parsed, Rejection):
            verdicts.append(Verdict(inbox_id, None, rejection=parsed))
            continue
        state = streams.get(parsed.stream_id)
        if state is None:
            if parsed.stream_id > highest_stream and received_at + grace > now:
                waiting += 1
                continue
            rejection = Rejection(
                "unknown_stream",
                f"stream {parsed.stream_id} does not exist "
                f"(the highest indexed stream id is {highest_stream})",
            )
        elif state.status != "open":
            rejection = Rejection("stream_closed", f"stream {parsed.stream_id} is closed")
        elif parsed.producer_key in accepted_keys:
            rejection = Rejection(
                "duplicate_producer_key",
                f"producer_key {_shown(parsed.producer_key)} was already accepted "
                f"(inbox row {accepted_keys[parsed.producer_key]})",
            )
        elif state.next_seq > MAX_SEQ:
            rejection = Rejection(
                "sequence_exhausted", f"stream {parsed.stream_id} has used all sequence numbers"
            )
        else:
            verdicts.append(Verdict(inbox_id, parsed, seq=state.next_seq))
            streams[parsed.stream_id] = StreamState(state.status, state.next_seq + 1)
            accepted_keys[parsed.producer_key] = inbox_id
            continue
        verdicts.append(Verdict(inbox_id, parsed, rejection=rejection))
    return verdicts, waiting


@dataclass(frozen=True)
class UsageItem:
    """One pending report due to go out."""

    stream_id: int
    units: int
    seq: int
    payee: bytes
    price: int

    @property
    def item(self) -> list[int]:
        """The batch item: `[stream id, units, seq]`."""
        return [self.stream_id, self.units, self.seq]


def contiguous_runs(
    rows: Iterable[tuple[int, int, int, int, bytes, int]], limit: int
) -> tuple[list[list[UsageItem]], list[tuple[int, int, int]]]:
    """From due rows `(stream, seq, units, contract's last seq, payee, price)` in stream and
    sequence order: per stream, the run of reports that continues the contract's sequence (at
    most `limit`). Also returns `(stream, expected seq, first pending seq)` for streams whose
    first pending report does not continue the sequence (a gap: nothing of theirs can apply)."""
    runs: list[list[UsageItem]] = []
    gaps: list[tuple[int, int, int]] = []
    current: list[UsageItem] = []
    stream: int | None = None
    expected = 0
    for sid, seq, units, last, payee, price in rows:
        if sid != stream:
            if current:
                runs.append(current)
            current, stream, expected = [], sid, last + 1
            if seq != expected:
                gaps.append((sid, expected, seq))
        if seq == expected and len(current) < limit:
            current.append(UsageItem(sid, units, seq, payee, price))
            expected += 1
    if current:
        runs.append(current)
    return runs, gaps


def pack_runs(runs: Sequence[list[UsageItem]], size: int) -> list[list[UsageItem]]:
    """Pack whole runs (each at most `size`) into batches of at most `size` items, in payee
    order so the contract folds each payee's credits into one write."""
    batches: list[list[UsageItem]] = []
    current: list[UsageItem] = []
    for run in sorted(runs, key=lambda r: (r[0].payee, r[0].stream_id)):
        if current and len(current) + len(run) > size:
            batches.append(current)
            current = []
        current.extend(run)
    if current:
        batches.append(current)
    return batches


class UsageOracle:
    """Intake, reconciliation and due reports of one chain's usage."""

    def __init__(
        self,
        chain_id: int,
        *,
        intake_per_pass: int = 5_000,
        due_per_pass: int = 20_000,
        unknown_stream_grace: float = 300.0,
        queries: Queries | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.intake_per_pass = intake_per_pass
        self.due_per_pass = due_per_pass
        self.grace = timedelta(seconds=unknown_stream_grace)
        self.q = queries or load_queries("usage.sql")
        self.log = log.bind(chain_id=chain_id)

    async def intake(self, conn: Conn) -> IntakeReport:
        """Validate up to `intake_per_pass` unvalidated rows; run inside a transaction."""
        report = IntakeReport()
        await conn.execute(self.q["lock_intake"], intake_lock_key(self.chain_id))
        raw = await conn.fetch(self.q["unvalidated"], self.chain_id, self.intake_per_pass)
        if not raw:
            return report
        rows = [
            (
                int(r["id"]),
                parse_row(
                    r["stream_id"],
                    r["units"],
                    r["producer_key"],
                    r["label"],
                    r["observed_at"],
                    r["received_at"],
                ),
                r["received_at"],
            )
            for r in raw
        ]
        named = sorted({p.stream_id for _, p, _ in rows if isinstance(p, ParsedRow)})
        streams = {
            to_int(s["stream_id"]): StreamState(
                s["status"],
                max(to_int(s["usage_seq"]), to_int(s["assigned_seq"] or 0)) + 1,
            )
            for s in await conn.fetch(
                self.q["stream_states"], self.chain_id, [Decimal(i) for i in named]
            )
        }
        keys = sorted({p.producer_key for _, p, _ in rows if isinstance(p, ParsedRow)})
        accepted_keys = {
            k["producer_key"]: int(k["inbox_id"])
            for k in await conn.fetch(self.q["accepted_keys"], self.chain_id, keys)
        }
        highest = await conn.fetchval(self.q["highest_stream"], self.chain_id)
        now = await conn.fetchval(self.q["transaction_time"])
        verdicts, report.waiting = judge(
            rows,
            streams,
            accepted_keys,
            highest_stream=to_int(highest or 0),
            now=now,
            grace=self.grace,
        )
        accepted = [v for v in verdicts if v.rejection is None]
        if accepted:
            await conn.copy_records_to_table(
                "usage_reports",
                records=[
                    (
                        v.inbox_id,
                        self.chain_id,
                        Decimal(v.row.stream_id),
                        Decimal(v.seq),
                        Decimal(v.row.units),
                        v.row.producer_key,
                        v.row.label,
                        v.row.observed_at,
                    )
                    for v in accepted
                    if v.row is not None and v.seq is not None
                ],
                columns=[
                    "inbox_id",
                    "chain_id",
                    "stream_id",
                    "seq",
                    "units",
                    "producer_key",
                    "label",
                    "observed_at",
                ],
            )
        status = await conn.execute(
            self.q["set_verdicts"],
            self.chain_id,
            [v.inbox_id for v in verdicts],
            ["rejected" if v.rejection else "accepted" for v in verdicts],
            [v.rejection.reason if v.rejection else None for v in verdicts],
            [v.rejection.detail if v.rejection else None for v in verdicts],
        )
        if int(status.split()[-1]) != len(verdicts):
            # Only possible if a validator ran without the intake lock: refuse to go on.
            raise RuntimeError("usage rows were validated concurrently; rolling back")
        report.accepted = len(accepted)
        for v in verdicts:
            if v.rejection is not None:
                reason = v.rejection.reason
                report.rejected[reason] = report.rejected.get(reason, 0) + 1
        return report

    async def reconcile(self, conn: Conn) -> dict[str, int]:
        """Bring pending reports up to date with the indexed events; run inside a
        transaction. Returns counts: `undone` (reorged away), `recorded`, `rejected`."""
        finalized = await conn.fetchval(self.q["finalized_block"], self.chain_id)
        undone = await conn.execute(
            self.q["unreconcile_reorged"], self.chain_id, -1 if finalized is None else finalized
        )
        states = [r["state"] for r in await conn.fetch(self.q["reconcile_recorded"], self.chain_id)]
        closed = await conn.execute(self.q["reconcile_closed"], self.chain_id)
        return {
            "undone": int(undone.split()[-1]),
            "recorded": states.count("recorded"),
            "rejected": states.count("rejected") + int(closed.split()[-1]),
        }

    async def due(self, conn: Conn, per_stream: int) -> list[list[UsageItem]]:
        """Per stream, the pending reports that can go out now (at most `per_stream` each)."""
        rows = await conn.fetch(self.q["usage_due"], self.chain_id, self.due_per_pass)
        runs, gaps = contiguous_runs(
            (
                (
                    to_int(r["stream_id"]),
                    to_int(r["seq"]),
                    to_int(r["units"]),
                    to_int(r["usage_seq"]),
                    bytes(r["payee"]),
                    to_int(r["price"]),
                )
                for r in rows
            ),
            per_stream,
        )
        for stream_id, expected, first in gaps:
            # Cannot happen while the keeper is the stream's only oracle and its reports are
            # kept: loud, since the stream's usage cannot be charged until it is resolved.
            self.log.error(
                "usage_sequence_gap", stream_id=stream_id, expected_seq=expected, first_seq=first
            )
        return runs
