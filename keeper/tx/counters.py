"""The transaction manager's metrics, shared by its steps."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from keeper import metrics
from keeper.kinds import BATCH_KINDS, INTENT_KINDS
from keeper.tx.send_errors import SendOutcome

# Every label value these counters take, so that each series exists at 0 from the start and
# `increase()` sees the first event (a series born at 1 has no increase).
INTENT_STATES = ("assigned", "mined", "confirmed", "final", "failed", "replan", "unmined")
ATTEMPT_REASONS = ("first", "bump", "purge")
ITEM_OUTCOMES = ("effect", "skipped", "no_effect", "reverted")

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
UNSURE_ATTEMPTS = Gauge(
    "keeper_tx_unsure_attempts",
    "Attempts the node answered neither yes nor no (unknown answer, full pool, no answer): sent "
    "again from the same bytes after 1, 2, 4, ... blocks while receipts and the nonce decide.",
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


for _kind in INTENT_KINDS:
    GAS_SPENT.labels(kind=_kind)
    for _state in INTENT_STATES:
        INTENTS.labels(kind=_kind, state=_state)
for _kind in BATCH_KINDS:
    for _outcome in ITEM_OUTCOMES:
        ITEMS.labels(kind=_kind, outcome=_outcome)
for _reason in ATTEMPT_REASONS:
    ATTEMPTS.labels(reason=_reason)
for _answer in SendOutcome:
    BROADCASTS.labels(outcome=_answer.value)
