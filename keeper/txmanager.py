"""The transaction manager: planned intents become mined, confirmed, final transactions.

One pass (`tick`) does, in order:
1. **send what was signed but never sent** (a crash between storing and broadcasting),
2. **assign** planned intents: simulate (`eth_call`, then `eth_estimateGas`), pick the
   least-loaded signer under its in-flight cap, take its next nonce, sign, and store the
   attempt's raw bytes and the assignment in one transaction, then broadcast them,
3. **receipts** across every attempt of every open intent: mined, confirmed at the configured
   depth, final at the finalized block; a receipt whose block left the chain sends the intent
   back to `assigned` to be rebroadcast (its calls are idempotent on-chain),
4. **bump** attempts not mined after `bump_after_blocks`: a replacement at the same nonce with
   both fees +12.5 % (`keeper.fees`), or the same bytes again when the caps leave no room.

A nonce is never signed twice with different content except as a fee bump of the same call.
Ambiguous send answers (already known, nonce too low, timeouts) are never failures by
themselves: the receipts and the account's nonce decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from eth_account import Account
from eth_utils import to_checksum_address

from keeper.fees import FeeCaps, Fees, bump, initial_fees
from keeper.outbox import Outbox
from keeper.rpc import BlockHeader, ChainClient, RpcError, RpcResponseError
from keeper.send_errors import SendOutcome, classify_send_error
from keeper.signers import Signer

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TxSettings:
    """The `[tx]` section: confirmation, fees, lanes."""

    confirmations: int = 3
    bump_after_blocks: int = 3
    in_flight_cap: int = 16
    max_fee: int = 500 * 10**9
    max_priority_fee: int = 5 * 10**9
    tip: int | None = None  # None: ask the node (eth_maxPriorityFeePerGas)
    legacy: bool = False
    gas_margin_pct: int = 25
    assign_batch: int = 64
    replan_after_checks: int = 2  # ticks a foreign nonce use must be seen before re-planning

    @property
    def caps(self) -> FeeCaps:
        """The fee caps."""
        return FeeCaps(max_fee=self.max_fee, max_priority_fee=self.max_priority_fee)


@dataclass
class TickReport:
    """What one pass did (for logs, metrics and tests)."""

    sent: int = 0
    assigned: int = 0
    failed: int = 0
    mined: int = 0
    confirmed: int = 0
    final: int = 0
    unmined: int = 0
    bumped: int = 0
    rebroadcast: int = 0
    replanned: int = 0


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


class TxManager:
    """Drives the outbox of one chain with a pool of signers."""

    def __init__(
        self,
        client: ChainClient,
        pool: asyncpg.Pool,
        *,
        chain_id: int,
        signers: Sequence[Signer],
        settings: TxSettings | None = None,
    ) -> None:
        if not signers:
            raise ValueError("the transaction manager needs at least one signer")
        self.client = client
        self.pool = pool
        self.chain_id = chain_id
        self.signers = {s.address_bytes: s for s in signers}
        self.settings = settings or TxSettings()
        self.outbox = Outbox(chain_id)
        self.q = self.outbox.q
        self.lanes: dict[bytes, int] = {}
        self._foreign_nonce_seen: dict[int, int] = {}
        self.log = log.bind(chain_id=chain_id)

    # ------------------------------------------------------------------ one pass

    async def tick(self) -> TickReport:
        """One pass over the outbox."""
        report = TickReport()
        head = await self.client.head()
        finalized = await self.client.finalized(head, 64)
        await self._send_unsent(report)
        await self._assign(head, report)
        await self._receipts(head, finalized, report)
        await self._bump(head, report)
        return report

    # ------------------------------------------------------------------ lanes

    async def _next_nonce(self, conn: Any, signer: bytes) -> int:
        """max(outbox, chain pending count, what this process handed out already)."""
        pending = int(
            await self.client.request("eth_getTransactionCount", [_hex(signer), "pending"]), 16
        )
        known = await self.outbox.next_nonce(conn, signer)
        return max(pending, known, self.lanes.get(signer, 0))

    def _pick_signer(self, in_flight: dict[bytes, int]) -> bytes | None:
        """The least-loaded signer under its in-flight cap."""
        candidates = [
            (in_flight.get(addr, 0), addr)
            for addr in self.signers
            if in_flight.get(addr, 0) < self.settings.in_flight_cap
        ]
        return min(candidates)[1] if candidates else None

    # ------------------------------------------------------------------ fees and signing

    async def _fees(self, head: BlockHeader) -> tuple[int | None, int]:
        """(base fee or None for legacy, tip) for a new or bumped attempt."""
        if self.settings.legacy:
            price = int(await self.client.request("eth_gasPrice"), 16)
            return None, self.settings.tip if self.settings.tip is not None else price
        block = await self.client.request("eth_getBlockByNumber", [hex(head.number), False])
        base = int(block["baseFeePerGas"], 16)
        if self.settings.tip is not None:
            return base, self.settings.tip
        try:
            tip = int(await self.client.request("eth_maxPriorityFeePerGas"), 16)
        except RpcResponseError:
            tip = 10**9
        return base, tip

    def _sign(
        self, signer: bytes, nonce: int, intent: Any, gas_limit: int, fees: Fees
    ) -> tuple[bytes, bytes]:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": to_checksum_address(bytes(intent["target"])),
            "data": _hex(bytes(intent["calldata"])),
            "value": int(intent["value"]),
            "gas": gas_limit,
        }
        if fees.legacy:
            tx["gasPrice"] = fees.gas_price
        else:
            tx["maxFeePerGas"] = fees.max_fee
            tx["maxPriorityFeePerGas"] = fees.priority_fee
            tx["type"] = 2
        signed = Account.sign_transaction(tx, self.signers[signer].key.reveal_hex())
        return bytes(signed.raw_transaction), bytes(signed.hash)

    # ------------------------------------------------------------------ sending

    async def _broadcast(self, attempt_id: int, raw: bytes, head: int) -> SendOutcome:
        """Send stored bytes; record the outcome. Ambiguous answers count as sent."""
        try:
            await self.client.request("eth_sendRawTransaction", [_hex(raw)])
            outcome = SendOutcome.ACCEPTED
            error = None
        except RpcResponseError as exc:
            outcome = classify_send_error(exc.message)
            error = exc.message
        except RpcError as exc:
            outcome = SendOutcome.TIMEOUT
            error = exc.message
        if outcome is SendOutcome.ACCEPTED or outcome.ambiguous:
            async with self.pool.acquire() as conn:
                await conn.execute(self.q["mark_broadcast"], attempt_id, head, error)
        else:
            self.log.warning("send_refused", attempt=attempt_id, outcome=outcome.value, error=error)
        return outcome

    async def _send_unsent(self, report: TickReport) -> None:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.q["unsent_attempts"], self.chain_id)
        if not rows:
            return
        head = (await self.client.head()).number
        for row in rows:
            outcome = await self._broadcast(row["id"], bytes(row["raw"]), head)
            if outcome is SendOutcome.ACCEPTED or outcome.ambiguous:
                report.sent += 1

    # ------------------------------------------------------------------ assignment

    async def _assign(self, head: BlockHeader, report: TickReport) -> None:
        async with self.pool.acquire() as conn:
            planned = await conn.fetch(
                self.q["planned_intents"], self.chain_id, self.settings.assign_batch
            )
            in_flight = await self.outbox.in_flight(conn)
        if not planned:
            return
        base, tip = await self._fees(head)
        fees = initial_fees(base, tip, self.settings.caps)
        for intent in planned:
            signer = self._pick_signer(in_flight)
            if signer is None:
                return  # every lane is full; the rest waits for confirmations
            call = {
                "from": _hex(signer),
                "to": _hex(bytes(intent["target"])),
                "data": _hex(bytes(intent["calldata"])),
                "value": hex(int(intent["value"])),
            }
            try:
                await self.client.request("eth_call", [call, "latest"])
                estimate = int(await self.client.request("eth_estimateGas", [call]), 16)
            except RpcResponseError as exc:
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        self.q["fail_intent"], intent["id"], f"simulation reverted: {exc.message}"
                    )
                report.failed += 1
                self.log.warning(
                    "intent_simulation_failed", intent=intent["key"], error=exc.message
                )
                continue
            gas_limit = estimate * (100 + self.settings.gas_margin_pct) // 100
            async with self.pool.acquire() as conn, conn.transaction():
                nonce = await self._next_nonce(conn, signer)
                raw, tx_hash = self._sign(signer, nonce, intent, gas_limit, fees)
                done = await conn.execute(
                    self.q["assign_intent"], intent["id"], signer, nonce, gas_limit
                )
                if done != "UPDATE 1":
                    continue  # taken meanwhile (another manager): nothing was stored
                attempt_id = await conn.fetchval(
                    self.q["insert_attempt"],
                    intent["id"],
                    self.chain_id,
                    signer,
                    nonce,
                    fees.max_fee,
                    fees.priority_fee,
                    fees.legacy,
                    gas_limit,
                    raw,
                    tx_hash,
                )
            # Stored before sent: a crash here leaves a signed attempt that the next pass sends.
            self.lanes[signer] = nonce + 1
            in_flight[signer] = in_flight.get(signer, 0) + 1
            report.assigned += 1
            self.log.info("intent_assigned", intent=intent["key"], signer=_hex(signer), nonce=nonce)
            await self._broadcast(attempt_id, raw, head.number)

    # ------------------------------------------------------------------ receipts

    async def _receipts(self, head: BlockHeader, finalized: int, report: TickReport) -> None:
        async with self.pool.acquire() as conn:
            intents = await conn.fetch(self.q["open_intents"], self.chain_id)
            hashes = await conn.fetch(self.q["all_attempt_hashes"], self.chain_id)
        if not intents:
            return
        by_intent: dict[int, list[bytes]] = {}
        for row in hashes:
            by_intent.setdefault(row["intent_id"], []).append(bytes(row["tx_hash"]))
        order = [(i, h) for i, hs in by_intent.items() for h in hs]
        receipts = await self.client.batch(
            [("eth_getTransactionReceipt", [_hex(h)]) for _, h in order]
        )
        found: dict[int, dict[str, Any]] = {}
        for (intent_id, _), receipt in zip(order, receipts, strict=True):
            if receipt:
                found[intent_id] = receipt
        mined_blocks = sorted(
            {int(r["blockNumber"], 16) for r in found.values()}
            | {int(i["block_number"]) for i in intents if i["block_number"] is not None}
        )
        canonical = dict(zip(mined_blocks, await self.client.headers(mined_blocks), strict=True))
        for intent in intents:
            await self._advance(intent, found.get(intent["id"]), canonical, head, finalized, report)

    async def _advance(
        self,
        intent: Any,
        receipt: dict[str, Any] | None,
        canonical: dict[int, BlockHeader | None],
        head: BlockHeader,
        finalized: int,
        report: TickReport,
    ) -> None:
        state = intent["state"]
        iid = intent["id"]
        if receipt is not None:
            number = int(receipt["blockNumber"], 16)
            header = canonical.get(number)
            if header is None or header.hash != receipt["blockHash"]:
                receipt = None  # a receipt from a block that is no longer canonical
        async with self.pool.acquire() as conn, conn.transaction():
            if receipt is None:
                if state in ("mined", "confirmed"):
                    await conn.execute(self.q["unmine"], iid)
                    await conn.execute(self.q["unmine_attempts"], iid)
                    report.unmined += 1
                    self.log.warning("receipt_reorged_out", intent=intent["key"])
                return
            number = int(receipt["blockNumber"], 16)
            if state == "assigned":
                tx_hash = bytes.fromhex(receipt["transactionHash"][2:])
                await conn.execute(
                    self.q["mark_mined"],
                    iid,
                    tx_hash,
                    number,
                    bytes.fromhex(receipt["blockHash"][2:]),
                    int(receipt["status"], 16),
                    int(receipt["gasUsed"], 16),
                    int(receipt.get("effectiveGasPrice") or "0x0", 16),
                )
                await conn.execute(self.q["attempt_mined"], tx_hash)
                await conn.execute(self.q["attempts_superseded"], iid, tx_hash)
                state = "mined"
                report.mined += 1
            elif intent["block_hash"] is not None and (
                "0x" + bytes(intent["block_hash"]).hex() != receipt["blockHash"]
            ):
                # Re-mined in another block after a reorg: record the new receipt.
                await conn.execute(self.q["unmine"], iid)
                await conn.execute(self.q["unmine_attempts"], iid)
                report.unmined += 1
                return
            depth = head.number - number + 1
            if state == "mined" and depth >= self.settings.confirmations:
                if int(receipt["status"], 16) == 0:
                    await conn.execute(self.q["fail_intent"], iid, "reverted on chain")
                    report.failed += 1
                    return
                await conn.execute(self.q["mark_confirmed"], iid)
                state = "confirmed"
                report.confirmed += 1
            if state == "confirmed" and number <= finalized:
                await conn.execute(self.q["mark_final"], iid)
                report.final += 1

    # ------------------------------------------------------------------ bumping

    async def _bump(self, head: BlockHeader, report: TickReport) -> None:
        async with self.pool.acquire() as conn:
            latest = await conn.fetch(self.q["latest_attempts"], self.chain_id)
        stale = [
            a
            for a in latest
            if a["broadcast_block"] is not None
            and head.number - a["broadcast_block"] >= self.settings.bump_after_blocks
        ]
        if not stale:
            return
        base, tip = await self._fees(head)
        for a in stale:
            signer = bytes(a["signer"])
            if await self._nonce_used_elsewhere(a, report):
                continue
            previous = Fees(int(a["max_fee"]), int(a["priority_fee"]), a["legacy"])
            fees = bump(previous, base, tip, self.settings.caps)
            if fees is None:
                # At the cap: the same bytes again (the node may have dropped them).
                await self._broadcast(a["id"], bytes(a["raw"]), head.number)
                report.rebroadcast += 1
                continue
            raw, tx_hash = self._sign(signer, a["nonce"], a, a["gas_limit"], fees)
            async with self.pool.acquire() as conn:
                attempt_id = await conn.fetchval(
                    self.q["insert_attempt"],
                    a["intent_id"],
                    self.chain_id,
                    signer,
                    a["nonce"],
                    fees.max_fee,
                    fees.priority_fee,
                    fees.legacy,
                    a["gas_limit"],
                    raw,
                    tx_hash,
                )
            outcome = await self._broadcast(attempt_id, raw, head.number)
            report.bumped += 1
            self.log.info(
                "attempt_bumped",
                intent_id=a["intent_id"],
                nonce=a["nonce"],
                max_fee=fees.max_fee,
                outcome=outcome.value,
            )

    async def _nonce_used_elsewhere(self, attempt: Any, report: TickReport) -> bool:
        """True (and the intent re-planned) when the account's mined nonce passed this intent's
        nonce without any of its attempts having a receipt, on consecutive checks: the key was
        used outside the keeper, and the intent's call must be planned again."""
        signer = _hex(bytes(attempt["signer"]))
        mined = int(await self.client.request("eth_getTransactionCount", [signer, "latest"]), 16)
        iid = attempt["intent_id"]
        if mined <= attempt["nonce"]:
            self._foreign_nonce_seen.pop(iid, None)
            return False
        seen = self._foreign_nonce_seen.get(iid, 0) + 1
        self._foreign_nonce_seen[iid] = seen
        if seen < self.settings.replan_after_checks:
            return True  # decide on a later pass, after the receipts had another chance
        async with self.pool.acquire() as conn:
            await conn.execute(
                self.q["mark_replan"], iid, "nonce used by another transaction of the key"
            )
        self._foreign_nonce_seen.pop(iid, None)
        report.replanned += 1
        self.log.warning("nonce_used_elsewhere", intent_id=iid, nonce=attempt["nonce"])
        return True
