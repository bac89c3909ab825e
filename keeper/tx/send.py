"""Sending stored bytes, and what the node's answer means for the attempt.

Every signed attempt is stored before it is sent, so a crash between the two leaves bytes that the
next pass sends (`send_unsent`). The node's answer decides what happens next (`Sender.broadcast`);
ambiguous answers are never failures by themselves: the receipts and the account's nonce decide.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import keccak

from keeper import secrets
from keeper.chain.rpc import RpcError, RpcResponseError
from keeper.tx.context import TxContext, hex_of
from keeper.tx.counters import BROADCASTS, UNSURE_ATTEMPTS
from keeper.tx.send_errors import SendOutcome, classify_send_error, unknown_backoff_blocks

# Answers that mean "this fee will not do": the attempt is repriced by the bump rule.
REPRICE = frozenset({SendOutcome.REPLACEMENT_UNDERPRICED, SendOutcome.UNDERPRICED})
# Answers after which the same bytes are sent again, paced (see Sender.broadcast).
PACED = frozenset({SendOutcome.TIMEOUT, SendOutcome.UNKNOWN, SendOutcome.POOL_FULL})
# Refusals of the transaction itself: the same bytes can never be taken, so its nonce is purged
# at once and its work planned again (see Repair.replace_refused).
REPLACE = frozenset(
    {
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        SendOutcome.OVERSIZED_DATA,
        SendOutcome.INTRINSIC_GAS,
        SendOutcome.TIP_ABOVE_FEE_CAP,
    }
)
# Attempts whose last answer and gas limit are remembered before the memos are cleared.
MEMO_LIMIT = 100_000


def went_out(outcome: SendOutcome) -> bool:
    """Whether the node took the attempt, or may have (ambiguous answers)."""
    return outcome is SendOutcome.ACCEPTED or outcome.ambiguous


# Of the answers of several providers, the one that counts: the surest that the transaction
# went out first; then refusals that only ask to wait or reprice, before refusals of the
# transaction itself (another provider may take the same bytes later).
_WENT_OUT_ORDER = (
    SendOutcome.ACCEPTED,
    SendOutcome.ALREADY_KNOWN,
    SendOutcome.NONCE_TOO_LOW,
    SendOutcome.UNKNOWN,
    SendOutcome.TIMEOUT,
)


def answer_outcome(answer: object) -> tuple[SendOutcome, str | None]:
    """One provider's answer to a send: its outcome and the error text (None if accepted)."""
    if isinstance(answer, RpcResponseError):
        return classify_send_error(answer.message), answer.message
    if isinstance(answer, RpcError):
        return SendOutcome.TIMEOUT, answer.message
    return SendOutcome.ACCEPTED, None


def merged_answer(answers: Sequence[tuple[str, object]]) -> tuple[SendOutcome, str | None]:
    """The outcome of a send broadcast to every provider (`ChainClient.broadcast`): any
    accepted or already known means sent; otherwise the error table decides, the surest answer
    first (see `_WENT_OUT_ORDER`), and a refusal of the transaction itself (REPLACE) only when
    no provider gave a softer one. With several providers the error names the provider."""
    outcomes = [(label, *answer_outcome(a)) for label, a in answers]
    named = len(outcomes) > 1

    def rank(item: tuple[str, SendOutcome, str | None]) -> int:
        outcome = item[1]
        if outcome in _WENT_OUT_ORDER:
            return _WENT_OUT_ORDER.index(outcome)
        return len(_WENT_OUT_ORDER) + (1 if outcome in REPLACE else 0)

    label, outcome, error = min(outcomes, key=rank)  # min is stable: provider order breaks ties
    if error is not None and named:
        error = f"{label}: {error}"
    return outcome, error


class Sender:
    """Sends attempts and remembers, per attempt, what the node last answered."""

    def __init__(self, ctx: TxContext) -> None:
        self.ctx = ctx
        # Attempts sent again from the same bytes after an unsure answer or a refusal that may
        # pass: attempt id -> (answers so far, block from which it is sent again).
        self.paced: dict[int, tuple[int, int]] = {}
        self.answers: dict[int, SendOutcome] = {}  # each attempt's last answer (logged once)
        # Attempts refused for what they are, their nonce to be purged this pass (reason).
        self.refused: dict[int, str] = {}
        self.gas_limits: dict[int, int] = {}  # attempt id -> gas limit, for gas refusals
        self.learned_cap: int | None = None  # max_batch_gas lowered after a gas refusal

    def new_pass(self) -> None:
        if len(self.answers) > MEMO_LIMIT:
            # Per-attempt memos of a long run: forgetting them costs one more log line each.
            self.answers.clear()
            self.gas_limits.clear()

    @property
    def batch_gas_cap(self) -> int | None:
        """The most gas a batch is sent with: `max_batch_gas`, or less once a node refused a
        gas limit under it."""
        caps = [c for c in (self.ctx.max_batch_gas, self.learned_cap) if c is not None]
        return min(caps) if caps else None

    async def send_unsent(self) -> None:
        """Send what was signed but never sent, and again what had an unsure answer."""
        ctx = self.ctx
        rows = await ctx.outbox.unsent()
        if self.paced:
            unsure = await ctx.outbox.unsure(sorted(self.paced))
            # Attempts mined, replaced or purged meanwhile are forgotten.
            self.paced = {a.id: self.paced[a.id] for a in unsure}
            rows += unsure
        UNSURE_ATTEMPTS.set(len(self.paced))
        for row in rows:
            paced = self.paced.get(row.id)
            if paced is not None and ctx.head.number < paced[1]:
                continue  # backed off after its last answer
            if ctx.faults.backed_off(row.intent_id):
                continue
            async with ctx.faults.contain(row.intent_id, row.key, "send"):
                await self.broadcast(row.id, row.raw, row.key)

    async def broadcast(self, attempt_id: int, raw: bytes, intent: str) -> SendOutcome:
        """Send stored bytes (attempt `attempt_id` of the intent keyed `intent`); record the
        outcome, and count it in the pass's report: `sent` when the node took it or may have,
        else `refused`.

        - accepted, or ambiguous (already known, nonce too low, timeout, unknown): counted as
          sent; receipts and the account's nonce decide later. A timeout or unknown answer
          also sends the same bytes again, after 1, 2, 4, ... blocks (never every pass).
        - underpriced (replacement or not): counted as sent too, with the error kept, so the
          bump rule reprices it after `bump_after_blocks` from its own fees; resending the
          same bytes could never succeed.
        - refused for what the transaction is (a gas limit above the node's cap, oversized,
          inconsistent fees): its nonce is purged this pass and its work planned again
          (`Repair.replace_refused`); after a gas-limit refusal batches are halved until they
          fit.
        - refused for now (insufficient funds, nonce too high, ...): the attempt keeps its
          state with the error recorded and is sent again next pass (a full pool: after 1, 2,
          4, ... blocks).
        Each attempt's answer is logged when it changes (`tx_broadcast` with the transaction
        hash when taken, `send_answer` or `send_refused` otherwise), then only counted.
        """
        ctx = self.ctx
        head = ctx.head.number
        # To every healthy provider: one provider's mempool or rate limit cannot hold it back.
        answers = await ctx.client.broadcast("eth_sendRawTransaction", [hex_of(raw)])
        outcome, error = merged_answer(answers)
        if error is not None:
            error = secrets.scrub(error)  # stored: `keeper status` shows it
        BROADCASTS.labels(outcome=outcome.value).inc()
        if went_out(outcome):
            ctx.report.sent += 1
        else:
            ctx.report.refused += 1
        sent = went_out(outcome) or outcome in REPRICE
        if outcome in PACED:
            # Sent again from the same bytes: after an unknown answer or a full pool after 1,
            # 2, 4, ... blocks, never every pass; a send that did not reach the node (timeout,
            # connection) the next pass.
            failures = self.paced.get(attempt_id, (0, 0))[0] + 1
            wait = 0 if outcome is SendOutcome.TIMEOUT else unknown_backoff_blocks(failures)
            self.paced[attempt_id] = (failures, head + wait)
        else:
            self.paced.pop(attempt_id, None)
        if outcome in REPLACE:
            self.refused[attempt_id] = f"refused by the node ({outcome.value}): {error}"
            if outcome in (SendOutcome.GAS_LIMIT_TOO_HIGH, SendOutcome.OVERSIZED_DATA):
                self._lower_gas_cap(attempt_id)
        stored = None if outcome is SendOutcome.ACCEPTED else outcome.value
        if sent:
            await ctx.outbox.mark_broadcast(attempt_id, head, error, stored)
        else:
            await ctx.outbox.record_send_error(attempt_id, error, stored)
        # A state change is logged once; the same answer again only counted (and at debug).
        repeat = self.answers.get(attempt_id) == outcome
        self.answers[attempt_id] = outcome
        fields = {"intent": intent, "attempt": attempt_id, "tx_hash": hex_of(keccak(raw))}
        if error is None:
            (ctx.log.debug if repeat else ctx.log.info)("tx_broadcast", **fields)
        else:
            event = "send_refused" if not (sent or outcome.ambiguous) else "send_answer"
            (ctx.log.debug if repeat else ctx.log.warning)(
                event, **fields, outcome=outcome.value, error=error
            )
        return outcome

    def _lower_gas_cap(self, attempt_id: int) -> None:
        """After a gas-limit refusal, batches are halved until they fit under what the node
        takes (learned, for this process: check-config names the configured cap)."""
        limit = self.gas_limits.get(attempt_id)
        if limit is None:
            return
        cap = self.ctx.max_batch_gas
        learned = limit // 2 if cap is None else min(cap, limit // 2)
        if self.learned_cap is None or learned < self.learned_cap:
            self.learned_cap = learned
            self.ctx.log.warning(
                "batch_gas_cap_lowered",
                cap=learned,
                refused_gas_limit=limit,
                help="the node refused a gas limit under plan.max_batch_gas: lower it",
            )
