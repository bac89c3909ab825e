"""Batch encoding and the bisection of reverting batches (pure logic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from eth_abi.abi import decode, encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.chain.reverts import revert_data, revert_reason
from keeper.kinds import BATCH_KINDS, item_columns, item_of_columns, item_ref, ref_key, usage_fields
from keeper.plan.batches import (
    MAX_REPORT_ENDPOINT,
    MAX_REPORT_SEQ,
    MAX_REPORT_STREAM_ID,
    MAX_REPORT_UNITS,
    Revert,
    batch_size,
    encode_batch,
    encode_uint256_array,
    gas_floor,
    item_key,
    pack_usage,
    split_batch,
    splittable,
    unpack_usage,
)


def test_batches_encode_the_contract_calls() -> None:
    settle = encode_batch("settle", [1, 2])
    assert settle[:4] == keccak(text="settleStreams(uint256[])")[:4]
    assert decode(["uint256[]"], settle[4:]) == ((1, 2),)
    usage = encode_batch("usage", [[5, 10, 1, 0], [6, 20, 3, 2]])
    assert usage[:4] == keccak(text="recordUsage(uint256[])")[:4]
    assert decode(["uint256[]"], usage[4:]) == (
        (5 | 1 << 64 | 0 << 96 | 10 << 128, 6 | 3 << 64 | 2 << 96 | 20 << 128),
    )
    assert item_key("usage", [5, 10, 1, 4]) == "5:1" and item_key("refund", 9) == "9"
    assert splittable("refund") and not splittable("call") and not splittable("purge")


def test_a_usage_item_of_three_has_no_endpoint() -> None:
    """Items planned before endpoints existed: endpoint 0."""
    assert usage_fields([5, 10, 1]) == (5, 10, 1, 0)
    assert encode_batch("usage", [[5, 10, 1]]) == encode_batch("usage", [[5, 10, 1, 0]])
    assert item_key("usage", [5, 10, 1]) == "5:1"


@given(
    items=st.lists(
        st.tuples(
            st.integers(0, MAX_REPORT_STREAM_ID),
            st.integers(0, MAX_REPORT_UNITS),
            st.integers(0, MAX_REPORT_SEQ),
            st.integers(0, MAX_REPORT_ENDPOINT),
        ),
        max_size=20,
    )
)
def test_usage_reports_pack_into_one_word_each_as_the_contract_reads_them(
    items: list[tuple[int, int, int, int]],
) -> None:
    """recordUsage(uint256[]): word = streamId (bits 0..63) | seq (64..95) | endpoint
    (96..127) | units (128..191), decoded with eth_abi as the contract's ABI reads it."""
    data = encode_batch("usage", [list(i) for i in items])
    (words,) = decode(["uint256[]"], data[4:])
    assert len(words) == len(items)
    for word, (stream_id, units, seq, endpoint) in zip(words, items, strict=True):
        assert word < 2**192  # bits 192..255 are never set
        assert word & (2**64 - 1) == stream_id
        assert (word >> 64) & (2**32 - 1) == seq
        assert (word >> 96) & (2**32 - 1) == endpoint
        assert word >> 128 == units
        assert unpack_usage(word) == (stream_id, units, seq, endpoint)
        assert pack_usage(stream_id, units, seq, endpoint) == word


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ([2**64, 1, 1, 0], "stream id"),
        ([1, 2**64, 1, 0], "units"),
        ([1, 1, 2**32, 0], "seq"),
        ([1, 1, 1, 2**32], "endpoint"),
        ([-1, 1, 1, 0], "stream id"),
    ],
)
def test_a_field_too_wide_for_its_bits_is_never_encoded(item: list[int], field: str) -> None:
    """It would name another stream or report: the encoder refuses (the intake rejects such
    rows before they get a sequence number, so a batch never holds one)."""
    with pytest.raises(ValueError, match=f"usage report {field} "):
        encode_batch("usage", [item])


UINT256 = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.one_of(UINT256, st.sampled_from([0, 1, 2**64 - 1, 2**255, 2**256 - 1])), max_size=40
    )
)
def test_the_array_encoder_is_eth_abis_encoding(values: list[int]) -> None:
    """The batch calls' arguments, encoded directly, byte for byte as eth_abi encodes them
    (the empty array and the ends of the range included), for every kind's calldata."""
    assert encode_uint256_array(values) == encode(["uint256[]"], [values])
    assert encode_batch("settle", values) == BATCH_KINDS["settle"].selector + encode(
        ["uint256[]"], [values]
    )
    assert encode_batch("refund", values) == keccak(text="refundExpired(uint256[])")[:4] + encode(
        ["uint256[]"], [values]
    )


def test_the_array_encoder_holds_the_edges() -> None:
    assert (
        encode_uint256_array([])
        == encode(["uint256[]"], [[]])
        == (32).to_bytes(32, "big") + (b"\0" * 32)
    )
    assert encode_uint256_array([0, 2**256 - 1]) == encode(["uint256[]"], [[0, 2**256 - 1]])
    assert encode_batch("usage", []) == keccak(text="recordUsage(uint256[])")[:4] + encode(
        ["uint256[]"], [[]]
    )


@pytest.mark.parametrize("value", [-1, 2**256, 2**300])
def test_a_value_outside_uint256_is_never_encoded(value: int) -> None:
    with pytest.raises(ValueError, match=f"{value} does not fit in a uint256"):
        encode_uint256_array([1, value, 2])
    with pytest.raises(ValueError, match="does not fit in a uint256"):
        encode_batch("settle", [value])


@given(
    stream_id=st.integers(0, 2**80),
    units=st.integers(0, 2**80),
    seq=st.integers(0, 2**40),
    endpoint=st.integers(0, 2**40),
    settle=st.integers(0, 2**300),
)
def test_item_keys_name_the_items_refs(
    stream_id: int, units: int, seq: int, endpoint: int, settle: int
) -> None:
    """item_key is ref_key of item_ref, written out (for usage items of four and of three)."""
    for item in ([stream_id, units, seq, endpoint], [stream_id, units, seq]):
        assert item_key("usage", item) == ref_key(item_ref("usage", item)) == f"{stream_id}:{seq}"
    for kind in ("settle", "refund"):
        assert item_key(kind, settle) == ref_key(item_ref(kind, settle)) == str(settle)


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


@given(
    entity=st.integers(min_value=0, max_value=2**256 - 1),
    units=st.integers(min_value=0, max_value=2**64 - 1),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
    endpoint=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_items_round_trip_through_their_batch_items_columns(
    entity: int, units: int, seq: int, endpoint: int
) -> None:
    for kind in ("settle", "refund"):
        assert item_columns(kind, entity) == (entity, None, None, None)
        assert item_of_columns(kind, item_columns(kind, entity)) == entity
        assert item_ref(kind, entity) == (entity, None)
    report = [entity, units, seq, endpoint]
    assert item_columns("usage", report) == (entity, seq, units, endpoint)
    assert item_of_columns("usage", item_columns("usage", report)) == report
    assert item_ref("usage", report) == (entity, seq)
    assert ref_key(item_ref("usage", report)) == item_key("usage", report) == f"{entity}:{seq}"
    assert ref_key(item_ref("settle", entity)) == item_key("settle", entity) == str(entity)
