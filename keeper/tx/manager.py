"""The transaction manager: planned intents become mined, confirmed, final transactions.

One pass (`tick`) does, in order:
1. **send what was signed but never sent** (a crash between storing and broadcasting),
2. **assign** planned intents: simulate (`eth_call`, then `eth_estimateGas`), pick the
   least-loaded signer under its in-flight cap, take its next nonce, sign, and store the
   attempt's raw bytes and the assignment in one transaction, then broadcast them,
3. **receipts** across every attempt of every open intent: mined, confirmed at the configured
   depth, final at the finalized block; a receipt whose block left the chain sends the intent
   back to `assigned` to be rebroadcast (its calls are idempotent on-chain),
4. **purge** the lowest nonce of a lane broadcast `purge_after_blocks` ago without a receipt: a
   zero-value self-send at that nonce (an intent of kind `purge`) takes its place, and the stuck
   intent goes to `replan` so the planners plan its items again,
5. **bump** attempts not mined after `bump_after_blocks`: a replacement at the same nonce with
   both fees +12.5 % (`keeper.tx.fees`), or the same bytes again when the caps leave no room.

Assignment is gated twice: a signer whose balance (one `eth_getBalance` batch per pass) is below
`min_signer_balance` gets no new work until funded again, and once the hourly spending budget is
used up (gas paid by intents mined in the last hour + the worst case of those still in flight)
only urgent intents are assigned. Both report a gauge and log once per transition. A send the
node refuses (insufficient funds, ...) keeps its attempt `signed` with `last_error` recorded, and
the next pass sends the same bytes again.

A nonce is never signed twice with different content except as a fee bump of the same call.
Ambiguous send answers (already known, nonce too low, timeouts) are never failures by
themselves: the receipts and the account's nonce decide.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from eth_account import Account
from eth_utils import to_checksum_address
from prometheus_client import Counter, Gauge, Histogram

from keeper import metrics, secrets
from keeper.chain.reverts import revert_reason
from keeper.chain.rpc import BlockHeader, ChainClient, RpcError, RpcResponseError
from keeper.chain.signers import Signer
from keeper.db.outbox import Outbox
from keeper.kinds import BATCH_KINDS, USAGE
from keeper.plan.batches import (
    Revert,
    encode_batch,
    gas_floor,
    item_key,
    split_batch,
    splittable,
    usage_fields,
)
from keeper.tx.faults import IntentFaults
from keeper.tx.fees import FeeCaps, Fees, bump, initial_fees
from keeper.tx.send_errors import SendOutcome, classify_send_error, unknown_backoff_blocks

log = structlog.get_logger(__name__)

SIGNER_BALANCE = Gauge(
    "keeper_signer_balance_wei",
    "Balance of each signer at the last pass (wei).",
    ["signer"],
    registry=metrics.REGISTRY,
)
SIGNER_LOW_BALANCE = Gauge(
    "keeper_signer_low_balance",
    "1 while a signer's balance is below min_signer_balance (it gets no new work).",
    ["signer"],
    registry=metrics.REGISTRY,
)
SPENT_LAST_HOUR = Gauge(
    "keeper_spent_last_hour_wei",
    "Gas paid by intents mined in the last hour plus the worst case of those in flight (wei).",
    registry=metrics.REGISTRY,
)

INTENTS = Counter(
    "keeper_tx_intents_total",
    "Intents reaching a state (assigned, mined, confirmed, final, failed, replan, unmined).",
    ["kind", "state"],
    registry=metrics.REGISTRY,
)
ATTEMPTS = Counter(
    "keeper_tx_attempts_total",
    "Signed attempts by why they were signed (first, bump, purge).",
    ["reason"],
    registry=metrics.REGISTRY,
)
BROADCASTS = Counter(
    "keeper_tx_broadcasts_total",
    "eth_sendRawTransaction calls by how the node answered (accepted, already_known, ...).",
    ["outcome"],
    registry=metrics.REGISTRY,
)
REBROADCASTS = Counter(
    "keeper_tx_rebroadcasts_total",
    "Stored bytes sent again unchanged (at the fee cap, after an unsure send).",
    registry=metrics.REGISTRY,
)
GAS_SPENT = Counter(
    "keeper_tx_gas_spent_wei_total",
    "Gas paid by mined intents (gas used x effective gas price, plus the L1 fee on an OP-stack "
    "chain), by intent kind.",
    ["kind"],
    registry=metrics.REGISTRY,
)
ITEMS = Counter(
    "keeper_tx_items_total",
    "Batch items by outcome (effect, skipped, no_effect, reverted), by intent kind.",
    ["kind", "outcome"],
    registry=metrics.REGISTRY,
)
SIGNER_NEXT_NONCE = Gauge(
    "keeper_signer_next_nonce",
    "The next nonce the keeper will assign to each signer.",
    ["signer"],
    registry=metrics.REGISTRY,
)
SIGNER_IN_FLIGHT = Gauge(
    "keeper_signer_in_flight",
    "Assigned, unmined intents of each signer.",
    ["signer"],
    registry=metrics.REGISTRY,
)
TX_PASS_SECONDS = Histogram(
    "keeper_tx_pass_seconds",
    "Duration of one transaction-manager pass.",
    registry=metrics.REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

PURGE_GAS = 21_000  # a plain value transfer to an account without code

# Answers that mean "this fee will not do": the attempt is repriced by the bump rule.
REPRICE = frozenset({SendOutcome.REPLACEMENT_UNDERPRICED, SendOutcome.UNDERPRICED})
# Attempts whose last answer and gas limit are remembered before the memos are cleared.
_MEMO_LIMIT = 100_000
# Answers after which the same bytes are sent again, paced (see TxManager._broadcast).
PACED = frozenset({SendOutcome.TIMEOUT, SendOutcome.UNKNOWN, SendOutcome.POOL_FULL})
# Refusals of the transaction itself: the same bytes can never be taken, so its nonce is purged
# at once and its work planned again (see TxManager._replace_refused).
REPLACE = frozenset(
    {
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        SendOutcome.OVERSIZED_DATA,
        SendOutcome.INTRINSIC_GAS,
        SendOutcome.TIP_ABOVE_FEE_CAP,
    }
)


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
    finality_depth: int = 64  # head - this is final when the node has no `finalized` tag
    min_signer_balance: int = 0  # wei; a signer below it gets no new assignments
    budget_per_hour: int | None = None  # wei per hour on this chain; None: unlimited
    purge_after_blocks: int = 50  # lowest nonce broadcast this long without a receipt: purged
    fault_backoff: float = 30.0  # seconds an intent waits after its first unexpected error
    max_batch_gas: int | None = None  # no gas limit above it; a batch estimated above is halved

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
    refused: int = 0
    purged: int = 0
    held_by_budget: int = 0
    split: int = 0
    effects_checked: int = 0
    no_effect: int = 0


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def l1_fee(receipt: Mapping[str, Any]) -> int | None:
    """The L1 fee an OP-stack chain's receipt carries (`l1Fee`), None elsewhere."""
    value = receipt.get("l1Fee")
    return int(str(value), 16) if value else None


def receipt_cost(receipt: Mapping[str, Any]) -> int:
    """What a mined transaction cost its signer, in wei: gas used x effective gas price, plus
    the L1 fee on an OP-stack chain."""
    gas = int(receipt["gasUsed"], 16) * int(receipt.get("effectiveGasPrice") or "0x0", 16)
    return gas + (l1_fee(receipt) or 0)


def lane_lock_key(chain_id: int, signer: bytes) -> int:
    """The advisory lock key of a signer's nonce lane (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-lane" + chain_id.to_bytes(8, "big") + signer).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _items(intent: Any) -> list[Any]:
    raw = intent["items"]
    return list(json.loads(raw) if isinstance(raw, str) else raw)


def _is_revert(exc: RpcResponseError) -> bool:
    """Whether a node's error answer to eth_call / eth_estimateGas is the call reverting (as
    opposed to the node failing to run it)."""
    return exc.data is not None or exc.code == 3 or "revert" in exc.message.lower()


def _revert_of(exc: RpcResponseError) -> Revert:
    if exc.data is not None:
        return Revert(revert_reason(exc.data), exc.data)
    message = exc.message.split(": ", 1)[-1]  # drop the "method: " prefix
    return Revert(message.removeprefix("execution reverted: ") or "reverted without a reason")


# ---------------------------------------------------------------------- pure rules


def low_balance_lanes(balances: Mapping[bytes, int], minimum: int) -> set[bytes]:
    """The signers whose balance is below `minimum` (they get no new work)."""
    return {addr for addr, balance in balances.items() if balance < minimum}


def budget_allows(spent: int, cost: int, budget: int | None, *, urgent: bool) -> bool:
    """May an intent whose worst-case cost is `cost` be assigned with `spent` used this hour?
    Urgent intents always may; the rest only while they fit under the budget."""
    return urgent or budget is None or spent + cost <= budget


def purge_candidates(latest: Sequence[Any], head: int, after_blocks: int) -> list[Any]:
    """Per signer, its lowest assigned nonce when that intent's first broadcast is at least
    `after_blocks` old (`latest`: the newest attempt of each assigned intent)."""
    lowest: dict[bytes, Any] = {}
    for a in latest:
        signer = bytes(a["signer"])
        if signer not in lowest or a["nonce"] < lowest[signer]["nonce"]:
            lowest[signer] = a
    return [
        a
        for a in lowest.values()
        if a["first_broadcast_block"] is not None
        and head - a["first_broadcast_block"] >= after_blocks
    ]


def purge_fees(previous: Fees, base_fee: int | None, tip: int, caps: FeeCaps) -> Fees | None:
    """Fees of a purge replacing an attempt with `previous` fees: bumped like a replacement,
    or the caps themselves when a bump would pass them (never above the caps). None when even
    the caps do not rise above `previous` in both fields: such a purge could not replace the
    stuck attempt, and signed at the same fees as an earlier purge it would be the very same
    transaction. The stuck attempt then waits for the base fee to fall, its stored bytes sent
    again by the bump rule."""
    bumped = bump(previous, base_fee, tip, caps)
    if bumped is not None:
        return bumped
    if previous.legacy or base_fee is None:
        fees = Fees(caps.max_fee, caps.max_fee, legacy=True)
    else:
        fees = Fees(caps.max_fee, min(caps.max_priority_fee, caps.max_fee))
    if fees.max_fee <= previous.max_fee or fees.priority_fee <= previous.priority_fee:
        return None
    return fees


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
        self.faults = IntentFaults(pool, self.q, chain_id, base_delay=self.settings.fault_backoff)
        self.lanes: dict[bytes, int] = {}
        self._quote: tuple[int | None, int] | None = None
        self._foreign_nonce_seen: dict[int, int] = {}
        self._low_balance: set[bytes] = set()
        self._budget_exhausted = False
        # Per-pass caches of the signers' nonces on chain (one RPC per signer per pass).
        self._pending_count: dict[bytes, int] = {}
        self._mined_count: dict[bytes, int] = {}
        # Attempts whose last send had an unsure answer (timeout, unknown error): the next
        # pass sends the same bytes again rather than waiting for the bump.
        # Attempts sent again from the same bytes after an unsure answer or a refusal that may
        # pass: attempt id -> (answers so far, block from which it is sent again).
        self._paced: dict[int, tuple[int, int]] = {}
        self._answers: dict[int, SendOutcome] = {}  # each attempt's last answer (logged once)
        # Attempts refused for what they are, their nonce to be purged this pass (reason).
        self._refused: dict[int, str] = {}
        self._gas_limits: dict[int, int] = {}  # attempt id -> gas limit, for gas refusals
        self._learned_cap: int | None = None  # max_batch_gas lowered after a gas refusal
        # Stuck intents that cannot be purged (at the caps, or purges themselves), logged once.
        self._purge_waiting: set[int] = set()
        self.log = log.bind(chain_id=chain_id)

    # ------------------------------------------------------------------ one pass

    async def tick(self) -> TickReport:
        """One pass over the outbox."""
        started = time.perf_counter()
        report = TickReport()
        head = await self.client.head()
        finalized = await self.client.finalized(head, self.settings.finality_depth)
        self._quote = None  # fees are quoted at most once per pass
        if len(self._answers) > _MEMO_LIMIT:
            # Per-attempt memos of a long run: forgetting them costs one more log line each.
            self._answers.clear()
            self._gas_limits.clear()
        self._pending_count.clear()
        self._mined_count.clear()
        await self._send_unsent(head, report)
        await self._assign(head, report)
        await self._replace_refused(head, report)
        await self._receipts(head, finalized, report)
        await self._check_effects(report)
        await self._purge(head, report)
        await self._bump(head, report)
        TX_PASS_SECONDS.observe(time.perf_counter() - started)
        return report

    # ------------------------------------------------------------------ lanes

    async def _next_nonce(self, conn: Any, signer: bytes) -> int:
        """max(outbox, chain pending count, what this process handed out already). The pending
        count is read once per signer per pass: what this pass assigns is in `lanes`."""
        pending = self._pending_count.get(signer)
        if pending is None:
            pending = int(
                await self.client.request("eth_getTransactionCount", [_hex(signer), "pending"]),
                16,
            )
            self._pending_count[signer] = pending
        known = await self.outbox.next_nonce(conn, signer)
        return max(pending, known, self.lanes.get(signer, 0))

    async def _mined_nonce(self, signer: bytes) -> int:
        """The signer's transaction count at the latest block (once per signer per pass)."""
        count = self._mined_count.get(signer)
        if count is None:
            count = int(
                await self.client.request("eth_getTransactionCount", [_hex(signer), "latest"]),
                16,
            )
            self._mined_count[signer] = count
        return count

    def _pick_signer(
        self, in_flight: dict[bytes, int], excluded: set[bytes] | frozenset[bytes] = frozenset()
    ) -> bytes | None:
        """The least-loaded signer under its in-flight cap (not one of `excluded`)."""
        candidates = [
            (in_flight.get(addr, 0), addr)
            for addr in self.signers
            if addr not in excluded and in_flight.get(addr, 0) < self.settings.in_flight_cap
        ]
        return min(candidates)[1] if candidates else None

    async def _check_balances(self) -> set[bytes]:
        """Read every signer's balance (one batch), update the gauges, log transitions; the
        signers below `min_signer_balance`."""
        addrs = list(self.signers)
        results = await self.client.batch(
            [("eth_getBalance", [_hex(addr), "latest"]) for addr in addrs]
        )
        balances = {addr: int(r, 16) for addr, r in zip(addrs, results, strict=True)}
        low = low_balance_lanes(balances, self.settings.min_signer_balance)
        for addr, balance in balances.items():
            name = self.signers[addr].address
            SIGNER_BALANCE.labels(signer=name).set(balance)
            SIGNER_LOW_BALANCE.labels(signer=name).set(1 if addr in low else 0)
            if addr in low and addr not in self._low_balance:
                self.log.warning(
                    "signer_balance_low",
                    signer=name,
                    balance=balance,
                    minimum=self.settings.min_signer_balance,
                )
            elif addr not in low and addr in self._low_balance:
                self.log.info("signer_balance_ok", signer=name, balance=balance)
        self._low_balance = low
        async with self.pool.acquire() as conn:
            await conn.executemany(
                self.q["upsert_signer_state"],
                [
                    (self.chain_id, addr, Decimal(balance), addr in low)
                    for addr, balance in balances.items()
                ],
            )
        return low

    async def _spent_last_hour(self, conn: Any) -> int:
        """Gas paid by intents mined in the last hour + worst case of the in-flight ones."""
        since = datetime.now(UTC) - timedelta(hours=1)
        mined = await conn.fetchval(self.q["spent_since"], self.chain_id, since)
        pending = await conn.fetchval(self.q["in_flight_worst_case"], self.chain_id)
        return int(mined) + int(pending)

    def _set_budget_state(self, exhausted: bool, spent: int) -> None:
        if exhausted and not self._budget_exhausted:
            self.log.warning("budget_exhausted", spent=spent, budget=self.settings.budget_per_hour)
        elif not exhausted and self._budget_exhausted:
            self.log.info("budget_available", spent=spent, budget=self.settings.budget_per_hour)
        self._budget_exhausted = exhausted

    # ------------------------------------------------------------------ fees and signing

    async def _fees(self, head: BlockHeader) -> tuple[int | None, int]:
        """(base fee or None for legacy, tip) for a new or bumped attempt; quoted once per pass
        (the base fee comes with the head's header, the tip from config or the node)."""
        if self._quote is not None:
            return self._quote
        if self.settings.legacy or head.base_fee is None:
            price = int(await self.client.request("eth_gasPrice"), 16)
            self._quote = (None, self.settings.tip if self.settings.tip is not None else price)
            return self._quote
        tip = self.settings.tip
        if tip is None:
            try:
                tip = int(await self.client.request("eth_maxPriorityFeePerGas"), 16)
            except RpcResponseError:
                tip = 10**9
        self._quote = (head.base_fee, tip)
        return self._quote

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
        """Send stored bytes; record the outcome.

        - accepted, or ambiguous (already known, nonce too low, timeout, unknown): counted as
          sent; receipts and the account's nonce decide later. A timeout or unknown answer
          also sends the same bytes again, after 1, 2, 4, ... blocks (never every pass).
        - underpriced (replacement or not): counted as sent too, with the error kept, so the
          bump rule reprices it after `bump_after_blocks` from its own fees; resending the
          same bytes could never succeed.
        - refused for what the transaction is (a gas limit above the node's cap, oversized,
          inconsistent fees): its nonce is purged this pass and its work planned again
          (`_replace_refused`); after a gas-limit refusal batches are halved until they fit.
        - refused for now (insufficient funds, nonce too high, ...): the attempt keeps its
          state with the error recorded and is sent again next pass (a full pool: after 1, 2,
          4, ... blocks).
        Each attempt's answer is logged when it changes, then only counted.
        """
        try:
            await self.client.request("eth_sendRawTransaction", [_hex(raw)])
            outcome = SendOutcome.ACCEPTED
            error = None
        except RpcResponseError as exc:
            outcome = classify_send_error(exc.message)
            error = secrets.scrub(exc.message)  # stored: `keeper status` shows it
        except RpcError as exc:
            outcome = SendOutcome.TIMEOUT
            error = secrets.scrub(exc.message)
        BROADCASTS.labels(outcome=outcome.value).inc()
        sent = outcome is SendOutcome.ACCEPTED or outcome.ambiguous or outcome in REPRICE
        if outcome in PACED:
            # Sent again from the same bytes: after an unknown answer or a full pool after 1,
            # 2, 4, ... blocks, never every pass; a send that did not reach the node (timeout,
            # connection) the next pass.
            failures = self._paced.get(attempt_id, (0, 0))[0] + 1
            wait = 0 if outcome is SendOutcome.TIMEOUT else unknown_backoff_blocks(failures)
            self._paced[attempt_id] = (failures, head + wait)
        else:
            self._paced.pop(attempt_id, None)
        if outcome in REPLACE:
            self._refused[attempt_id] = f"refused by the node ({outcome.value}): {error}"
            if outcome in (SendOutcome.GAS_LIMIT_TOO_HIGH, SendOutcome.OVERSIZED_DATA):
                self._lower_gas_cap(attempt_id)
        async with self.pool.acquire() as conn:
            if sent:
                await conn.execute(self.q["mark_broadcast"], attempt_id, head, error)
            else:
                await conn.execute(self.q["record_send_error"], attempt_id, error)
        if error is not None:
            # A state change is logged once; the same answer again only counted (and at debug).
            repeat = self._answers.get(attempt_id) == outcome
            self._answers[attempt_id] = outcome
            event = "send_refused" if not (sent or outcome.ambiguous) else "send_answer"
            (self.log.debug if repeat else self.log.warning)(
                event, attempt=attempt_id, outcome=outcome.value, error=error
            )
        return outcome

    def _lower_gas_cap(self, attempt_id: int) -> None:
        """After a gas-limit refusal, batches are halved until they fit under what the node
        takes (learned, for this process: check-config names the configured cap)."""
        limit = self._gas_limits.get(attempt_id)
        if limit is None:
            return
        cap = self.settings.max_batch_gas
        learned = limit // 2 if cap is None else min(cap, limit // 2)
        if self._learned_cap is None or learned < self._learned_cap:
            self._learned_cap = learned
            self.log.warning(
                "batch_gas_cap_lowered",
                cap=learned,
                refused_gas_limit=limit,
                help="the node refused a gas limit under plan.max_batch_gas: lower it",
            )

    async def _send_unsent(self, head: BlockHeader, report: TickReport) -> None:
        """Send what was signed but never sent, and again what had an unsure answer."""
        async with self.pool.acquire() as conn:
            rows = list(await conn.fetch(self.q["unsent_attempts"], self.chain_id))
            if self._paced:
                rows += await conn.fetch(
                    self.q["unsure_attempts"], self.chain_id, sorted(self._paced)
                )
        for row in rows:
            paced = self._paced.get(int(row["id"]))
            if paced is not None and head.number < paced[1]:
                continue  # backed off after its last answer
            if self.faults.backed_off(row["intent_id"]):
                continue
            async with self.faults.contain(row["intent_id"], row["key"], "send"):
                outcome = await self._broadcast(row["id"], bytes(row["raw"]), head.number)
                if outcome is SendOutcome.ACCEPTED or outcome.ambiguous:
                    report.sent += 1
                else:
                    report.refused += 1

    # ------------------------------------------------------------------ assignment

    async def _assign(self, head: BlockHeader, report: TickReport) -> None:
        low = await self._check_balances()
        budget = self.settings.budget_per_hour
        async with self.pool.acquire() as conn:
            planned = await conn.fetch(
                self.q["planned_intents"], self.chain_id, self.settings.assign_batch
            )
            in_flight = await self.outbox.in_flight(conn)
            spent = await self._spent_last_hour(conn)
        SPENT_LAST_HOUR.set(spent)
        for addr, signer in self.signers.items():
            SIGNER_IN_FLIGHT.labels(signer=signer.address).set(in_flight.get(addr, 0))
        held = False
        try:
            if planned:
                held = await self._assign_planned(head, planned, in_flight, low, spent, report)
        finally:
            if budget is not None:
                self._set_budget_state(held or spent >= budget, spent)

    async def _assign_planned(
        self,
        head: BlockHeader,
        planned: Sequence[Any],
        in_flight: dict[bytes, int],
        low: set[bytes],
        spent: int,
        report: TickReport,
    ) -> bool:
        """Assign, sign, store and send `planned` (urgent first); True when the budget held a
        non-urgent intent back."""
        budget = self.settings.budget_per_hour
        base, tip = await self._fees(head)
        fees = initial_fees(base, tip, self.settings.caps)
        for intent in planned:
            if self.faults.backed_off(intent["id"]):
                continue
            async with self.faults.contain(intent["id"], intent["key"], "assign"):
                urgent = bool(intent["urgent"])
                if budget is not None and not urgent and spent >= budget:
                    # Urgent intents come first, so nothing after this one is urgent either.
                    report.held_by_budget += 1
                    return True
                signer = self._pick_signer(in_flight, low)
                if signer is None:
                    return False  # every usable lane is full; the rest waits
                simulated = await self._simulate_or_split(intent, signer, report)
                if simulated is None:
                    continue
                estimate, call = simulated
                gas_limit = self._gas_limit(intent["kind"], estimate, call["items"])
                cost = fees.worst_case_cost(gas_limit)
                if not budget_allows(spent, cost, budget, urgent=urgent):
                    report.held_by_budget += 1
                    return True
                async with self.pool.acquire() as conn, conn.transaction():
                    # One assignment per lane at a time, across processes: the nonce is computed
                    # and stored under the lane's lock (held to the end of the transaction).
                    await conn.execute(self.q["lock_lane"], lane_lock_key(self.chain_id, signer))
                    nonce = await self._next_nonce(conn, signer)
                    raw, tx_hash = self._sign(signer, nonce, call, gas_limit, fees)
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
                self._gas_limits[attempt_id] = gas_limit
                self.lanes[signer] = nonce + 1
                in_flight[signer] = in_flight.get(signer, 0) + 1
                SIGNER_NEXT_NONCE.labels(signer=self.signers[signer].address).set(nonce + 1)
                INTENTS.labels(kind=intent["kind"], state="assigned").inc()
                ATTEMPTS.labels(reason="first").inc()
                spent += cost
                report.assigned += 1
                self.log.info(
                    "intent_assigned", intent=intent["key"], signer=_hex(signer), nonce=nonce
                )
                outcome = await self._broadcast(attempt_id, raw, head.number)
                if not (outcome is SendOutcome.ACCEPTED or outcome.ambiguous):
                    report.refused += 1
        return False

    # ------------------------------------------------------------------ simulation

    def _call(self, signer: bytes, target: bytes, calldata: bytes, value: int) -> dict[str, str]:
        return {
            "from": _hex(signer),
            "to": _hex(target),
            "data": _hex(calldata),
            "value": hex(value),
        }

    async def _estimate(self, call: dict[str, str]) -> int | Revert:
        """`eth_estimateGas` (the simulation): the gas, or the revert. A node error that is not
        a revert is raised."""
        try:
            return int(await self.client.request("eth_estimateGas", [call]), 16)
        except RpcResponseError as exc:
            if not _is_revert(exc):
                raise
            return _revert_of(exc)

    async def _reverts(self, call: dict[str, str]) -> Revert | None:
        """`eth_call` at the latest block: None when it succeeds, else the revert."""
        try:
            await self.client.request("eth_call", [call, "latest"])
        except RpcResponseError as exc:
            if not _is_revert(exc):
                raise
            return _revert_of(exc)
        return None

    @property
    def batch_gas_cap(self) -> int | None:
        """The most gas a batch is sent with: `max_batch_gas`, or less once a node refused a
        gas limit under it."""
        caps = [c for c in (self.settings.max_batch_gas, self._learned_cap) if c is not None]
        return min(caps) if caps else None

    def _gas_limit(self, kind: str, estimate: int, items: int) -> int:
        """The estimate plus the margin, at least the kind's floor, at most `max_batch_gas`
        (an estimate above it was halved before: see `_halve`)."""
        limit = max(estimate * (100 + self.settings.gas_margin_pct) // 100, gas_floor(kind, items))
        cap = self.batch_gas_cap
        return limit if cap is None else max(min(limit, cap), estimate)

    async def _halve(
        self, intent: Any, signer: bytes, estimate: int, report: TickReport
    ) -> tuple[int, dict[str, Any]] | None:
        """A planned batch whose estimate is above `max_batch_gas`: keep its first half until
        it fits (the planner plans the rest again), re-estimated each time. A single item that
        does not fit fails the intent."""
        cap = self.batch_gas_cap
        assert cap is not None
        kind, key = intent["kind"], intent["key"]
        target, value = bytes(intent["target"]), int(intent["value"])
        items = _items(intent)
        total = len(items)
        result: int | Revert = estimate
        calldata = bytes(intent["calldata"])
        while isinstance(result, int) and result > cap and len(items) > 1:
            items = items[: len(items) // 2]
            calldata = encode_batch(kind, items)
            result = await self._estimate(self._call(signer, target, calldata, value))
        if isinstance(result, Revert):
            return None  # the next pass simulates what is left and splits out what reverts
        if result > cap:
            await self._fail(
                intent,
                f"one item needs {result:,} gas, above plan.max_batch_gas {cap:,}",
                [],
                report,
            )
            return None
        async with self.pool.acquire() as conn:
            done = await conn.execute(
                self.q["rewrite_batch"],
                intent["id"],
                calldata,
                json.dumps(items),
                f"estimated at {estimate:,} gas, above plan.max_batch_gas {cap:,}: "
                f"{len(items)} of {total} items kept, the rest is planned again",
            )
        if done != "UPDATE 1":
            return None
        report.split += 1
        self.log.warning(
            "batch_halved", intent=key, items=total, kept=len(items), estimate=estimate, cap=cap
        )
        return result, {"target": target, "calldata": calldata, "value": value, "items": len(items)}

    async def _simulate_or_split(
        self, intent: Any, signer: bytes, report: TickReport
    ) -> tuple[int, dict[str, Any]] | None:
        """Simulate `intent` from `signer`: (gas estimate, the call to sign) when it goes out,
        None when it does not (failed, or left planned with its reason noted).

        A batch that would revert is bisected: items that revert on their own are recorded in
        `intent_items` as `reverted` with their decoded reason and dropped from the batch,
        which is re-encoded (still `planned`: nothing was signed) and goes out without them.
        A batch that reverts whatever its items (paused contract, missing role), a single
        call, or a batch left with no good item fails with the reason."""
        target, value = bytes(intent["target"]), int(intent["value"])
        calldata = bytes(intent["calldata"])
        kind, key = intent["kind"], intent["key"]
        try:
            result = await self._estimate(self._call(signer, target, calldata, value))
        except RpcResponseError as exc:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    self.q["note_planned"],
                    intent["id"],
                    secrets.scrub(f"simulation failed: {exc.message}"),
                )
            self.log.warning("intent_simulation_error", intent=key, error=exc.message)
            return None
        if isinstance(result, int):
            cap = self.batch_gas_cap
            if cap is not None and result > cap and splittable(kind):
                return await self._halve(intent, signer, result, report)
            sent = len(_items(intent))
            return result, {"target": target, "calldata": calldata, "value": value, "items": sent}
        items = _items(intent)
        if not splittable(kind) or not items:
            await self._fail(intent, f"simulation reverted: {result.reason}", [], report)
            return None

        async def simulate(subset: Sequence[Any]) -> Revert | None:
            return await self._reverts(
                self._call(signer, target, encode_batch(kind, subset), value)
            )

        split = await split_batch(items, result, simulate)
        bad = [(item_key(kind, item), r.reason) for item, r in split.bad]
        if split.whole is not None:
            await self._fail(intent, f"simulation reverted: {split.whole.reason}", [], report)
            return None
        if not split.good:
            await self._fail(intent, "every item reverted in simulation", bad, report)
            return None
        calldata = encode_batch(kind, split.good)
        estimate = await self._estimate(self._call(signer, target, calldata, value))
        if isinstance(estimate, Revert):
            await self._fail(
                intent,
                f"simulation reverted without its {len(bad)} reverting items too: "
                f"{estimate.reason}",
                bad,
                report,
            )
            return None
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                self.q["rewrite_batch"],
                intent["id"],
                calldata,
                json.dumps(split.good),
                f"{len(bad)} of {len(items)} items reverted in simulation and were left out",
            )
            if done != "UPDATE 1":
                return None  # no longer planned (another manager took it)
            await self._record_items(conn, intent["id"], kind, "reverted", bad)
        report.split += 1
        self.log.warning(
            "batch_split",
            intent=key,
            items=len(items),
            reverted=len(bad),
            reasons=sorted({reason for _, reason in bad}),
        )
        sent = len(split.good)
        return estimate, {"target": target, "calldata": calldata, "value": value, "items": sent}

    async def _fail(
        self, intent: Any, reason: str, items: Sequence[tuple[str, str | None]], report: TickReport
    ) -> None:
        """Fail a planned intent with `reason`, recording its reverted items."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._record_items(conn, intent["id"], intent["kind"], "reverted", items)
            await conn.execute(self.q["fail_intent"], intent["id"], reason)
        INTENTS.labels(kind=intent["kind"], state="failed").inc()
        report.failed += 1
        self.log.warning("intent_failed", intent=intent["key"], reason=reason)

    async def _record_items(
        self,
        conn: Any,
        intent_id: int,
        kind: str,
        outcome: str,
        items: Sequence[tuple[str, str | None]],
    ) -> None:
        if not items:
            return
        await conn.executemany(
            self.q["insert_item_outcome"],
            [(intent_id, item, outcome, detail) for item, detail in items],
        )
        ITEMS.labels(kind=kind, outcome=outcome).inc(len(items))

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
            if self.faults.backed_off(intent["id"]):
                continue
            async with self.faults.contain(intent["id"], intent["key"], "receipts"):
                await self._advance(
                    intent, found.get(intent["id"]), canonical, head, finalized, report
                )

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
        kind = intent["kind"]
        revert = None
        if receipt is not None:
            number = int(receipt["blockNumber"], 16)
            header = canonical.get(number)
            if header is None or header.hash != receipt["blockHash"]:
                receipt = None  # a receipt from a block that is no longer canonical
            elif (
                int(receipt["status"], 16) == 0
                and state in ("assigned", "mined")
                and head.number - number + 1 >= self.settings.confirmations
            ):
                revert = await self._onchain_revert(intent, receipt)
        async with self.pool.acquire() as conn, conn.transaction():
            if receipt is None:
                if state in ("mined", "confirmed"):
                    await self._unmine(conn, intent, report)
                return
            number = int(receipt["blockNumber"], 16)
            if state == "assigned":
                tx_hash = bytes.fromhex(receipt["transactionHash"][2:])
                done = await conn.execute(
                    self.q["mark_mined"],
                    iid,
                    tx_hash,
                    number,
                    bytes.fromhex(receipt["blockHash"][2:]),
                    int(receipt["status"], 16),
                    int(receipt["gasUsed"], 16),
                    int(receipt.get("effectiveGasPrice") or "0x0", 16),
                    l1_fee(receipt),
                )
                if done != "UPDATE 1":
                    return  # another manager recorded it meanwhile
                await conn.execute(self.q["attempt_mined"], tx_hash)
                await conn.execute(self.q["attempts_superseded"], iid, tx_hash)
                state = "mined"
                report.mined += 1
                INTENTS.labels(kind=kind, state="mined").inc()
                GAS_SPENT.labels(kind=kind).inc(receipt_cost(receipt))
            elif intent["block_hash"] is not None and (
                "0x" + bytes(intent["block_hash"]).hex() != receipt["blockHash"]
            ):
                # Re-mined in another block after a reorg: record the new receipt next pass.
                await self._unmine(conn, intent, report)
                return
            depth = head.number - number + 1
            if state == "mined" and depth >= self.settings.confirmations:
                if int(receipt["status"], 16) == 0:
                    reason = f"reverted on chain: {revert or 'reason unknown'}"
                    await conn.execute(self.q["fail_intent"], iid, reason)
                    INTENTS.labels(kind=kind, state="failed").inc()
                    report.failed += 1
                    self.log.warning("intent_reverted", intent=intent["key"], reason=reason)
                    return
                if await conn.execute(self.q["mark_confirmed"], iid) != "UPDATE 1":
                    return  # another manager confirmed it meanwhile
                INTENTS.labels(kind=kind, state="confirmed").inc()
                state = "confirmed"
                report.confirmed += 1
                self.log.info(
                    "batch_confirmed",
                    intent=intent["key"],
                    kind=kind,
                    items=len(_items(intent)),
                    block=number,
                    tx_hash=receipt["transactionHash"],
                    gas_used=int(receipt["gasUsed"], 16),
                    cost_wei=receipt_cost(receipt),
                )
            if (
                state == "confirmed"
                and number <= finalized
                and await conn.execute(self.q["mark_final"], iid) == "UPDATE 1"
            ):
                INTENTS.labels(kind=kind, state="final").inc()
                report.final += 1

    async def _unmine(self, conn: Any, intent: Any, report: TickReport) -> None:
        """The intent's receipt left the chain: back to `assigned` (rebroadcast; its calls are
        idempotent on-chain), its checked effects forgotten. Nothing happens when the intent is
        no longer in the state this pass read (another manager moved it meanwhile)."""
        if await conn.execute(self.q["unmine"], intent["id"], intent["state"]) != "UPDATE 1":
            return
        await conn.execute(self.q["unmine_attempts"], intent["id"])
        await conn.execute(self.q["forget_effects"], intent["id"])
        INTENTS.labels(kind=intent["kind"], state="unmined").inc()
        report.unmined += 1
        self.log.warning("receipt_reorged_out", intent=intent["key"])

    async def _onchain_revert(self, intent: Any, receipt: dict[str, Any]) -> str:
        """Why a mined transaction reverted: out of gas when it used its whole limit, else the
        call replayed (`eth_call`) on the state at the end of its block, then of the block
        before (a transaction earlier in the same block is the usual cause, and a reverted
        transaction changed nothing itself)."""
        gas_used = int(receipt["gasUsed"], 16)
        if gas_used >= int(intent["gas_limit"]):
            return f"out of gas (used its whole limit of {gas_used})"
        call: dict[str, str] = self._call(
            bytes(intent["signer"]),
            bytes(intent["target"]),
            bytes(intent["calldata"]),
            int(intent["value"]),
        )
        call["gas"] = hex(int(intent["gas_limit"]))
        number = int(receipt["blockNumber"], 16)
        for block in (number, number - 1):
            try:
                await self.client.request("eth_call", [call, hex(max(block, 0))])
            except RpcResponseError as exc:
                if _is_revert(exc):
                    return _revert_of(exc).reason
                return f"reason unknown (replay failed: {exc.message})"
        return "reason unknown (the call succeeds when replayed)"

    # ------------------------------------------------------------------ effects

    async def _check_effects(self, report: TickReport) -> None:
        """Check each item of every confirmed batch against the indexed events of its
        transaction: `effect`, `skipped` (with the contract's reason) or `no_effect`. Runs once
        the indexer has the batch's block; an item without its effect is logged and counted
        (planners back such items off rather than retrying them in silence)."""
        async with self.pool.acquire() as conn:
            due = await conn.fetch(self.q["effects_due"], self.chain_id)
            for intent in due:
                if self.faults.backed_off(intent["id"]):
                    continue
                async with self.faults.contain(intent["id"], intent["key"], "effects"):
                    kind = intent["kind"]
                    items = _items(intent)
                    tx_hash, block = bytes(intent["tx_hash"]), int(intent["block_number"])
                    if kind == "usage":
                        fields = [usage_fields(i) for i in items]
                        ids = [Decimal(f[0]) for f in fields]
                        seqs = [Decimal(f[2]) for f in fields]
                        rows = await conn.fetch(
                            self.q[USAGE.effects_query], self.chain_id, tx_hash, block, ids, seqs
                        )
                    else:
                        ids = [Decimal(int(i)) for i in items]
                        rows = await conn.fetch(
                            self.q[BATCH_KINDS[kind].effects_query],
                            self.chain_id,
                            tx_hash,
                            block,
                            ids,
                        )
                    names = BATCH_KINDS[kind].skip_reasons
                    by_outcome: dict[str, list[tuple[str, str | None]]] = {}
                    for r in rows:
                        if r["effect"]:
                            outcome, detail = "effect", None
                        elif r["skip_reason"] is not None:
                            code = int(r["skip_reason"])
                            outcome, detail = "skipped", names.get(code, f"reason code {code}")
                        else:
                            outcome, detail = (
                                "no_effect",
                                "no event of this item in the transaction",
                            )
                        by_outcome.setdefault(outcome, []).append((r["item"], detail))
                    async with conn.transaction():
                        for outcome, found in by_outcome.items():
                            await self._record_items(conn, intent["id"], kind, outcome, found)
                        await conn.execute(self.q["mark_effects_checked"], intent["id"])
                    report.effects_checked += 1
                    missing = by_outcome.get("no_effect", [])
                    if missing:
                        report.no_effect += len(missing)
                        self.log.warning(
                            "batch_items_without_effect",
                            intent=intent["key"],
                            items=[item for item, _ in missing][:20],
                            count=len(missing),
                        )

    # ------------------------------------------------------------------ purging

    async def _purge(self, head: BlockHeader, report: TickReport) -> None:
        """Replace each lane's lowest nonce stuck past `purge_after_blocks` with a zero-value
        self-send at that nonce; the stuck intent goes to `replan`."""
        async with self.pool.acquire() as conn:
            latest = await conn.fetch(self.q["latest_attempts"], self.chain_id)
        stuck = purge_candidates(latest, head.number, self.settings.purge_after_blocks)
        if not stuck:
            return
        base, tip = await self._fees(head)
        for a in stuck:
            if self.faults.backed_off(a["intent_id"]):
                continue
            async with self.faults.contain(a["intent_id"], a["key"], "purge"):
                signer = bytes(a["signer"])
                nonce = int(a["nonce"])
                mined = await self._mined_nonce(signer)
                if mined != nonce:
                    # Passed: used elsewhere or mined after all (receipts / re-plan decide).
                    # Below: a lower nonce is missing, purging this one would not unblock the lane.
                    continue
                previous = Fees(int(a["max_fee"]), int(a["priority_fee"]), a["legacy"])
                fees = purge_fees(previous, base, tip, self.settings.caps)
                if a["kind"] == "purge" or fees is None:
                    # A purge is never purged again, nor an attempt already at the caps: the
                    # bump rule sends its stored bytes again until the base fee falls.
                    if a["intent_id"] not in self._purge_waiting:
                        self._purge_waiting.add(a["intent_id"])
                        self.log.warning(
                            "purge_waits_for_fees",
                            intent=a["key"],
                            nonce=nonce,
                            max_fee=previous.max_fee,
                            base_fee=base,
                            help="the lowest nonce is at the fee caps (tx.max_fee_wei, "
                            "tx.max_priority_fee_wei): it is sent again as it is until the "
                            "base fee falls under the cap, or raise the caps",
                        )
                    continue
                reason = (
                    f"nonce {nonce} stuck for {head.number - a['first_broadcast_block']} "
                    "blocks without a receipt: purged by a zero-value self-send"
                )
                await self._purge_nonce(a, fees, reason, head, report)

    async def _purge_nonce(
        self, a: Any, fees: Fees, reason: str, head: BlockHeader, report: TickReport
    ) -> None:
        """Give the nonce of attempt `a` (its intent's newest) to a zero-value self-send, an
        intent of kind `purge`; `a`'s intent goes to `replan` with `reason`."""
        signer, nonce = bytes(a["signer"]), int(a["nonce"])
        purge = {"target": signer, "calldata": b"", "value": 0}
        raw, tx_hash = self._sign(signer, nonce, purge, PURGE_GAS, fees)
        key = f"purge:{_hex(signer)}:{nonce}:{a['intent_id']}"
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(self.q["mark_replan"], a["intent_id"], reason)
            if done != "UPDATE 1":
                return  # mined or re-planned meanwhile
            await conn.execute(self.q["supersede_attempts"], a["intent_id"])
            purge_id = await conn.fetchval(
                self.q["insert_intent"], self.chain_id, "purge", key, signer, b"", 0, "[]", True
            )
            await conn.execute(self.q["assign_intent"], purge_id, signer, nonce, PURGE_GAS)
            attempt_id = await conn.fetchval(
                self.q["insert_attempt"],
                purge_id,
                self.chain_id,
                signer,
                nonce,
                fees.max_fee,
                fees.priority_fee,
                fees.legacy,
                PURGE_GAS,
                raw,
                tx_hash,
            )
        report.purged += 1
        report.replanned += 1
        ATTEMPTS.labels(reason="purge").inc()
        INTENTS.labels(kind="purge", state="assigned").inc()
        self._paced.pop(int(a["id"]), None)
        self._foreign_nonce_seen.pop(a["intent_id"], None)
        outcome = await self._broadcast(attempt_id, raw, head.number)
        self.log.warning(
            "nonce_purged",
            intent=a["key"],
            signer=_hex(signer),
            nonce=nonce,
            max_fee=fees.max_fee,
            outcome=outcome.value,
            reason=reason,
        )

    async def _replace_refused(self, head: BlockHeader, report: TickReport) -> None:
        """Attempts a node refused for what they are (a gas limit above its cap, an oversized
        or inconsistent transaction): the same bytes can never be taken, so their nonce goes
        to a purge at once and their intents are planned again (smaller, after a gas-limit
        refusal: see `_refused`)."""
        if not self._refused:
            return
        refused, self._refused = self._refused, {}
        async with self.pool.acquire() as conn:
            latest = await conn.fetch(self.q["latest_attempts"], self.chain_id)
        base, tip = await self._fees(head)
        for a in latest:
            reason = refused.get(int(a["id"]))
            if reason is None or a["kind"] == "purge":
                continue
            async with self.faults.contain(a["intent_id"], a["key"], "purge"):
                fees = initial_fees(base, tip, self.settings.caps)
                await self._purge_nonce(a, fees, reason, head, report)

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
            if self.faults.backed_off(a["intent_id"]):
                continue
            async with self.faults.contain(a["intent_id"], a["key"], "bump"):
                signer = bytes(a["signer"])
                if await self._nonce_used_elsewhere(a, report):
                    continue
                if self._answers.get(int(a["id"])) is SendOutcome.UNKNOWN:
                    continue  # a fee bump would not answer it: sent again, paced (_broadcast)
                previous = Fees(int(a["max_fee"]), int(a["priority_fee"]), a["legacy"])
                fees = bump(previous, base, tip, self.settings.caps)
                if fees is None:
                    # At the cap: the same bytes again (the node may have dropped them).
                    await self._broadcast(a["id"], bytes(a["raw"]), head.number)
                    REBROADCASTS.inc()
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
                self._paced.pop(int(a["id"]), None)
                self._gas_limits[attempt_id] = int(a["gas_limit"])
                ATTEMPTS.labels(reason="bump").inc()
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
        mined = await self._mined_nonce(bytes(attempt["signer"]))
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
        INTENTS.labels(kind=attempt["kind"], state="replan").inc()
        self.log.warning("nonce_used_elsewhere", intent_id=iid, nonce=attempt["nonce"])
        return True
