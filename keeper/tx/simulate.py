"""Simulation before signing: a planned batch is estimated, halved when it needs more gas than a
batch may have, and split when some of its items revert, before anything is signed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keeper import secrets
from keeper.chain.reverts import revert_reason
from keeper.chain.rpc import RpcResponseError
from keeper.db.outbox_rows import Call, ItemOutcome, PlannedIntent
from keeper.kinds import item_ref
from keeper.plan.batches import Revert, encode_batch, gas_floor, split_batch, splittable
from keeper.tx.context import TxContext, call_json
from keeper.tx.counters import INTENTS, ITEMS
from keeper.tx.send import Sender


@dataclass(frozen=True)
class Simulated:
    """A batch ready to sign: the gas it needs and the call, with how many items it carries."""

    estimate: int
    call: Call
    items: int


def revert_of(exc: RpcResponseError) -> Revert:
    if exc.data is not None:
        return Revert(revert_reason(exc.data), exc.data)
    message = exc.message.split(": ", 1)[-1]  # drop the "method: " prefix
    return Revert(message.removeprefix("execution reverted: ") or "reverted without a reason")


class Simulator:
    """Simulates planned intents from the signer that will send them."""

    def __init__(self, ctx: TxContext, sender: Sender) -> None:
        self.ctx = ctx
        self.sender = sender

    async def estimate(self, signer: bytes, call: Call) -> int | Revert:
        """`eth_estimateGas` (the simulation): the gas, or the revert. A node error that is not
        a revert is raised."""
        try:
            return int(
                await self.ctx.client.request("eth_estimateGas", [call_json(signer, call)]), 16
            )
        except RpcResponseError as exc:
            if not exc.reverted:
                raise
            return revert_of(exc)

    async def reverts(self, signer: bytes, call: Call) -> Revert | None:
        """`eth_call` at the latest block: None when it succeeds, else the revert."""
        try:
            await self.ctx.client.request("eth_call", [call_json(signer, call), "latest"])
        except RpcResponseError as exc:
            if not exc.reverted:
                raise
            return revert_of(exc)
        return None

    def gas_limit(self, kind: str, estimate: int, items: int) -> int:
        """The estimate plus the margin, at least the kind's floor, at most `max_batch_gas`
        (an estimate above it was halved before: see `halve`)."""
        margin = self.ctx.settings.gas_margin_pct
        limit = max(estimate * (100 + margin) // 100, gas_floor(kind, items))
        cap = self.sender.batch_gas_cap
        return limit if cap is None else max(min(limit, cap), estimate)

    async def simulate_or_split(self, intent: PlannedIntent, signer: bytes) -> Simulated | None:
        """Simulate `intent` from `signer`: the estimate and the call to sign when it goes out,
        None when it does not (failed, or left planned with its reason noted).

        A batch that would revert is bisected: items that revert on their own are recorded in
        `batch_items` as `reverted` with their decoded reason and dropped from the batch,
        which is re-encoded (still `planned`: nothing was signed) and goes out without them.
        A batch that reverts whatever its items (paused contract, missing role), a single
        call, or a batch left with no good item fails with the reason."""
        ctx, kind, call = self.ctx, intent.kind, intent.call
        try:
            result = await self.estimate(signer, call)
        except RpcResponseError as exc:
            note = secrets.scrub(f"simulation failed: {exc.message}")
            await ctx.outbox.note_planned(intent.id, note)
            ctx.log.warning("intent_simulation_error", intent=intent.key, error=exc.message)
            return None
        if isinstance(result, int):
            cap = self.sender.batch_gas_cap
            if cap is not None and result > cap and splittable(kind):
                return await self.halve(intent, signer, result, cap)
            return Simulated(result, call, len(intent.items))
        items = intent.items
        if not splittable(kind) or not items:
            await self.fail(intent, f"simulation reverted: {result.reason}", [])
            return None

        async def simulate(subset: Sequence[Any]) -> Revert | None:
            return await self.reverts(signer, _with(call, encode_batch(kind, subset)))

        split = await split_batch(items, result, simulate)
        bad = [(item_ref(kind, item), r.reason) for item, r in split.bad]
        if split.whole is not None:
            await self.fail(intent, f"simulation reverted: {split.whole.reason}", [])
            return None
        if not split.good:
            await self.fail(intent, "every item reverted in simulation", bad)
            return None
        smaller = _with(call, encode_batch(kind, split.good))
        estimate = await self.estimate(signer, smaller)
        if isinstance(estimate, Revert):
            await self.fail(
                intent,
                f"simulation reverted without its {len(bad)} reverting items too: "
                f"{estimate.reason}",
                bad,
            )
            return None
        reason = f"{len(bad)} of {len(items)} items reverted in simulation and were left out"
        if not await ctx.outbox.rewrite_batch(intent.id, smaller.calldata, split.good, reason, bad):
            return None  # no longer planned (another manager took it)
        ITEMS.labels(kind=kind, outcome="reverted").inc(len(bad))
        ctx.report.split += 1
        ctx.log.warning(
            "batch_split",
            intent=intent.key,
            items=len(items),
            reverted=len(bad),
            reasons=sorted({reason for _, reason in bad}),
        )
        return Simulated(estimate, smaller, len(split.good))

    async def halve(
        self, intent: PlannedIntent, signer: bytes, estimate: int, cap: int
    ) -> Simulated | None:
        """A planned batch whose estimate is above the batch gas cap: keep its first half until
        it fits (the planner plans the rest again), re-estimated each time. A single item that
        does not fit fails the intent."""
        kind, items, call = intent.kind, intent.items, intent.call
        result: int | Revert = estimate
        while isinstance(result, int) and result > cap and len(items) > 1:
            items = items[: len(items) // 2]
            call = _with(call, encode_batch(kind, items))
            result = await self.estimate(signer, call)
        if isinstance(result, Revert):
            return None  # the next pass simulates what is left and splits out what reverts
        if result > cap:
            await self.fail(
                intent, f"one item needs {result:,} gas, above plan.max_batch_gas {cap:,}", []
            )
            return None
        reason = (
            f"estimated at {estimate:,} gas, above plan.max_batch_gas {cap:,}: "
            f"{len(items)} of {len(intent.items)} items kept, the rest is planned again"
        )
        if not await self.ctx.outbox.rewrite_batch(intent.id, call.calldata, items, reason):
            return None
        self.ctx.report.split += 1
        self.ctx.log.warning(
            "batch_halved",
            intent=intent.key,
            items=len(intent.items),
            kept=len(items),
            estimate=estimate,
            cap=cap,
        )
        return Simulated(result, call, len(items))

    async def fail(self, intent: PlannedIntent, reason: str, items: Sequence[ItemOutcome]) -> None:
        """Fail a planned intent with `reason`, recording its reverted items."""
        await self.ctx.outbox.fail(intent.id, reason, items)
        if items:
            ITEMS.labels(kind=intent.kind, outcome="reverted").inc(len(items))
        INTENTS.labels(kind=intent.kind, state="failed").inc()
        self.ctx.report.failed += 1
        self.ctx.log.warning("intent_failed", intent=intent.key, reason=reason)


def _with(call: Call, calldata: bytes) -> Call:
    return Call(call.target, calldata, call.value)
