"""Stuck lanes: fee bumps, purges, and nonces used outside the keeper.

- **bump** attempts not mined after `bump_after_blocks`: a replacement at the same nonce with both
  fees +12.5 % (`keeper.tx.fees`), or the same bytes again when the caps leave no room.
- **purge** the lowest nonce of a lane broadcast `purge_after_blocks` ago without a receipt: a
  zero-value self-send at that nonce (an intent of kind `purge`) takes its place, and the stuck
  intent goes to `replan` so the planners plan its items again. A purge is signed only when its
  fees rise above the stuck attempt's: never a purge of a purge, never one at the same caps
  (that would be the very same transaction).
- **replace** attempts a node refused for what they are: their nonce goes to a purge at once.
- a nonce the account used **elsewhere** (seen on consecutive checks) re-plans the intent.

A nonce is never signed twice with different content except as a fee bump of the same call.
"""

from __future__ import annotations

from collections.abc import Sequence

from keeper.db.outbox_rows import Attempt, Call
from keeper.tx.context import TxContext, hex_of
from keeper.tx.counters import ATTEMPTS, INTENTS, REBROADCASTS
from keeper.tx.fees import FeeCaps, Fees, bump, initial_fees
from keeper.tx.send import Sender
from keeper.tx.send_errors import SendOutcome

PURGE_GAS = 21_000  # a plain value transfer to an account without code


def purge_candidates(latest: Sequence[Attempt], head: int, after_blocks: int) -> list[Attempt]:
    """Per signer, its lowest assigned nonce when that intent's first broadcast is at least
    `after_blocks` old (`latest`: the newest attempt of each assigned intent)."""
    lowest: dict[bytes, Attempt] = {}
    for a in latest:
        signer = a.signed.signer
        if signer not in lowest or a.signed.nonce < lowest[signer].signed.nonce:
            lowest[signer] = a
    return [
        a
        for a in lowest.values()
        if a.first_broadcast_block is not None and head - a.first_broadcast_block >= after_blocks
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


def fees_of(a: Attempt) -> Fees:
    return Fees(a.signed.max_fee, a.signed.priority_fee, a.signed.legacy)


class Repair:
    """Unsticks lanes: bumps, purges, replacements of refused attempts."""

    def __init__(self, ctx: TxContext, sender: Sender) -> None:
        self.ctx = ctx
        self.sender = sender
        self._foreign_nonce_seen: dict[int, int] = {}
        # Stuck intents that cannot be purged (at the caps, or purges themselves), logged once.
        self._purge_waiting: set[int] = set()

    async def replace_refused(self) -> None:
        """Attempts a node refused for what they are (a gas limit above its cap, an oversized
        or inconsistent transaction): the same bytes can never be taken, so their nonce goes
        to a purge at once and their intents are planned again (smaller, after a gas-limit
        refusal: see `Sender.broadcast`)."""
        if not self.sender.refused:
            return
        refused, self.sender.refused = self.sender.refused, {}
        ctx = self.ctx
        latest = await ctx.outbox.latest_attempts()
        base, tip = await ctx.fees()
        for a in latest:
            reason = refused.get(a.id)
            if reason is None or a.kind == "purge":
                continue
            async with ctx.faults.contain(a.intent_id, a.key, "purge"):
                await self._purge_nonce(a, initial_fees(base, tip, ctx.caps), reason)

    async def purge(self) -> None:
        """Replace each lane's lowest nonce stuck past `purge_after_blocks` with a zero-value
        self-send at that nonce; the stuck intent goes to `replan`."""
        ctx = self.ctx
        latest = await ctx.outbox.latest_attempts()
        stuck = purge_candidates(latest, ctx.head.number, ctx.settings.purge_after_blocks)
        if not stuck:
            return
        base, tip = await ctx.fees()
        for a in stuck:
            if ctx.faults.backed_off(a.intent_id):
                continue
            async with ctx.faults.contain(a.intent_id, a.key, "purge"):
                nonce = a.signed.nonce
                if await ctx.nonce_on_chain(a.signed.signer, "latest") != nonce:
                    # Passed: used elsewhere or mined after all (receipts / re-plan decide).
                    # Below: a lower nonce is missing; purging this one would not unblock the lane.
                    continue
                previous = fees_of(a)
                fees = purge_fees(previous, base, tip, ctx.caps)
                if a.kind == "purge" or fees is None:
                    self._wait_for_fees(a, previous, base)
                    continue
                assert a.first_broadcast_block is not None
                reason = (
                    f"nonce {nonce} stuck for {ctx.head.number - a.first_broadcast_block} "
                    "blocks without a receipt: purged by a zero-value self-send"
                )
                await self._purge_nonce(a, fees, reason)

    def _wait_for_fees(self, a: Attempt, previous: Fees, base: int | None) -> None:
        """A purge is never purged again, nor an attempt already at the caps: the bump rule
        sends its stored bytes again until the base fee falls."""
        if a.intent_id in self._purge_waiting:
            return
        self._purge_waiting.add(a.intent_id)
        self.ctx.log.warning(
            "purge_waits_for_fees",
            intent=a.key,
            nonce=a.signed.nonce,
            max_fee=previous.max_fee,
            base_fee=base,
            help="the lowest nonce is at the fee caps (tx.max_fee_wei, tx.max_priority_fee_wei): "
            "it is sent again as it is until the base fee falls under the cap, or raise the caps",
        )

    async def _purge_nonce(self, a: Attempt, fees: Fees, reason: str) -> None:
        """Give the nonce of attempt `a` (its intent's newest) to a zero-value self-send, an
        intent of kind `purge`; `a`'s intent goes to `replan` with `reason`."""
        ctx = self.ctx
        signer, nonce = a.signed.signer, a.signed.nonce
        signed = ctx.sign(signer, nonce, Call(signer, b"", 0), PURGE_GAS, fees)
        key = f"purge:{hex_of(signer)}:{nonce}:{a.intent_id}"
        attempt_id = await ctx.outbox.purge(a.intent_id, reason, key, signed)
        if attempt_id is None:
            return  # mined or re-planned meanwhile
        ctx.report.purged += 1
        ctx.report.replanned += 1
        ATTEMPTS.labels(reason="purge").inc()
        INTENTS.labels(kind="purge", state="assigned").inc()
        self.sender.paced.pop(a.id, None)
        self._foreign_nonce_seen.pop(a.intent_id, None)
        outcome = await self.sender.broadcast(attempt_id, signed.raw, key)
        ctx.log.warning(
            "nonce_purged",
            intent=a.key,
            purge_intent=key,
            signer=ctx.name(signer),
            nonce=nonce,
            max_fee=fees.max_fee,
            outcome=outcome.value,
            reason=reason,
        )

    async def bump(self) -> None:
        """A replacement at +12.5 % for each attempt unmined `bump_after_blocks` after it was
        sent; at the caps, the same bytes again (the node may have dropped them)."""
        ctx = self.ctx
        after = ctx.settings.bump_after_blocks
        stale = [
            a
            for a in await ctx.outbox.latest_attempts()
            if a.broadcast_block is not None and ctx.head.number - a.broadcast_block >= after
        ]
        if not stale:
            return
        base, tip = await ctx.fees()
        for a in stale:
            if ctx.faults.backed_off(a.intent_id):
                continue
            async with ctx.faults.contain(a.intent_id, a.key, "bump"):
                if await self._nonce_used_elsewhere(a):
                    continue
                if self.sender.answers.get(a.id) is SendOutcome.UNKNOWN:
                    continue  # a fee bump would not answer it: sent again, paced (Sender)
                fees = bump(fees_of(a), base, tip, ctx.caps)
                if fees is None:
                    await self.sender.broadcast(a.id, a.signed.raw, a.key)
                    REBROADCASTS.inc()
                    ctx.report.rebroadcast += 1
                    continue
                gas_limit = a.signed.gas_limit
                signed = ctx.sign(a.signed.signer, a.signed.nonce, a.call, gas_limit, fees)
                attempt_id = await ctx.outbox.add_attempt(a.intent_id, signed)
                self.sender.paced.pop(a.id, None)
                self.sender.gas_limits[attempt_id] = gas_limit
                ATTEMPTS.labels(reason="bump").inc()
                outcome = await self.sender.broadcast(attempt_id, signed.raw, a.key)
                ctx.report.bumped += 1
                ctx.log.info(
                    "attempt_bumped",
                    intent=a.key,
                    nonce=a.signed.nonce,
                    max_fee=fees.max_fee,
                    outcome=outcome.value,
                )

    async def _nonce_used_elsewhere(self, a: Attempt) -> bool:
        """True (and the intent re-planned) when the account's mined nonce passed this intent's
        nonce without any of its attempts having a receipt, on consecutive checks: the key was
        used outside the keeper, and the intent's call must be planned again."""
        ctx = self.ctx
        mined = await ctx.nonce_on_chain(a.signed.signer, "latest")
        iid = a.intent_id
        if mined <= a.signed.nonce:
            self._foreign_nonce_seen.pop(iid, None)
            return False
        seen = self._foreign_nonce_seen.get(iid, 0) + 1
        self._foreign_nonce_seen[iid] = seen
        if seen < ctx.settings.replan_after_checks:
            return True  # decide on a later pass, after the receipts had another chance
        await ctx.outbox.replan(iid, "nonce used by another transaction of the key")
        self._foreign_nonce_seen.pop(iid, None)
        ctx.report.replanned += 1
        INTENTS.labels(kind=a.kind, state="replan").inc()
        ctx.log.warning("nonce_used_elsewhere", intent=a.key, nonce=a.signed.nonce)
        return True
