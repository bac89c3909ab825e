"""The usage oracle: from the usage inbox to reports recorded on chain, exactly once.

Producers put rows into `usage_inbox` (INSERT, COPY or `keeper usage import`). A planning pass
then, in two database transactions (step 1, then steps 2 and 3; on three connections the two
run side by side, see `keeper.plan.planner`):

1. **validates** unvalidated rows in id order (`intake`). A row that is malformed (the
   grammar is in the README, "Usage reports"), names an unknown or closed stream (or a closing
   one whose notice period is over), an endpoint its stream cannot be billed at, has units
   outside 1..2^64-1 (StreamManager.MAX_USAGE_UNITS), a time outside its range or repeats a
   producer key already accepted is kept with `verdict = 'rejected'`, a reason code and a
   readable detail: no value a row holds makes the intake raise. An accepted row gets the
   stream's next usage sequence number and its endpoint's id in `usage_reports`, committed
   before any transaction carrying it is signed. A row naming a stream above the highest
   indexed id, or an endpoint its payee has not listed (yet, as far as the index goes), may be
   one the indexer has not reached yet: it waits up to `unknown_stream_grace` seconds before it
   is rejected as unknown.
2. **reconciles** pending reports from the indexed events (`reconcile`): `recorded` from
   UsageRecorded with the charged amount, fee, shortfall and price; `rejected`
   (`stream_closed`) when the stream closed first, or was closing and its close_at passed (as
   of the finalized block) before they were recorded. A reconciliation whose block was
   reorged away is undone first.
3. **plans** `recordUsage` batches (`usage_batches`): per stream, the run of pending reports
   that continues the contract's sequence, never a stream that has usage on its way (so two
   signers never race one stream's sequence), packed whole into batches by payee. A run is
   urgent when its price is about to change or its stream to stop taking usage (a closing
   stream, a pending own price or endpoint price): it goes out before that deadline, above the
   base-fee ceiling too.

Endpoints: a stream on its payee's price list is billed per endpoint, so each of its rows names
one (`usage_inbox.endpoint`, the name the payee published); an own-price stream's row names none
(endpoint 0, its own price) or one its payee listed. A report is one word on chain
(`keeper.plan.batches.pack_usage`): a stream id above 2^64-1 or a sequence number above 2^32-1
cannot be reported, and such rows are rejected.

Exactly-once rests on the contract: a report applies only as `last + 1`. A rebroadcast, a
replacement or a reorged batch that lands again is skipped as a replay; a batch that arrives
ahead of an earlier one is skipped as a gap and its reports, still pending, go out again.
The keeper must be the only oracle reporting on its streams: a sequence number another oracle
used is reported as `sequence_taken`, not charged twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import structlog

from keeper.db import Conn, array_literal, to_int, word_array_literal
from keeper.db.queries import Queries, load_queries
from keeper.plan.batches import MAX_REPORT_ENDPOINT
from keeper.plan.inbox import MAX_SEQ, ParsedRow, Rejection, _parse, _shown

log = structlog.get_logger(__name__)


def intake_lock_key(chain_id: int) -> int:
    """The advisory lock key of a chain's usage intake (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-usage-intake" + chain_id.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StreamState(NamedTuple):
    """What validation needs to know about a stream."""

    status: str  # open, closing or closed
    next_seq: int  # the sequence number the next accepted report gets
    payee: bytes = b""
    price_list: bool = False  # billed at the payee's price list: every report names an endpoint
    close_at: int | None = None  # closing: the chain time from which usage is skipped


@dataclass
class IntakeReport:
    """What one validation pass did."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # rows for a stream or endpoint the indexer may not have reached yet

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
    endpoint: int = 0  # the endpoint's id (0: none)


def _hex(address: bytes) -> str:
    return "0x" + address.hex()


def _closed(stream_id: int, state: StreamState, chain_time: int | None) -> Rejection | None:
    """Why a stream takes no more usage, or None: open, or closing with its notice period
    still running at the indexed head's time."""
    if state.status == "open":
        return None
    if state.status == "closing":
        if state.close_at is None or chain_time is None or chain_time < state.close_at:
            return None
        return Rejection(
            "stream_closed",
            f"stream {stream_id} is closing and took usage until {state.close_at} "
            f"(unix seconds, chain time; the indexed head is at {chain_time})",
        )
    return Rejection("stream_closed", f"stream {stream_id} is closed")


def _endpoint_id(
    parsed: ParsedRow, state: StreamState, endpoints: Mapping[tuple[bytes, str], int]
) -> int | Rejection | None:
    """The endpoint id a row is billed at (0: the stream's own price), a rejection, or None
    when the row names an endpoint its payee has not listed as far as the index goes."""
    if parsed.endpoint is None:
        if state.price_list:
            return Rejection(
                "unknown_endpoint",
                f"stream {parsed.stream_id} is billed at the price list of payee "
                f"{_hex(state.payee)}: the row names no endpoint (name one the payee listed)",
            )
        return 0
    endpoint = endpoints.get((state.payee, parsed.endpoint))
    if endpoint is None:
        return None
    if not 0 < endpoint <= MAX_REPORT_ENDPOINT:
        return Rejection(
            "endpoint_out_of_range",
            f"endpoint {_shown(parsed.endpoint)} of payee {_hex(state.payee)} has id "
            f"{endpoint}, which a usage report cannot carry (1 to {MAX_REPORT_ENDPOINT})",
        )
    return endpoint


def judge(
    rows: Sequence[tuple[int, ParsedRow | Rejection, datetime]],
    streams: dict[int, StreamState],
    accepted_keys: dict[str, int],
    *,
    highest_stream: int,
    now: datetime,
    grace: timedelta,
    endpoints: Mapping[tuple[bytes, str], int] | None = None,
    chain_time: int | None = None,
) -> tuple[list[Verdict], int]:
    """Decide each parsed row in order (pure: the caller reads and writes the database).
    `endpoints` maps (payee, name) to the endpoint's id; `chain_time` is the indexed head's
    timestamp (a closing stream takes usage until its close_at). Returns the verdicts and how
    many rows wait for their stream or endpoint to be indexed. `streams` and `accepted_keys`
    are updated as rows are accepted."""
    listed = endpoints or {}
    verdicts: list[Verdict] = []
    waiting = 0
    for inbox_id, parsed, received_at in rows:
        if isinstance(parsed, Rejection):
            verdicts.append(Verdict(inbox_id, None, rejection=parsed))
            continue
        state = streams.get(parsed.stream_id)
        endpoint: int | Rejection | None = 0
        rejection: Rejection | None = None
        if state is None:
            if parsed.stream_id > highest_stream and now - received_at < grace:
                waiting += 1
                continue
            rejection = Rejection(
                "unknown_stream",
                f"stream {parsed.stream_id} does not exist "
                f"(the highest indexed stream id is {highest_stream})",
            )
        elif (closed := _closed(parsed.stream_id, state, chain_time)) is not None:
            rejection = closed
        elif parsed.producer_key in accepted_keys:
            rejection = Rejection(
                "duplicate_producer_key",
                f"producer_key {_shown(parsed.producer_key)} was already accepted "
                f"(inbox row {accepted_keys[parsed.producer_key]})",
            )
        elif isinstance(endpoint := _endpoint_id(parsed, state, listed), Rejection):
            rejection = endpoint
        elif endpoint is None:
            if now - received_at < grace:
                waiting += 1  # an endpoint added in a block the indexer has not reached
                continue
            rejection = Rejection(
                "unknown_endpoint",
                f"endpoint {_shown(parsed.endpoint or '')} is not listed by payee "
                f"{_hex(state.payee)} (the payee of stream {parsed.stream_id})",
            )
        elif state.next_seq > MAX_SEQ:
            rejection = Rejection(
                "sequence_exhausted",
                f"stream {parsed.stream_id} has used all sequence numbers (1 to {MAX_SEQ})",
            )
        if rejection is None and state is not None and isinstance(endpoint, int):
            verdicts.append(Verdict(inbox_id, parsed, seq=state.next_seq, endpoint=endpoint))
            streams[parsed.stream_id] = state._replace(next_seq=state.next_seq + 1)
            accepted_keys[parsed.producer_key] = inbox_id
        else:
            verdicts.append(Verdict(inbox_id, parsed, rejection=rejection))
    return verdicts, waiting


# Why a pending report is urgent (the deadline it must beat), as `usage_due` names it.
URGENT_REASONS = ("stream_closing", "price_change", "endpoint_price_change")


class UsageItem(NamedTuple):
    """One pending report due to go out (a tuple: a pass builds up to 20,000)."""

    stream_id: int
    units: int
    seq: int
    payee: bytes
    price: int  # the price in force at the indexed head
    endpoint: int = 0
    urgent: str | None = None  # one of URGENT_REASONS: its price or its stream changes soon

    @property
    def item(self) -> list[int]:
        """The batch item: `[stream id, units, seq, endpoint]`."""
        return [self.stream_id, self.units, self.seq, self.endpoint]


# A due row: (stream, seq, units, contract's last seq, payee, price, endpoint, urgent reason).
DueRow = tuple[int, int, int, int, bytes, int, int, str | None]


def contiguous_runs(
    rows: Iterable[DueRow], limit: int
) -> tuple[list[list[UsageItem]], list[tuple[int, int, int]]]:
    """From due rows (`DueRow`) in stream and sequence order: per stream, the run of reports
    that continues the contract's sequence (at most `limit`). Also returns `(stream, expected
    seq, first pending seq)` for streams whose first pending report does not continue the
    sequence (a gap: nothing of theirs can apply)."""
    runs: list[list[UsageItem]] = []
    gaps: list[tuple[int, int, int]] = []
    current: list[UsageItem] = []
    stream: int | None = None
    expected = 0
    for sid, seq, units, last, payee, price, endpoint, urgent in rows:
        if sid != stream:
            if current:
                runs.append(current)
            current, stream, expected = [], sid, last + 1
            if seq != expected:
                gaps.append((sid, expected, seq))
        if seq == expected and len(current) < limit:
            current.append(UsageItem(sid, units, seq, payee, price, endpoint, urgent))
            expected += 1
    if current:
        runs.append(current)
    return runs, gaps


def run_urgency(run: Sequence[UsageItem]) -> str | None:
    """Why a run is urgent (its first urgent report's reason), or None. The whole run is: the
    reports before an urgent one must land first."""
    return next((u.urgent for u in run if u.urgent is not None), None)


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
        context = await conn.fetchrow(self.q["intake_context"], self.chain_id)
        assert context is not None  # a SELECT without FROM: always one row
        now, chain_time, highest = context
        rows = [(int(r["id"]), _parse(r, now), r["received_at"] or now) for r in raw]
        named = sorted({p.stream_id for _, p, _ in rows if isinstance(p, ParsedRow)})
        streams = {
            to_int(s["stream_id"]): StreamState(
                s["status"],
                max(to_int(s["usage_seq"]), to_int(s["assigned_seq"] or 0)) + 1,
                payee=bytes(s["payee"]),
                price_list=bool(s["price_list"]),
                close_at=None if s["close_at"] is None else int(s["close_at"]),
            )
            for s in await conn.fetch(self.q["stream_states"], self.chain_id, array_literal(named))
        }
        wanted = sorted(
            {
                (streams[p.stream_id].payee, p.endpoint)
                for _, p, _ in rows
                if isinstance(p, ParsedRow) and p.endpoint is not None and p.stream_id in streams
            }
        )
        endpoints = {
            (bytes(e["payee"]), e["name"]): to_int(e["endpoint"])
            for e in (
                await conn.fetch(
                    self.q["endpoints_named"],
                    self.chain_id,
                    [payee for payee, _ in wanted],
                    [name for _, name in wanted],
                )
                if wanted
                else ()
            )
        }
        keys = sorted({p.producer_key for _, p, _ in rows if isinstance(p, ParsedRow)})
        accepted_keys = {
            k["producer_key"]: int(k["inbox_id"])
            for k in await conn.fetch(self.q["accepted_keys"], self.chain_id, keys)
        }
        verdicts, report.waiting = judge(
            rows,
            streams,
            accepted_keys,
            highest_stream=to_int(highest or 0),
            now=now,
            grace=self.grace,
            endpoints=endpoints,
            chain_time=None if chain_time is None else int(chain_time),
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
                        Decimal(v.endpoint),
                        v.row.endpoint,
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
                    "endpoint",
                    "endpoint_name",
                ],
            )
        status = await conn.execute(
            self.q["set_verdicts"],
            self.chain_id,
            array_literal(v.inbox_id for v in verdicts),
            word_array_literal("rejected" if v.rejection else "accepted" for v in verdicts),
            word_array_literal(v.rejection.reason if v.rejection else None for v in verdicts),
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
        undone = await self._undo_reorged(conn)
        states = [r["state"] for r in await conn.fetch(self.q["reconcile_recorded"], self.chain_id)]
        closed = await conn.execute(self.q["reconcile_closed"], self.chain_id)
        closing = await conn.execute(self.q["reconcile_closing"], self.chain_id)
        return {
            "undone": undone,
            "recorded": states.count("recorded"),
            "rejected": states.count("rejected")
            + int(closed.split()[-1])
            + int(closing.split()[-1]),
        }

    async def _undo_reorged(self, conn: Conn) -> int:
        """Make pending again the reports reconciled from events a reorg took away; how many.
        Only a reorg deletes indexed events, and it records itself in `reorgs` in the same
        transaction: the reports above the finalized block are searched only when a reorg
        newer than the last one handled is there (`usage_reorgs_checked`, written in this
        transaction, so a rolled-back pass looks again). A reorg committed after the check
        is newer than what is marked: the next pass handles it."""
        row = await conn.fetchrow(self.q["reorgs_unchecked"], self.chain_id)
        assert row is not None  # a SELECT without FROM: always one row
        latest, checked = row
        if checked is not None and latest <= checked:
            return 0
        finalized = await conn.fetchval(self.q["finalized_block"], self.chain_id)
        undone = await conn.execute(
            self.q["unreconcile_reorged"], self.chain_id, -1 if finalized is None else finalized
        )
        await conn.execute(self.q["mark_reorgs_checked"], self.chain_id, latest)
        return int(undone.split()[-1])

    async def due(self, conn: Conn, per_stream: int) -> list[list[UsageItem]]:
        """Per stream, the pending reports that can go out now (at most `per_stream` each)."""
        rows = await conn.fetch(self.q["usage_due"], self.chain_id, self.due_per_pass)
        # Numbers come as text (usage.sql): int() of one is exact.
        runs, gaps = contiguous_runs(
            (
                (int(sid), int(seq), int(units), int(last), payee, int(price), int(ep), urgent)
                for sid, seq, units, last, payee, ep, price, urgent in rows
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
