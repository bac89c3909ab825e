"""Receipts: sent intents become mined, confirmed at the configured depth and final at the
finalized block; a receipt whose block left the chain sends its intent back to `assigned`, to be
rebroadcast (the calls are idempotent on-chain). Then each item of a confirmed batch is checked
against the indexed events of its transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keeper.chain.rpc import BlockHeader, RpcResponseError
from keeper.db.outbox_rows import ConfirmedBatch, ItemOutcome, MinedReceipt, OpenIntent
from keeper.kinds import BATCH_KINDS, ref_key
from keeper.tx.context import TxContext, call_json, hex_of
from keeper.tx.counters import GAS_SPENT, INTENTS, ITEMS
from keeper.tx.simulate import revert_of


def l1_fee(receipt: Mapping[str, Any]) -> int | None:
    """The L1 fee an OP-stack chain's receipt carries (`l1Fee`), None elsewhere."""
    value = receipt.get("l1Fee")
    return int(str(value), 16) if value else None


def receipt_cost(receipt: Mapping[str, Any]) -> int:
    """What a mined transaction cost its signer, in wei: gas used x effective gas price, plus
    the L1 fee on an OP-stack chain."""
    gas = int(receipt["gasUsed"], 16) * int(receipt.get("effectiveGasPrice") or "0x0", 16)
    return gas + (l1_fee(receipt) or 0)


def mined_receipt(receipt: Mapping[str, Any]) -> MinedReceipt:
    return MinedReceipt(
        tx_hash=bytes.fromhex(receipt["transactionHash"][2:]),
        block_number=int(receipt["blockNumber"], 16),
        block_hash=bytes.fromhex(receipt["blockHash"][2:]),
        status=int(receipt["status"], 16),
        gas_used=int(receipt["gasUsed"], 16),
        effective_gas_price=int(receipt.get("effectiveGasPrice") or "0x0", 16),
        l1_fee=l1_fee(receipt),
    )


class Receipts:
    """Follows the receipts of every open intent, and checks confirmed batches' effects."""

    def __init__(self, ctx: TxContext) -> None:
        self.ctx = ctx

    async def receipts(self) -> None:
        ctx = self.ctx
        intents = await ctx.outbox.open_intents()
        if not intents:
            return
        hashes = await ctx.outbox.attempt_hashes()
        order = [(i, h) for i, hs in hashes.items() for h in hs]
        receipts = await ctx.client.batch(
            [("eth_getTransactionReceipt", [hex_of(h)]) for _, h in order]
        )
        found: dict[int, dict[str, Any]] = {}
        for (intent_id, _), receipt in zip(order, receipts, strict=True):
            if receipt:
                found[intent_id] = receipt
        mined_blocks = sorted(
            {int(r["blockNumber"], 16) for r in found.values()}
            | {i.block_number for i in intents if i.block_number is not None}
        )
        headers = await ctx.client.headers(mined_blocks)
        canonical = dict(zip(mined_blocks, headers, strict=True))
        for intent in intents:
            if ctx.faults.backed_off(intent.id):
                continue
            async with ctx.faults.contain(intent.id, intent.key, "receipts"):
                await self.advance(intent, found.get(intent.id), canonical)

    async def advance(
        self,
        intent: OpenIntent,
        receipt: dict[str, Any] | None,
        canonical: Mapping[int, BlockHeader | None],
    ) -> None:
        """Move `intent` as far as its receipt (or the lack of one) takes it this pass."""
        ctx = self.ctx
        state, kind = intent.state, intent.kind
        depth_needed = ctx.settings.confirmations
        revert = None
        if receipt is not None:
            number = int(receipt["blockNumber"], 16)
            header = canonical.get(number)
            if header is None or header.hash != receipt["blockHash"]:
                receipt = None  # a receipt from a block that is no longer canonical
            elif (
                int(receipt["status"], 16) == 0
                and state in ("assigned", "mined")
                and ctx.head.number - number + 1 >= depth_needed
            ):
                revert = await self._onchain_revert(intent, receipt)
        if receipt is None:
            if state in ("mined", "confirmed"):
                await self._unmine(intent)
            return
        mined = mined_receipt(receipt)
        if state == "assigned":
            if not await ctx.outbox.record_mined(intent.id, mined):
                return  # another manager recorded it meanwhile
            state = "mined"
            ctx.report.mined += 1
            INTENTS.labels(kind=kind, state="mined").inc()
            GAS_SPENT.labels(kind=kind).inc(receipt_cost(receipt))
        elif intent.block_hash is not None and intent.block_hash != mined.block_hash:
            # Re-mined in another block after a reorg: record the new receipt next pass.
            await self._unmine(intent)
            return
        depth = ctx.head.number - mined.block_number + 1
        if state == "mined" and depth >= depth_needed:
            if mined.status == 0:
                reason = f"reverted on chain: {revert or 'reason unknown'}"
                await ctx.outbox.fail(intent.id, reason, [])
                INTENTS.labels(kind=kind, state="failed").inc()
                ctx.report.failed += 1
                ctx.log.warning("intent_reverted", intent=intent.key, reason=reason)
                return
            if not await ctx.outbox.confirm(intent.id):
                return  # another manager confirmed it meanwhile
            INTENTS.labels(kind=kind, state="confirmed").inc()
            state = "confirmed"
            ctx.report.confirmed += 1
            ctx.log.info(
                "batch_confirmed",
                intent=intent.key,
                kind=kind,
                items=len(intent.items),
                block=mined.block_number,
                tx_hash=receipt["transactionHash"],
                gas_used=mined.gas_used,
                cost_wei=receipt_cost(receipt),
            )
        if (
            state == "confirmed"
            and mined.block_number <= ctx.finalized
            and await ctx.outbox.finalize(intent.id)
        ):
            INTENTS.labels(kind=kind, state="final").inc()
            ctx.report.final += 1

    async def _unmine(self, intent: OpenIntent) -> None:
        """The intent's receipt left the chain: back to `assigned` (rebroadcast; its calls are
        idempotent on-chain), its checked effects forgotten. Nothing happens when the intent is
        no longer in the state this pass read (another manager moved it meanwhile)."""
        if not await self.ctx.outbox.unmine(intent.id, intent.state):
            return
        INTENTS.labels(kind=intent.kind, state="unmined").inc()
        self.ctx.report.unmined += 1
        self.ctx.log.warning("receipt_reorged_out", intent=intent.key)

    async def _onchain_revert(self, intent: OpenIntent, receipt: Mapping[str, Any]) -> str:
        """Why a mined transaction reverted: out of gas when it used its whole limit, else the
        call replayed (`eth_call`) on the state at the end of its block, then of the block
        before (a transaction earlier in the same block is the usual cause, and a reverted
        transaction changed nothing itself)."""
        gas_used = int(receipt["gasUsed"], 16)
        if gas_used >= intent.gas_limit:
            return f"out of gas (used its whole limit of {gas_used})"
        call = call_json(intent.signer, intent.call)
        call["gas"] = hex(intent.gas_limit)
        number = int(receipt["blockNumber"], 16)
        for block in (number, number - 1):
            try:
                await self.ctx.client.request("eth_call", [call, hex(max(block, 0))])
            except RpcResponseError as exc:
                if exc.reverted:
                    return revert_of(exc).reason
                return f"reason unknown (replay failed: {exc.message})"
        return "reason unknown (the call succeeds when replayed)"

    # ------------------------------------------------------------------ effects

    async def check_effects(self) -> None:
        """Check each item of every confirmed batch against the indexed events of its
        transaction: `effect`, `skipped` (with the contract's reason) or `no_effect`. Runs once
        the indexer has the batch's block; an item without its effect is logged and counted
        (planners back such items off rather than retrying them in silence)."""
        ctx = self.ctx
        for batch in await ctx.outbox.effects_due():
            if ctx.faults.backed_off(batch.id):
                continue
            async with ctx.faults.contain(batch.id, batch.key, "effects"):
                await self._check(batch)

    async def _check(self, batch: ConfirmedBatch) -> None:
        ctx, kind = self.ctx, batch.kind
        spec = BATCH_KINDS[kind]
        effects = await ctx.outbox.item_effects(spec.effects_query, batch)
        by_outcome: dict[str, list[ItemOutcome]] = {}
        for e in effects:
            if e.effect:
                outcome, detail = "effect", None
            elif e.skip_reason is not None:
                code = e.skip_reason
                outcome, detail = "skipped", spec.skip_reasons.get(code, f"reason code {code}")
            else:
                outcome, detail = "no_effect", "no event of this item in the transaction"
            by_outcome.setdefault(outcome, []).append((e.item, detail))
        await ctx.outbox.record_effects(batch.id, by_outcome)
        for outcome, items in by_outcome.items():
            ITEMS.labels(kind=kind, outcome=outcome).inc(len(items))
        ctx.report.effects_checked += 1
        missing = by_outcome.get("no_effect", [])
        if missing:
            ctx.report.no_effect += len(missing)
            ctx.log.warning(
                "batch_items_without_effect",
                intent=batch.key,
                items=[ref_key(item) for item, _ in missing][:20],
                count=len(missing),
            )
