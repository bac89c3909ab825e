"""The kinds of work the keeper sends, each stated once.

A batch kind is one permissionless (or oracle) call over many items: the planners cut its batches
by `gas_per_item`, the transaction manager encodes, splits and checks them per item, and the
contract skips an item it cannot apply with a reason code. Every fact about a kind lives in its
record here; the modules that handle batches (`keeper.plan.batches`, the outbox, the transaction
manager, the health port) read them from `BATCH_KINDS` and `INTENT_KINDS`, so adding a kind
touches this file (and the planner that produces it).

The skip codes are the contracts' SKIP_* constants; `keeper.plan.accrual` names the same codes for
the model of StreamManager, and a unit test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from eth_utils import keccak


@dataclass(frozen=True)
class BatchKind:
    """One kind of batch call."""

    name: str
    signature: str  # the function, e.g. settleStreams(uint256[])
    gas_per_item: int  # the worst case per item (see keeper.plan.batches.gas_floor)
    skip_reasons: Mapping[int, str]  # the contract's reason codes for a skipped item
    effects_query: str  # the named query (sql/outbox.sql) that finds each item's effect

    @property
    def selector(self) -> bytes:
        """The function's four-byte selector."""
        return keccak(text=self.signature)[:4]


SETTLE = BatchKind(
    name="settle",
    signature="settleStreams(uint256[])",
    gas_per_item=40_000,
    skip_reasons=MappingProxyType({1: "unknown stream", 2: "stream closed", 3: "nothing due"}),
    effects_query="settle_effects",
)
REFUND = BatchKind(
    name="refund",
    signature="refundExpired(uint256[])",
    gas_per_item=35_000,
    skip_reasons=MappingProxyType({1: "unknown escrow", 2: "escrow not open", 3: "not expired"}),
    effects_query="refund_effects",
)
USAGE = BatchKind(
    name="usage",
    signature="recordUsage(uint256[])",
    gas_per_item=40_000,
    skip_reasons=MappingProxyType(
        {
            1: "unknown stream",
            2: "stream closed",
            4: "replay",
            5: "sequence gap",
            6: "bad units",
            7: "unknown endpoint",
        }
    ),
    effects_query="usage_effects",
)

BATCH_KINDS: Mapping[str, BatchKind] = MappingProxyType(
    {kind.name: kind for kind in (SETTLE, REFUND, USAGE)}
)
# Every intents.kind (the CHECK list of the intents table): the batch kinds, then the single
# calls the manager sends itself (a purge of a stuck nonce, a one-off contract call).
SINGLE_CALL_KINDS = ("purge", "call")
INTENT_KINDS = (*BATCH_KINDS, *SINGLE_CALL_KINDS)
