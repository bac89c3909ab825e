"""Batch encoding and the bisection of reverting batches (pure logic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from eth_abi.abi import decode, encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.batches import (
    Revert,
    batch_size,
    encode_batch,
    gas_floor,
    item_key,
    split_batch,
    splittable,
)
from keeper.reverts import revert_data, revert_reason


def test_batches_encode_the_contract_calls() -> None:
    settle = encode_batch("settle", [1, 2])
    assert settle[:4] == keccak(text="settleStreams(uint256[])")[:4]
    assert decode(["uint256[]"], settle[4:]) == ((1, 2),)
    usage = encode_batch("usage", [[5, 10, 1], [6, 20, 3]])
    assert usage[:4] == keccak(text="recordUsageBatch(uint256[],uint256[],uint256[])")[:4]
    assert decode(["uint256[]", "uint256[]", "uint256[]"], usage[4:]) == ((5, 6), (10, 20), (1, 3))
    assert item_key("usage", [5, 10, 1]) == "5:1" and item_key("refund", 9) == "9"
    assert splittable("refund") and not splittable("call") and not splittable("purge")


def _error(item: int) -> Revert:
    data = keccak(text="UnknownStream(uint256)")[:4] + encode(["uint256"], [item])
    return Revert(revert_reason(data), data)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=64),
    bad=st.sets(st.integers(min_value=0, max_value=63), max_size=6),
)
def test_bisection_finds_exactly_the_bad_items_in_few_simulations(n: int, bad: set[int]) -> None:
    items = list(range(n))
    bad = {b for b in bad if b < n}
    calls = 0

    async def simulate(subset: Sequence[Any]) -> Revert | None:
        nonlocal calls
        calls += 1
        culprits = [i for i in subset if i in bad]
        return _error(culprits[0]) if culprits else None

    async def run() -> None:
        first = _error(min(bad)) if bad else None
        if first is None:
            return
        split = await split_batch(items, first, simulate)
        assert split.whole is None
        assert split.good == [i for i in items if i not in bad]
        assert {i: r.reason for i, r in split.bad} == {b: f"UnknownStream({b})" for b in bad}
        # k bad items among n: about 2 k log2 n simulations at most.
        assert calls <= 2 * len(bad) * max(1, n.bit_length()) + 2

    anyio.run(run)


def test_a_revert_that_does_not_depend_on_the_items_is_the_whole_batchs() -> None:
    paused = Revert("EnforcedPause()", keccak(text="EnforcedPause()")[:4])

    async def simulate(subset: Sequence[Any]) -> Revert | None:
        return paused

    split = anyio.run(split_batch, list(range(10)), paused, simulate)
    assert split.whole == paused and split.good == [] and split.bad == []


def test_revert_reasons_are_decoded() -> None:
    assert revert_reason(bytes.fromhex("08c379a0") + encode(["string"], ["too late"])) == (
        "too late"
    )
    assert revert_reason(bytes.fromhex("4e487b71") + encode(["uint256"], [0x12])) == (
        "Panic(0x12: division or modulo by zero)"
    )
    selector = keccak(text="NotExpired(uint256,uint256)")[:4]
    assert revert_reason(selector + encode(["uint256", "uint256"], [3, 99])) == "NotExpired(3, 99)"
    assert revert_reason(b"") == "reverted without a reason"
    assert revert_reason(b"\xde\xad\xbe\xef") == "unknown revert data 0xdeadbeef"
    # A known selector with a truncated body is shown raw, never raised.
    assert (
        revert_reason(selector + b"\x00") == "unknown revert data 0x" + (selector + b"\x00").hex()
    )


def test_revert_data_is_found_however_the_node_nests_it() -> None:
    assert revert_data({"code": 3, "message": "execution reverted", "data": "0x1234"}) == (
        b"\x12\x34"
    )
    assert revert_data({"code": -32000, "data": {"data": "0xabcd"}}) == b"\xab\xcd"
    assert revert_data({"code": -32000, "message": "execution reverted"}) is None
    assert revert_data({"data": "not hex"}) is None


@given(
    kind=st.sampled_from(["settle", "refund", "usage"]),
    max_batch_gas=st.integers(100_000, 2**24),
)
def test_a_planned_batch_fits_max_batch_gas_at_its_floor(kind: str, max_batch_gas: int) -> None:
    """The planner's batch size and the manager's gas floor use one number per kind: the
    floor of a full batch never passes `max_batch_gas` (it was 2 to 2.7 times over)."""
    size = batch_size(kind, max_batch_gas)
    assert size >= 1
    assert gas_floor(kind, size) <= max_batch_gas
    # ...and the batch is as large as that allows.
    assert gas_floor(kind, size + 1) > max_batch_gas
