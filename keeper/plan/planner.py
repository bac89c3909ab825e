"""The planners: from the indexed state, the on-chain work that is due, as outbox intents.

One pass reads what is due from the operator views themselves (`keeper.streams_due`,
`keeper.escrows_refundable`), so what an operator sees there is exactly what the pass plans:

- **settle**: streams due by the settle rule (depleting within the horizon: urgent; accrued at
  least the minimum; not settled for the maximum interval), most urgent first, then the
  largest amounts;
- **refund**: open escrows whose `expiresAt` is at or before the indexed head's timestamp
  (chain time, never the wall clock), most overdue first;
- **usage** (when enabled): the usage inbox validated, pending reports reconciled and the
  reports that continue each stream's sequence batched (see `keeper.plan.usage`); a stream's run
  is urgent when a deadline is near: the stream is closing (its notice period runs out at
  close_at) or the price its reports are billed at has a change pending.

Due items are cut into batches sized by gas (`max_batch_gas`, a per-item estimate and a fixed
overhead). Within a batch the streams are ordered by payee: the contract folds a run of one
payee into one ledger write, which is the cheapest order. Above `base_fee_ceiling` only urgent
work is planned. A closing stream is never settled: its rate is 0 from the close request, and
its final close settles and refunds it. An item already in an unfinished intent, or backed off
after it reverted or had no effect, is not in the views, so it is never planned twice.

Each batch becomes an intent whose idempotency key is derived from its kind, block and items:
re-running a pass (after a crash between two intents, say) reports the batches it already
planned as `AlreadyPlanned`.

The daemon runs a pass on three connections at once (`[plan] pass_connections`): the usage
intake, the settle and refund planning and the usage planning are independent transactions
over different rows, so Python and PostgreSQL work side by side (`make bench-plan`'s worst case
takes about half as long as on one connection: 0.8 s at 1,000,000 streams).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import structlog
from prometheus_client import Counter

from keeper import metrics
from keeper.config import PlanConfig
from keeper.db import Conn
from keeper.db.outbox import AlreadyPlanned, IntentRequest, Outbox, Planned
from keeper.db.queries import Queries, load_queries
from keeper.loops import OUTAGES
from keeper.plan.batches import batch_size, encode_batch, item_key, usage_key
from keeper.plan.usage import (
    URGENT_REASONS,
    IntakeReport,
    UsageItem,
    UsageOracle,
    pack_runs,
    run_urgency,
)

log = structlog.get_logger(__name__)

USAGE_URGENT = Counter(
    "keeper_usage_urgent_total",
    "Usage reports planned as urgent, by the deadline they beat: stream_closing, price_change "
    "or endpoint_price_change (the other reports of their stream's run are not counted).",
    ["reason"],
    registry=metrics.REGISTRY,
)
for _reason in URGENT_REASONS:
    USAGE_URGENT.labels(reason=_reason)


class DueItem(NamedTuple):
    """One item due, with why (a tuple: a pass builds tens of thousands)."""

    item: int
    reason: str
    urgent: bool
    amount: int  # accrued now (settle) or the escrowed amount (refund)
    group: bytes = b""  # payee (settle): batch order


@dataclass
class Batch:
    """One planned call."""

    kind: str
    target: str
    items: list[Any]  # ids, or [stream id, units, seq, endpoint] for usage
    reasons: dict[str, str]  # by item_key
    urgent: bool
    amount: int
    block: int

    @property
    def key(self) -> str:
        """The idempotency key: kind, block and a digest of the items."""
        names = ",".join(item_key(self.kind, i) for i in self.items)
        digest = hashlib.sha256(names.encode()).hexdigest()[:16]
        return f"{self.kind}:{self.block}:{len(self.items)}:{digest}"

    @property
    def calldata(self) -> bytes:
        """The batch call's calldata."""
        return encode_batch(self.kind, self.items)


@dataclass
class PassReport:
    """What one planning pass found and planned."""

    block: int | None = None
    due: dict[str, int] = field(default_factory=dict)
    planned: list[Batch] = field(default_factory=list)
    already_planned: int = 0
    held_by_base_fee: int = 0
    intake: IntakeReport | None = None
    reconciled: dict[str, int] = field(default_factory=dict)
    # An unexpected error of the usage part of the pass (intake, reconciliation or planning):
    # contained, so that settlement and refunds are planned all the same.
    usage_error: Exception | None = None


def cut_batches(
    kind: str,
    target: str,
    due: Sequence[DueItem],
    size: int,
    block: int,
    *,
    urgent_only: bool = False,
) -> list[Batch]:
    """Cut `due` (already most-urgent first) into batches of at most `size` items. Urgent and
    ordinary items never share a batch, so an urgent batch is small enough to go out first and
    a budget or base-fee hold on ordinary work never holds an urgent item back."""
    batches: list[Batch] = []
    for urgent in (True, False):
        part = [d for d in due if d.urgent is urgent]
        if not part or (urgent_only and not urgent):
            continue
        for start in range(0, len(part), size):
            chunk = sorted(part[start : start + size], key=lambda d: (d.group, d.item))
            batches.append(
                Batch(
                    kind=kind,
                    target=target,
                    items=[d.item for d in chunk],
                    reasons={str(d.item): d.reason for d in chunk},
                    urgent=urgent,
                    amount=sum(d.amount for d in chunk),
                    block=block,
                )
            )
    return batches


class Planner:
    """The settle and refund planners of one chain."""

    def __init__(
        self,
        chain_id: int,
        *,
        stream_manager: str,
        escrow_vault: str,
        settings: PlanConfig | None = None,
        usage: bool = True,
        queries: Queries | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.stream_manager = stream_manager
        self.escrow_vault = escrow_vault
        self.settings = settings or PlanConfig()
        self.q = queries or load_queries("planner.sql")
        self.outbox = Outbox(chain_id)
        self.log = log.bind(chain_id=chain_id)
        s = self.settings
        self.usage = (
            UsageOracle(
                chain_id,
                intake_per_pass=s.usage_intake_per_pass,
                unknown_stream_grace=s.unknown_stream_grace,
            )
            if usage
            else None
        )

    async def store_settings(self, conn: Conn) -> None:
        """Write the settle rule's thresholds where `keeper.streams_due` reads them."""
        s = self.settings
        await conn.execute(
            self.q["upsert_settings"],
            self.chain_id,
            Decimal(s.settle_min_amount),
            s.settle_max_interval,
            s.settle_horizon,
            s.backoff_seconds,
        )

    async def backfill_done(self, conn: Conn) -> bool:
        """Whether the indexer has finished its backfill (planning waits for it)."""
        return bool(await conn.fetchval(self.q["backfill_done"], self.chain_id))

    async def due(self, conn: Conn) -> tuple[int | None, list[DueItem], list[DueItem]]:
        """(indexed block, settle items due, refund items due), most urgent first."""
        block = await conn.fetchval(self.q["indexed_block"], self.chain_id)
        # Numbers come as text (planner.sql): int() of one is exact.
        settle = [
            DueItem(int(sid), reason, urgent, int(amount), bytes.fromhex(payee[2:]))
            for sid, payee, reason, urgent, amount in await conn.fetch(
                self.q["streams_due"], self.chain_id
            )
        ]
        refund = [
            DueItem(int(eid), "expired", False, int(amount))
            for eid, amount in await conn.fetch(self.q["escrows_refundable"], self.chain_id)
        ]
        return (None if block is None else int(block)), settle, refund

    def batches(
        self,
        block: int,
        settle: Sequence[DueItem],
        refund: Sequence[DueItem],
        base_fee: int | None,
    ) -> tuple[list[Batch], int]:
        """The batches a pass plans, and how many items the base-fee ceiling held back."""
        s = self.settings
        urgent_only = self.urgent_only(base_fee)
        batches = cut_batches(
            "settle",
            self.stream_manager,
            settle,
            batch_size("settle", s.max_batch_gas),
            block,
            urgent_only=urgent_only,
        )
        if not urgent_only:
            batches += cut_batches(
                "refund", self.escrow_vault, refund, batch_size("refund", s.max_batch_gas), block
            )
        held = 0
        if urgent_only:
            held = sum(1 for d in settle if not d.urgent) + len(refund)
        return batches, held

    def urgent_only(self, base_fee: int | None) -> bool:
        """Whether `base_fee` is above the ceiling, where only urgent work goes out."""
        ceiling = self.settings.base_fee_ceiling_wei
        return ceiling is not None and base_fee is not None and base_fee > ceiling

    def usage_batches(
        self, block: int, runs: Sequence[list[UsageItem]], *, urgent_only: bool = False
    ) -> list[Batch]:
        """`recordUsage` batches of whole per-stream runs, by payee: the urgent runs first, in
        batches of their own (as `cut_batches` keeps urgent settlements apart), and no others
        when `urgent_only`. An item's reason is its deadline (`keeper.plan.usage.URGENT_REASONS`)
        or `usage`."""
        batches = []
        for urgent in (True, False):
            part = [r for r in runs if (run_urgency(r) is not None) is urgent]
            if not part or (urgent_only and not urgent):
                continue
            batches += [
                Batch(
                    kind="usage",
                    target=self.stream_manager,
                    items=[u.item for u in batch],
                    reasons={usage_key(u.stream_id, u.seq): u.urgent or "usage" for u in batch},
                    urgent=urgent,
                    amount=sum(u.units * u.price for u in batch),
                    block=block,
                )
                for batch in pack_runs(part, self.usage_batch_size)
            ]
        return batches

    @property
    def usage_batch_size(self) -> int:
        """Reports per usage batch (also the most of one stream's reports per pass)."""
        return batch_size("usage", self.settings.max_batch_gas)

    async def plan_pass(
        self,
        conn: Conn,
        *,
        base_fee: int | None = None,
        dry_run: bool = False,
        spare: Sequence[Conn] = (),
    ) -> PassReport:
        """One planning pass: read what is due, cut batches and (unless `dry_run`) create their
        intents. On `conn` alone: the usage intake in its own transaction, then everything
        else in one. With two `spare` connections (the daemon's, `[plan] pass_connections`),
        three transactions run side by side (`_plan_side_by_side`)."""
        if len(spare) >= 2 and not dry_run and self.usage is not None:
            return await self._plan_side_by_side(conn, spare[0], spare[1], base_fee)
        report = PassReport()
        # Its own transaction: accepted rows and their sequence numbers are committed whatever
        # the planning below does, and the intake lock is not held while it runs.
        await self._intake(conn, report)
        async with conn.transaction():
            block, batches = await self._settle_due(conn, report, base_fee)
            if block is None:
                return report  # nothing indexed yet
            if self.usage is not None and report.usage_error is None:
                try:
                    async with conn.transaction():  # a savepoint: a failure undoes only this
                        batches += await self._usage_part(conn, block, base_fee, report)
                except OUTAGES:
                    raise
                except Exception as exc:
                    report.usage_error = exc
            if dry_run:
                report.planned += batches
                return report
            await self._plan(conn, batches, report)
        self._count_urgent_usage(report, base_fee)
        return report

    async def _plan_side_by_side(
        self, conn: Conn, settle_conn: Conn, usage_conn: Conn, base_fee: int | None
    ) -> PassReport:
        """A pass as three transactions at once, each on its own connection: the usage intake
        (`conn`), the settle and refund planning (`settle_conn`) and the usage planning
        (`usage_conn`: reconcile, due reports, their batches). They touch different rows: the
        intake inserts new reports, the usage planning reads and updates those accepted
        before, so the reports this intake accepts go out with the next pass (or with this
        one, if it committed before the due reports were read: either way once, in sequence).
        Python and the database work at once instead of in turn. An outage in any part is
        raised once all three are over; an unexpected error of a usage part is kept in
        `usage_error`, as on one connection."""
        report = PassReport()

        async def settle() -> None:
            async with settle_conn.transaction():
                block, batches = await self._settle_due(settle_conn, report, base_fee)
                if block is not None:
                    await self._plan(settle_conn, batches, report)

        async def usage() -> None:
            async with usage_conn.transaction():
                block = await usage_conn.fetchval(self.q["indexed_block"], self.chain_id)
                if block is None:
                    return
                try:
                    async with usage_conn.transaction():  # a savepoint, as on one connection
                        batches = await self._usage_part(usage_conn, int(block), base_fee, report)
                except OUTAGES:
                    raise
                except Exception as exc:
                    report.usage_error = exc
                    return
                await self._plan(usage_conn, batches, report)

        # All three run to their end (no part is cancelled mid-statement); then the first
        # failure is raised.
        outcomes = await asyncio.gather(
            self._intake(conn, report), settle(), usage(), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self._count_urgent_usage(report, base_fee)
        return report

    async def _intake(self, conn: Conn, report: PassReport) -> None:
        """Validate the usage inbox in a transaction of its own; an unexpected error is kept
        in `report.usage_error`, an outage raised."""
        if self.usage is None:
            return
        try:
            async with conn.transaction():
                report.intake = await self.usage.intake(conn)
        except OUTAGES:
            raise
        except Exception as exc:
            report.usage_error = exc

    async def _settle_due(
        self, conn: Conn, report: PassReport, base_fee: int | None
    ) -> tuple[int | None, list[Batch]]:
        """The indexed block (None: nothing indexed yet) and the batches of the due
        settlements and refunds (not created yet); counts them into `report`."""
        block, settle, refund = await self.due(conn)
        report.block = block
        report.due.update({"settle": len(settle), "refund": len(refund)})
        if block is None:
            return None, []
        batches, held = self.batches(block, settle, refund, base_fee)
        report.held_by_base_fee += held
        return block, batches

    async def _plan(self, conn: Conn, batches: list[Batch], report: PassReport) -> None:
        """Create the intents of `batches`; count those planned before."""
        outcomes = await self.outbox.plan_all(conn, [self.request(b) for b in batches])
        for batch, outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, AlreadyPlanned):
                report.already_planned += 1
            else:
                assert isinstance(outcome, Planned)
                report.planned.append(batch)

    def _count_urgent_usage(self, report: PassReport, base_fee: int | None) -> None:
        """Count and log the urgent usage reports a pass planned (after its commit)."""
        urgent: dict[str, int] = {}
        for batch in report.planned:
            if batch.kind == "usage" and batch.urgent:
                for reason in batch.reasons.values():
                    if reason in URGENT_REASONS:
                        urgent[reason] = urgent.get(reason, 0) + 1
        if not urgent:
            return
        for reason, n in urgent.items():
            USAGE_URGENT.labels(reason).inc(n)
        self.log.info(
            "usage_urgent_planned",
            reports=sum(len(b.items) for b in report.planned if b.kind == "usage" and b.urgent),
            deadlines=urgent,
            above_base_fee_ceiling=self.urgent_only(base_fee),
        )

    async def _usage_part(
        self, conn: Conn, block: int, base_fee: int | None, report: PassReport
    ) -> list[Batch]:
        """Reconcile usage reports and cut the batches of those due (only urgent ones above
        the base-fee ceiling)."""
        assert self.usage is not None
        reconciled = await self.usage.reconcile(conn)
        runs = await self.usage.due(conn, self.usage_batch_size)
        report.reconciled = reconciled  # only once nothing can undo it any more
        report.due["usage"] = sum(len(r) for r in runs)
        urgent_only = self.urgent_only(base_fee)
        if urgent_only:
            report.held_by_base_fee += sum(len(r) for r in runs if run_urgency(r) is None)
        return self.usage_batches(block, runs, urgent_only=urgent_only)

    def request(self, batch: Batch) -> IntentRequest:
        """The outbox request for `batch`."""
        return IntentRequest(
            kind=batch.kind,
            key=batch.key,
            target=batch.target,
            calldata=batch.calldata,
            items=batch.items,
            urgent=batch.urgent,
        )
