"""Assignment: planned intents get a signer and a nonce, are signed, stored, then sent.

Assignment is gated twice: a signer whose balance (one `eth_getBalance` batch per pass) is below
`min_signer_balance` gets no new work until funded again, and once the hourly spending budget is
used up (gas paid by intents mined in the last hour + the worst case of those still in flight)
only urgent intents are assigned. Both report a gauge and log once per transition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from keeper.db.outbox_rows import Call, PlannedIntent, Signed
from keeper.tx.context import TxContext, hex_of
from keeper.tx.counters import (
    ATTEMPTS,
    INTENTS,
    SIGNER_BALANCE,
    SIGNER_IN_FLIGHT,
    SIGNER_LOW_BALANCE,
    SIGNER_NEXT_NONCE,
    SPENT_LAST_HOUR,
)
from keeper.tx.fees import Fees, initial_fees
from keeper.tx.send import Sender
from keeper.tx.simulate import Simulator


def low_balance_lanes(balances: Mapping[bytes, int], minimum: int) -> set[bytes]:
    """The signers whose balance is below `minimum` (they get no new work)."""
    return {addr for addr, balance in balances.items() if balance < minimum}


def budget_allows(spent: int, cost: int, budget: int | None, *, urgent: bool) -> bool:
    """May an intent whose worst-case cost is `cost` be assigned with `spent` used this hour?
    Urgent intents always may; the rest only while they fit under the budget."""
    return urgent or budget is None or spent + cost <= budget


def pick_signer(
    signers: Sequence[bytes],
    in_flight: Mapping[bytes, int],
    cap: int,
    excluded: set[bytes] | frozenset[bytes] = frozenset(),
) -> bytes | None:
    """The least-loaded signer under its in-flight cap (not one of `excluded`)."""
    candidates = [
        (in_flight.get(addr, 0), addr)
        for addr in signers
        if addr not in excluded and in_flight.get(addr, 0) < cap
    ]
    return min(candidates)[1] if candidates else None


class Assigner:
    """Assigns planned intents to the signers' lanes."""

    def __init__(self, ctx: TxContext, sender: Sender, simulator: Simulator) -> None:
        self.ctx = ctx
        self.sender = sender
        self.simulator = simulator
        self.lanes: dict[bytes, int] = {}  # the next nonce this process handed out, per signer
        self._low_balance: set[bytes] = set()
        self._budget_exhausted = False

    async def spent_last_hour(self) -> int:
        """Gas paid by intents mined in the last hour + worst case of the in-flight ones."""
        since = datetime.now(UTC) - timedelta(hours=1)
        outbox = self.ctx.outbox
        return await outbox.spent_since(since) + await outbox.worst_case_in_flight()

    async def assign(self) -> None:
        ctx = self.ctx
        low = await self._check_balances()
        budget = ctx.settings.budget_per_hour_wei
        planned = await ctx.outbox.planned(ctx.settings.assign_batch)
        in_flight = await ctx.outbox.in_flight()
        spent = await self.spent_last_hour()
        SPENT_LAST_HOUR.set(spent)
        for addr in ctx.signers:
            SIGNER_IN_FLIGHT.labels(signer=ctx.name(addr)).set(in_flight.get(addr, 0))
        held = False
        try:
            if planned:
                held = await self._assign_planned(planned, in_flight, low, spent)
        finally:
            if budget is not None:
                self._set_budget_state(held or spent >= budget, spent)

    async def _assign_planned(
        self,
        planned: Sequence[PlannedIntent],
        in_flight: dict[bytes, int],
        low: set[bytes],
        spent: int,
    ) -> bool:
        """Assign, sign, store and send `planned` (urgent first); True when the budget held a
        non-urgent intent back."""
        ctx = self.ctx
        budget = ctx.settings.budget_per_hour_wei
        base, tip = await ctx.fees()
        fees = initial_fees(base, tip, ctx.caps)
        for intent in planned:
            if ctx.faults.backed_off(intent.id):
                continue
            async with ctx.faults.contain(intent.id, intent.key, "assign"):
                if budget is not None and not intent.urgent and spent >= budget:
                    # Urgent intents come first, so nothing after this one is urgent either.
                    ctx.report.held_by_budget += 1
                    return True
                signer = pick_signer(list(ctx.signers), in_flight, ctx.settings.in_flight_cap, low)
                if signer is None:
                    return False  # every usable lane is full; the rest waits
                simulated = await self.simulator.simulate_or_split(intent, signer)
                if simulated is None:
                    continue
                gas_limit = self.simulator.gas_limit(
                    intent.kind, simulated.estimate, simulated.items
                )
                cost = fees.worst_case_cost(gas_limit)
                if not budget_allows(spent, cost, budget, urgent=intent.urgent):
                    ctx.report.held_by_budget += 1
                    return True
                stored = await self._store(intent, signer, simulated.call, gas_limit, fees)
                if stored is None:
                    continue  # taken meanwhile (another manager): nothing was stored
                attempt_id, signed = stored
                # Stored before sent: a crash here leaves a signed attempt the next pass sends.
                self.sender.gas_limits[attempt_id] = gas_limit
                self.lanes[signer] = signed.nonce + 1
                in_flight[signer] = in_flight.get(signer, 0) + 1
                SIGNER_NEXT_NONCE.labels(signer=ctx.name(signer)).set(signed.nonce + 1)
                INTENTS.labels(kind=intent.kind, state="assigned").inc()
                ATTEMPTS.labels(reason="first").inc()
                spent += cost
                ctx.report.assigned += 1
                ctx.log.info(
                    "intent_assigned",
                    intent=intent.key,
                    signer=ctx.name(signer),
                    nonce=signed.nonce,
                )
                await self.sender.broadcast(attempt_id, signed.raw, intent.key)
        return False

    async def _store(
        self, intent: PlannedIntent, signer: bytes, call: Call, gas_limit: int, fees: Fees
    ) -> tuple[int, Signed] | None:
        """Sign at the lane's next nonce and store, under the lane's lock: the nonce is the
        highest of the outbox's, the chain's pending count and what this process handed out."""
        ctx = self.ctx

        async def sign(known: int) -> Signed:
            pending = await ctx.nonce_on_chain(signer, "pending")
            nonce = max(pending, known, self.lanes.get(signer, 0))
            return ctx.sign(signer, nonce, call, gas_limit, fees)

        return await ctx.outbox.assign(intent.id, signer, gas_limit, sign)

    async def _check_balances(self) -> set[bytes]:
        """Read every signer's balance (one batch), update the gauges, log transitions; the
        signers below `min_signer_balance`."""
        ctx = self.ctx
        addrs = list(ctx.signers)
        results = await ctx.client.batch(
            [("eth_getBalance", [hex_of(addr), "latest"]) for addr in addrs]
        )
        balances = {addr: int(r, 16) for addr, r in zip(addrs, results, strict=True)}
        minimum = ctx.settings.min_signer_balance_wei
        low = low_balance_lanes(balances, minimum)
        for addr, balance in balances.items():
            name = ctx.name(addr)
            SIGNER_BALANCE.labels(signer=name).set(balance)
            SIGNER_LOW_BALANCE.labels(signer=name).set(1 if addr in low else 0)
            if addr in low and addr not in self._low_balance:
                ctx.log.warning("signer_balance_low", signer=name, balance=balance, minimum=minimum)
            elif addr not in low and addr in self._low_balance:
                ctx.log.info("signer_balance_ok", signer=name, balance=balance)
        self._low_balance = low
        await ctx.outbox.save_signer_states(
            [(addr, balance, addr in low) for addr, balance in balances.items()]
        )
        return low

    def _set_budget_state(self, exhausted: bool, spent: int) -> None:
        budget = self.ctx.settings.budget_per_hour_wei
        if exhausted and not self._budget_exhausted:
            self.ctx.log.warning("budget_exhausted", spent=spent, budget=budget)
        elif not exhausted and self._budget_exhausted:
            self.ctx.log.info("budget_available", spent=spent, budget=budget)
        self._budget_exhausted = exhausted
