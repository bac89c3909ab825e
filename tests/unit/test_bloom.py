"""keeper.chain.bloom and keeper.ingest.logcheck without a node: the bloom's bit layout
against a second computation written from the yellow paper's wording, and the checks on
hand-made answers. (tests/integration/test_log_checks.py holds both against the blooms of two
real node implementations.)"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from keeper.chain.bloom import Bloom, bloom_bits
from keeper.chain.rpc import BlockHeader
from keeper.ingest.logcheck import check_block_logs


def yellow_paper_bloom(items: list[bytes]) -> bytes:
    """M3:2048 as the yellow paper words it: for each of the first three pairs of bytes of
    KEC(x), take its low 11 bits as a bit index into the 2048-bit big-endian sequence."""
    bits = bytearray(256)
    for item in items:
        digest = keccak(item)
        for pair in range(3):
            index = int(digest[2 * pair : 2 * pair + 2].hex(), 16) % 2048
            bits[255 - index // 8] |= 1 << (index % 8)
    return bytes(bits)


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30))
def test_the_bloom_matches_the_yellow_paper(items: list[bytes]) -> None:
    bloom = Bloom()
    for item in items:
        bloom.add(item)
    assert bytes.fromhex(bloom.hex()[2:]) == yellow_paper_bloom(items)
    assert Bloom.from_hex(bloom.hex()) == bloom
    assert all(item in bloom for item in items)


def test_bits_are_in_range_and_a_lone_item_is_not_a_stranger() -> None:
    assert all(0 <= b < 2048 for b in bloom_bits(b"\x11" * 20))
    bloom = Bloom()
    bloom.add(b"\x11" * 20)
    strangers = [hashlib.sha256(bytes([i])).digest()[:20] for i in range(200)]
    # Three bits of 2048 set: a stranger is in it only if its three bits are those three.
    assert sum(s in bloom for s in strangers) == 0


def test_a_bloom_has_256_bytes() -> None:
    with pytest.raises(ValueError, match="256 bytes"):
        Bloom.from_hex("0x" + "00" * 255)


A, B = "0x" + "aa" * 20, "0x" + "bb" * 20
SIG, OTHER_SIG = "0x" + "01" * 32, "0x" + "02" * 32


def log(block: int, block_hash: str, address: str, *topics: str, index: int = 0) -> dict[str, Any]:
    return {
        "address": address,
        "topics": list(topics),
        "data": "0x",
        "blockNumber": hex(block),
        "blockHash": block_hash,
        "transactionHash": "0x" + f"{block:02x}" * 32,
        "logIndex": hex(index),
    }


def header(number: int, logs: list[dict[str, Any]]) -> BlockHeader:
    h = "0x" + f"{number:064x}"
    return BlockHeader(number, h, "0x" + "00" * 32, 0, None, Bloom.from_logs(logs).hex())


def test_the_checks_on_hand_made_answers() -> None:
    h1, h2 = "0x" + f"{1:064x}", "0x" + f"{2:064x}"
    block1 = [log(1, h1, A, SIG), log(1, h1, "0x" + "cc" * 20, OTHER_SIG, index=1)]
    block2 = [log(2, h2, B, OTHER_SIG)]
    headers = [header(1, block1), header(2, block2)]
    watched = [log for log in block1 if log["address"] == A]
    assert check_block_logs(headers, watched, [A], [SIG]) == []
    # The logs of A left out of block 1: the bloom holds A and SIG.
    missing = check_block_logs(headers, [], [A], [SIG])
    assert [(p.block, p.reason) for p in missing] == [(1, "missing_logs")]
    # B is in block 2's bloom, but only with another event than the watched one.
    assert check_block_logs(headers, [], [B], [SIG]) == []
    assert [p.block for p in check_block_logs(headers, [], [B], [OTHER_SIG])] == [2]
    # A log the block cannot hold, another block's hash, a block not asked for.
    forged = log(2, h2, A, SIG)
    assert {p.reason for p in check_block_logs(headers, [forged], [A], [SIG])} == {
        "not_in_bloom",
        "missing_logs",  # block 1's logs of A are not in this answer either
    }
    mixed = log(1, h2, A, SIG)
    assert "block_hash" in {p.reason for p in check_block_logs(headers, [mixed], [A], [SIG])}
    outside = log(9, h1, A, SIG)
    assert "outside_range" in {p.reason for p in check_block_logs(headers, [outside], [A], [SIG])}
    # Without a bloom only the hash checks apply.
    bare = [BlockHeader(h.number, h.hash, h.parent_hash, 0) for h in headers]
    assert check_block_logs(bare, [], [A], [SIG]) == []
    assert check_block_logs(bare, [mixed], [A], [SIG])[0].reason == "block_hash"
