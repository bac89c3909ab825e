"""The batch calls the keeper sends, as data: an intent's `items` and its calldata.

A batch intent carries its items (a typed `batch_items` row each: `keeper.kinds.item_columns`)
next to its calldata, so the transaction manager can re-encode any subset of them: that is how
a batch whose simulation reverts is split and sent without its bad items. Item shapes per kind:

- `settle`: stream ids -> `StreamManager.settleStreams(uint256[] ids)`
- `refund`: escrow ids -> `EscrowVault.refundExpired(uint256[] ids)`
- `usage`: `[stream id, units, seq, endpoint]` -> `StreamManager.recordUsage(uint256[] reports)`,
  each report one word: `stream id | seq << 64 | endpoint << 96 | units << 128` (`pack_usage`)

Other kinds (`call`, `purge`) are single calls and cannot be split.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keeper.kinds import BATCH_KINDS, usage_fields

# The gas of a batch, one number per kind for both sides: the planners cut batches so that
# BATCH_BASE_GAS + the kind's gas_per_item (keeper.kinds) x items stays under `max_batch_gas`,
# and the transaction manager never sends a batch with less (`gas_floor`) nor more
# (`max_batch_gas`). Per item, the worst case: eth_estimateGas runs on the latest block's state,
# where an item may take a cheaper path (a stream settled in that very block has nothing due)
# than in the block that includes it.
BATCH_BASE_GAS = 60_000


# The widths of a usage report's fields in its word (StreamManager.recordUsage): what does not
# fit cannot be reported (the intake rejects such rows before they get a sequence number).
MAX_REPORT_STREAM_ID = 2**64 - 1
MAX_REPORT_SEQ = 2**32 - 1
MAX_REPORT_ENDPOINT = 2**32 - 1
MAX_REPORT_UNITS = 2**64 - 1


def pack_usage(stream_id: int, units: int, seq: int, endpoint: int) -> int:
    """One usage report as the word `recordUsage` reads. Raises ValueError for a field that
    does not fit its bits (the contract would read a different report)."""
    for name, value, top in (
        ("stream id", stream_id, MAX_REPORT_STREAM_ID),
        ("units", units, MAX_REPORT_UNITS),
        ("seq", seq, MAX_REPORT_SEQ),
        ("endpoint", endpoint, MAX_REPORT_ENDPOINT),
    ):
        if not 0 <= value <= top:
            raise ValueError(f"usage report {name} {value} does not fit in a report (0 to {top})")
    return stream_id | seq << 64 | endpoint << 96 | units << 128


def unpack_usage(word: int) -> tuple[int, int, int, int]:
    """`(stream id, units, seq, endpoint)` of a report word (bits 192 and up are ignored)."""
    return (
        word & (2**64 - 1),
        (word >> 128) & (2**64 - 1),
        (word >> 64) & (2**32 - 1),
        (word >> 96) & (2**32 - 1),
    )


def gas_floor(kind: str, items: int) -> int:
    """The least gas limit a batch of `items` of `kind` is sent with (0 for other calls)."""
    batch = BATCH_KINDS.get(kind)
    return BATCH_BASE_GAS + batch.gas_per_item * items if batch and items else 0


def batch_size(kind: str, max_batch_gas: int) -> int:
    """Items of `kind` per batch so that its gas floor stays within `max_batch_gas` (at least
    one)."""
    return max(1, (max_batch_gas - BATCH_BASE_GAS) // BATCH_KINDS[kind].gas_per_item)


def splittable(kind: str) -> bool:
    """True for the batch kinds whose items can be re-encoded in any subset."""
    return kind in BATCH_KINDS


# The head of a call whose only argument is a dynamic array: the offset of its data (one word).
_ARRAY_HEAD = (32).to_bytes(32, "big")


def encode_uint256_array(values: Sequence[int]) -> bytes:
    """The ABI encoding of a call's arguments when its only argument is `uint256[] values`: the
    data's offset, the length, then one big-endian word per value (what eth_abi's
    `encode(["uint256[]"], [values])` gives, a unit test holds them equal, at a fraction of its
    cost: a planning pass encodes hundreds of batches). Raises ValueError for a value outside
    0..2^256-1."""
    try:
        words = b"".join([v.to_bytes(32, "big") for v in values])
    except OverflowError:
        bad = next(v for v in values if not 0 <= v < 2**256)
        raise ValueError(f"{bad} does not fit in a uint256 (0 to 2^256-1)") from None
    return _ARRAY_HEAD + len(values).to_bytes(32, "big") + words


def encode_batch(kind: str, items: Sequence[Any]) -> bytes:
    """The calldata of a `kind` batch over `items`."""
    if kind == "usage":
        args = encode_uint256_array([pack_usage(*usage_fields(i)) for i in items])
    elif kind in BATCH_KINDS:
        args = encode_uint256_array([int(i) for i in items])
    else:
        raise ValueError(f"intents of kind {kind!r} are not batches")
    return BATCH_KINDS[kind].selector + args


def item_key(kind: str, item: Any) -> str:
    """How an item is named in logs and batch keys: the id, or `id:seq` for usage
    (`keeper.kinds.ref_key` of its `item_ref`, without building the ref: a pass names tens of
    thousands of items)."""
    if kind == "usage":
        return usage_key(int(item[0]), int(item[2]))
    return str(int(item))


def usage_key(stream_id: int, seq: int) -> str:
    """A usage report's `item_key`, from its stream id and sequence number."""
    return f"{stream_id}:{seq}"


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
