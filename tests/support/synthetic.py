"""A synthetic chain of every event the indexer's write path treats apart, decoded without a
node: the workload of the COPY and billing projection tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from keeper.chain.rpc import BlockHeader
from keeper.ingest.events import Decoder

CHAIN = 31337
MANAGER = "0x" + "11" * 20
VAULT = "0x" + "22" * 20


ADDRESSES = {"StreamManager": MANAGER, "EscrowVault": VAULT}


FIRST_BLOCK = 10


def _account(n: int) -> bytes:
    return bytes([0xA0]) + n.to_bytes(19, "big")


def usage_words(
    sid: int, seq: int, endpoint: int, units: int, charged: int, fee: int, balance: int, price: int
) -> tuple[int, int, int]:
    """UsageRecorded's three packed words."""
    return (
        sid | seq << 64 | endpoint << 96 | units << 128,
        charged | fee << 96,
        balance | price << 96,
    )


def busy_chain(decoder: Decoder, rng: random.Random) -> Chain:
    """Every kind of event the write path treats apart: streams (opened on own prices and price
    lists, settled many times, topped up, priced at once and with notice, usage, closing,
    closed), endpoints, fees, claims, the vault and escrows, and raw events."""
    c = Chain(decoder)
    payer, fee_to = _account(1), _account(2)
    payees = [_account(10 + i) for i in range(4)]
    streams = list(range(1, 41))
    balance = {}
    c.next_tx()
    c.emit_raw("StreamManager", "RoleGranted", [b"\x01" * 32, bytes(12) + payer, bytes(12) + payer])
    c.emit("StreamManager", "FeeUpdated", 250)
    c.emit("StreamManager", "FeeRecipientUpdated", fee_to)
    c.emit("StreamManager", "NoticePeriodSet", 600)
    c.emit("StreamManager", "EndpointAdded", payees[0], 1, b"api/v1".ljust(32, b"\0"), 7)
    c.emit("StreamManager", "EndpointAdded", payees[0], 2, b"\xff".ljust(32, b"\0"), 9)
    for sid in streams:
        c.next_tx()
        balance[sid] = rng.choice([10**9, 2**96 - 1])
        c.emit(
            "StreamManager",
            "StreamOpened",
            sid,
            payer,
            payees[sid % 4],
            1_000,
            balance[sid],
            sid % 5 == 0,
        )
    c.next_block()
    credited = {p: 0 for p in payees}
    for round_ in range(12):
        c.next_block()
        c.next_tx()
        fees = 0
        for sid in streams:
            paid = rng.randrange(1, 10**6)
            fee = paid * 250 // 10_000
            balance[sid] -= paid
            fees += fee
            credited[payees[sid % 4]] += paid - fee
            c.emit("StreamManager", "StreamSettled", sid, paid, fee, balance[sid])
        c.emit("StreamManager", "FeesCredited", fee_to, fees)
        now = c.header().timestamp
        if round_ == 3:
            c.next_tx()
            for sid in streams[:10]:
                c.emit("StreamManager", "UsagePriceSet", sid, 3, now)
            c.emit("StreamManager", "EndpointPriceSet", payees[0], 1, 5, now + 600)
        if round_ in (4, 6, 10):
            # Decreases with notice: the one of round 4 is replaced before its time by round
            # 6's, which comes into force before round 10's replaces it.
            c.next_tx()
            for sid in streams[:4]:
                notice = 600 if round_ == 10 else 30
                c.emit("StreamManager", "UsagePriceSet", sid, round_, now + notice)
            c.emit("StreamManager", "EndpointPriceSet", payees[0], 2, round_, now + notice)
        if round_ in (5, 9):
            c.next_tx()
            for sid in streams[:10]:
                seq = 1 if round_ == 5 else 2
                charged = 15
                fee = 0
                balance[sid] -= charged
                credited[payees[sid % 4]] += charged - fee
                words = usage_words(sid, seq, sid % 3, 5, charged, fee, balance[sid], 3)
                c.emit("StreamManager", "UsageRecorded", *words)
        if round_ == 7:
            c.next_tx()
            c.emit("StreamManager", "StreamToppedUp", 7, 500, balance[7] + 500)
            balance[7] += 500
            c.emit("StreamManager", "StreamRateUpdated", 8, 2_000)
            c.emit("StreamManager", "StreamClosed", 9, balance[9])
            c.emit("StreamManager", "SettleSkipped", 9, 1)
            c.emit("StreamManager", "StreamCloseRequested", 11, now + 600)
            c.emit("StreamManager", "StreamCloseRequested", 12, now + 6)
            claimant = payees[1]
            c.emit("StreamManager", "Claimed", claimant, credited[claimant] // 2)
    c.next_block()
    c.next_tx()
    c.emit("EscrowVault", "Deposited", payer, 10**9, 10**9)
    for eid in range(1, 4):
        c.emit(
            "EscrowVault", "EscrowCreated", eid, payer, payees[0], 1_000, 2**40, 10**9 - eid * 1_000
        )
    c.emit("EscrowVault", "EscrowReleased", 1, payees[0], 1_000, 1_000)
    c.emit("EscrowVault", "EscrowRefunded", 2, payer, 1_000, 10**9 - 2_000)
    c.emit("EscrowVault", "RefundSkipped", 3, 2)
    c.emit_raw("EscrowVault", "Paused", [], bytes(12) + payer)
    return c


class Chain:
    """Synthetic JSON-RPC logs of the keeper's contracts, in block and log order."""

    def __init__(self, decoder: Decoder) -> None:
        self.specs = {(s.contract, s.name): s for s in decoder.typed.values()}
        self.raw = {name: topic0 for topic0, (_, name) in decoder.raw.items()}
        self.logs: list[dict[str, Any]] = []
        self.block = FIRST_BLOCK
        self.log_index = 0
        self.tx = 0

    def next_block(self) -> None:
        self.block += 1
        self.log_index = 0

    def next_tx(self) -> None:
        self.tx += 1

    def _log(self, address: str, topics: list[str], data: str) -> dict[str, Any]:
        log = {
            "address": address,
            "topics": topics,
            "data": data,
            "blockNumber": hex(self.block),
            "blockHash": "0x" + self.block.to_bytes(32, "big").hex(),
            "blockTimestamp": hex(1_700_000_000 + 12 * self.block),
            "transactionHash": "0x" + self.tx.to_bytes(32, "big").hex(),
            "transactionIndex": "0x0",
            "logIndex": hex(self.log_index),
            "removed": False,
        }
        self.log_index += 1
        self.logs.append(log)
        return log

    def emit(self, contract: str, name: str, *args: Any) -> dict[str, Any]:
        """Append one typed event with arguments `args` (ABI order)."""
        spec = self.specs[(contract, name)]
        topics = [spec.topic0]
        data = "0x"
        for value, abi_type, indexed in zip(args, spec.types, spec.indexed, strict=True):
            if indexed:
                topics.append("0x" + _word(value, abi_type))
            else:
                data += _word(value, abi_type)
        return self._log(ADDRESSES[contract], topics, data)

    def emit_raw(
        self, contract: str, name: str, topics: Sequence[bytes], data: bytes = b""
    ) -> dict[str, Any]:
        """Append one event the keeper keeps raw (roles, pause)."""
        all_topics = [self.raw[name], *("0x" + t.hex() for t in topics)]
        return self._log(ADDRESSES[contract], all_topics, "0x" + data.hex())

    def header(self) -> BlockHeader:
        """A header for the current block (the cursor moves to it)."""
        return BlockHeader(
            self.block,
            "0x" + self.block.to_bytes(32, "big").hex(),
            "0x" + (self.block - 1).to_bytes(32, "big").hex(),
            1_700_000_000 + 12 * self.block,
        )


def _word(value: Any, abi_type: str) -> str:
    if abi_type == "address":
        assert isinstance(value, bytes) and len(value) == 20
        return "00" * 12 + value.hex()
    if abi_type == "bytes32":
        assert isinstance(value, bytes) and len(value) == 32
        return value.hex()
    return f"{value:064x}"
