"""The batch calls the keeper sends, as data: an intent's `items` and its calldata.

A batch intent carries its items (JSON) next to its calldata, so the transaction manager can
re-encode any subset of them: that is how a batch whose simulation reverts is split and sent
without its bad items. Item shapes per kind:

- `settle`: stream ids -> `StreamManager.settleStreams(uint256[] ids)`
- `refund`: escrow ids -> `EscrowVault.refundExpired(uint256[] ids)`
- `usage`: `[stream id, units, seq]` triples -> `StreamManager.recordUsageBatch(ids, units, seqs)`

Other kinds (`call`, `purge`) are single calls and cannot be split.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import encode
from eth_utils import keccak

SIGNATURES = {
    "settle": "settleStreams(uint256[])",
    "refund": "refundExpired(uint256[])",
    "usage": "recordUsageBatch(uint256[],uint256[],uint256[])",
}
SELECTORS = {kind: keccak(text=sig)[:4] for kind, sig in SIGNATURES.items()}


# The gas of a batch, one number per kind for both sides: the planners cut batches so that
# BATCH_BASE_GAS + GAS_PER_ITEM[kind] x items stays under `max_batch_gas`, and the transaction
# manager never sends a batch with less (`gas_floor`) nor more (`max_batch_gas`). Per item, the
# worst case: eth_estimateGas runs on the latest block's state, where an item may take a cheaper
# path (a stream settled in that very block has nothing due) than in the block that includes it.
BATCH_BASE_GAS = 60_000
GAS_PER_ITEM = {"settle": 40_000, "refund": 35_000, "usage": 40_000}


def gas_floor(kind: str, items: int) -> int:
    """The least gas limit a batch of `items` of `kind` is sent with (0 for other calls)."""
    per_item = GAS_PER_ITEM.get(kind)
    return BATCH_BASE_GAS + per_item * items if per_item and items else 0


def batch_size(kind: str, max_batch_gas: int) -> int:
    """Items of `kind` per batch so that its gas floor stays within `max_batch_gas` (at least
    one)."""
    return max(1, (max_batch_gas - BATCH_BASE_GAS) // GAS_PER_ITEM[kind])


def splittable(kind: str) -> bool:
    """True for the batch kinds whose items can be re-encoded in any subset."""
    return kind in SIGNATURES


def encode_batch(kind: str, items: Sequence[Any]) -> bytes:
    """The calldata of a `kind` batch over `items`."""
    if kind == "usage":
        triples = [(int(i), int(u), int(s)) for i, u, s in items]
        columns = [[t[k] for t in triples] for k in range(3)]
        args = encode(["uint256[]", "uint256[]", "uint256[]"], columns)
    elif kind in SIGNATURES:
        args = encode(["uint256[]"], [[int(i) for i in items]])
    else:
        raise ValueError(f"intents of kind {kind!r} are not batches")
    return SELECTORS[kind] + args


def item_key(kind: str, item: Any) -> str:
    """How an item is named in `intent_items` and in logs: the id, or `id:seq` for usage."""
    if kind == "usage":
        stream_id, _units, seq = item
        return f"{int(stream_id)}:{int(seq)}"
    return str(int(item))


@dataclass(frozen=True)
class Revert:
    """A reverted simulation: the decoded reason and the raw revert data (when the node gave
    any)."""

    reason: str
    data: bytes | None = None

    def same_as(self, other: Revert) -> bool:
        """The same revert (same data; same message when neither has data)."""
        if self.data is not None or other.data is not None:
            return self.data == other.data
        return self.reason == other.reason


@dataclass
class Split:
    """What bisecting a reverting batch found."""

    good: list[Any] = field(default_factory=list)
    bad: list[tuple[Any, Revert]] = field(default_factory=list)
    # Set when the call reverts whatever its items (paused contract, missing role, ...): both
    # halves revert exactly as the whole did, so no item is to blame.
    whole: Revert | None = None


Simulate = Callable[[Sequence[Any]], Awaitable[Revert | None]]


async def split_batch(items: Sequence[Any], first: Revert, simulate: Simulate) -> Split:
    """Bisect `items`, whose batch reverted with `first`, into the items that go through and
    the ones that revert on their own (each with its reason). `simulate(subset)` returns None
    when the subset's batch would succeed. k bad items among n cost O(k log n) simulations."""
    split = Split()
    if len(items) == 1:
        split.bad.append((items[0], first))
        return split
    mid = len(items) // 2
    left, right = list(items[:mid]), list(items[mid:])
    r_left, r_right = await simulate(left), await simulate(right)
    if (
        r_left is not None
        and r_right is not None
        and first.same_as(r_left)
        and first.same_as(r_right)
    ):
        split.whole = first
        return split
    for part, result in ((left, r_left), (right, r_right)):
        await _bisect(part, result, simulate, split)
    return split


async def _bisect(items: list[Any], result: Revert | None, simulate: Simulate, out: Split) -> None:
    if result is None:
        out.good.extend(items)
        return
    if len(items) == 1:
        out.bad.append((items[0], result))
        return
    mid = len(items) // 2
    left, right = items[:mid], items[mid:]
    await _bisect(left, await simulate(left), simulate, out)
    await _bisect(right, await simulate(right), simulate, out)
