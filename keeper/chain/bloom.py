"""Ethereum's 2048-bit logs bloom: what a block header says about the logs of its block.

Each log adds its address and each of its topics. An item sets three bits: the low 11 bits of
the first three 2-byte pairs of its keccak-256 hash; bit i is bit (i % 8) of byte 255 - i // 8
of the 256-byte bloom (big-endian, as in the header's `logsBloom`). A bloom never misses an item
that was added; it may hold one that was not (a false positive).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from eth_utils import keccak

BLOOM_BYTES = 256


@lru_cache(maxsize=4096)
def bloom_bits(item: bytes) -> tuple[int, int, int]:
    """The three bit indices (0..2047) that `item` sets."""
    d = keccak(item)
    return ((d[0] << 8 | d[1]) & 0x7FF, (d[2] << 8 | d[3]) & 0x7FF, (d[4] << 8 | d[5]) & 0x7FF)


def _hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text[2:] if text[:2] in ("0x", "0X") else text)


class Bloom:
    """A logs bloom, as an integer whose bit i is the bloom's bit i."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    @classmethod
    def from_hex(cls, text: str) -> Bloom:
        """The header's `logsBloom` (0x + 512 hex digits)."""
        raw = _hex_bytes(text)
        if len(raw) != BLOOM_BYTES:
            raise ValueError(f"a logs bloom has {BLOOM_BYTES} bytes, not {len(raw)}")
        return cls(int.from_bytes(raw, "big"))

    @classmethod
    def from_logs(cls, logs: Iterable[dict[str, Any]]) -> Bloom:
        """The bloom of raw JSON-RPC logs (their addresses and topics)."""
        bloom = cls()
        for log in logs:
            bloom.add(_hex_bytes(log["address"]))
            for topic in log.get("topics") or ():
                bloom.add(_hex_bytes(topic))
        return bloom

    def add(self, item: bytes) -> None:
        """Add an address or a topic."""
        for bit in bloom_bits(item):
            self.value |= 1 << bit

    def __contains__(self, item: bytes) -> bool:
        return all(self.value >> bit & 1 for bit in bloom_bits(item))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bloom) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    @property
    def empty(self) -> bool:
        """Whether no bit is set (the block has no logs)."""
        return self.value == 0

    def hex(self) -> str:
        """As a header carries it."""
        return "0x" + self.value.to_bytes(BLOOM_BYTES, "big").hex()
