"""The backfill's write path: COPY text made by the decoder, ranges written in decoded parts.

The decoder reads events whose arguments are all integers as one number and writes each row's
COPY text as it decodes; `Store.write_range` copies a range part by part while the next part is
decoded. These tests hold both to the plain paths: the word-by-word decoding, and the whole
range written as one batch (same rows, same projections), and check that a failure in any part
leaves nothing behind and surfaces as itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.events import RAW_TABLE, DecodedBatch, Decoder, EventSpec, MalformedLog
from keeper.rpc import BlockHeader
from keeper.store import Store
from tests.support.ingest import dump

CHAIN = 31337
MANAGER = "0x" + "11" * 20
VAULT = "0x" + "22" * 20
ADDRESSES = {"StreamManager": MANAGER, "EscrowVault": VAULT}
FIRST_BLOCK = 10


def _account(n: int) -> bytes:
    return bytes([0xA0]) + n.to_bytes(19, "big")


def _word(value: Any, abi_type: str) -> str:
    if abi_type == "address":
        assert isinstance(value, bytes) and len(value) == 20
        return "00" * 12 + value.hex()
    if abi_type == "bytes32":
        assert isinstance(value, bytes) and len(value) == 32
        return value.hex()
    return f"{value:064x}"


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


def parts(decoder: Decoder, logs: Sequence[dict[str, Any]], size: int) -> Iterator[DecodedBatch]:
    """`logs` decoded `size` at a time, each when asked for (as the backfill hands them over)."""
    for i in range(0, len(logs), size):
        yield decoder.decode(logs[i : i + size], {})


def word_by_word(decoder: Decoder) -> Decoder:
    """The same decoder without the all-integers reading: every word parsed on its own."""
    plain = Decoder(decoder.chain_id, ADDRESSES)
    plain._plans = {
        t: (spec, plan, None, size) for t, (spec, plan, _, size) in plain._plans.items()
    }
    return plain


def copy_text(row: Sequence[Any]) -> str:
    """The COPY text of one row, value by value."""
    return "\t".join(str(v) if isinstance(v, int) else "\\\\x" + v.hex() for v in row)


def test_all_integer_events_decode_as_word_by_word() -> None:
    """Every all-integer event, with values from 0 to 2**256 - 1, gives the same rows read as
    one number as read word by word, and its COPY text is its row's."""
    decoder = Decoder(CHAIN, ADDRESSES)
    rng = random.Random(7)
    c = Chain(decoder)
    integer_specs: list[EventSpec] = [
        spec for spec, _, integers, _ in decoder._plans.values() if integers is not None
    ]
    assert {s.name for s in integer_specs} >= {"StreamSettled", "UsageRecorded", "StreamClosed"}
    for spec in integer_specs:
        for _ in range(30):
            c.next_tx()
            args = [
                rng.choice([0, 1, 2**255, 2**256 - 1, rng.randrange(2**64)])
                if t == "uint256"
                else rng.randrange(2 ** int(t[4:] or 256))
                for t in spec.types
            ]
            c.emit(spec.contract, spec.name, *args)
        c.next_block()
    fast = decoder.decode(c.logs, {})
    plain = word_by_word(decoder).decode(c.logs, {})
    assert fast.count == plain.count == len(c.logs)
    assert fast.rows == plain.rows
    assert fast.text == plain.text
    for table, rows in fast.rows.items():
        assert fast.text[table] == [copy_text(r) for r in rows]


def test_every_event_text_is_its_row() -> None:
    """The COPY text of every typed table is its rows' text (addresses and hashes as bytea)."""
    decoder = Decoder(CHAIN, ADDRESSES)
    batch = decoder.decode(busy_chain(decoder, random.Random(1)).logs, {})
    assert RAW_TABLE in batch.rows and RAW_TABLE not in batch.text
    assert set(batch.text) == set(batch.rows) - {RAW_TABLE}
    for table, lines in batch.text.items():
        assert lines == [copy_text(r) for r in batch.rows[table]]


def test_wrong_data_length_is_malformed() -> None:
    """An all-integer event whose data is a word short (or long) is refused, not misread."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = Chain(decoder)
    log = c.emit("StreamManager", "StreamSettled", 1, 2, 3, 4)
    for data in (log["data"][:-64], log["data"] + "00" * 32, log["data"][:-1] + "g"):
        with pytest.raises(MalformedLog):
            decoder.decode([{**log, "data": data}], {})


async def _write(url: str, batch: DecodedBatch | Iterator[DecodedBatch], end: BlockHeader) -> int:
    store = Store(CHAIN, Decoder(CHAIN, ADDRESSES))
    conn = await keeper_db.connect(url)
    try:
        await store.cursor(conn, FIRST_BLOCK)
        return await store.write_range(conn, batch, FIRST_BLOCK, end, backfill_done=True)
    finally:
        await conn.close()


async def _dump(url: str) -> Any:
    """What the database holds of the chain (the cursor created first, as a write does)."""
    conn = await keeper_db.connect(url)
    try:
        await Store(CHAIN, Decoder(CHAIN, ADDRESSES)).cursor(conn, FIRST_BLOCK)
        return await dump(conn, CHAIN, blocks=True)
    finally:
        await conn.close()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
async def test_parts_write_what_one_batch_writes(
    database_factory: Callable[..., str], template_database: str, size: int
) -> None:
    """A range written in decoded parts of any size stores exactly what the whole range
    written as one batch stores: events, projections, ledger, blocks and cursor."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(3))
    whole_url, parts_url = database_factory(template_database), database_factory(template_database)
    n = await _write(whole_url, decoder.decode(c.logs, {}), c.header())
    assert n == len(c.logs)
    assert await _write(parts_url, parts(decoder, c.logs, size), c.header()) == n
    whole, in_parts = await _dump(whole_url), await _dump(parts_url)
    assert sum(len(whole[t]) for t in decoder.tables) == len(c.logs)
    assert in_parts == whole


@pytest.mark.anyio
async def test_a_bad_part_writes_nothing(database_url: str) -> None:
    """A log that cannot be decoded in a later part (after earlier parts were copied) aborts
    the range: the decoding error surfaces as itself and nothing of the range is stored."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(4))
    logs = list(c.logs)
    logs[-20] = {**logs[-20], "data": "0x1234"}
    before = await _dump(database_url)
    with pytest.raises(MalformedLog):
        await _write(database_url, parts(decoder, logs, 50), c.header())
    after = await _dump(database_url)
    assert after == before


@pytest.mark.anyio
async def test_a_failed_copy_writes_nothing(database_url: str) -> None:
    """A COPY the server refuses (here: a log stored twice, in two parts) aborts the range
    with the server's error as itself, and nothing of the range is stored."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(5))
    logs = [*c.logs, c.logs[100]]
    before = await _dump(database_url)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _write(database_url, parts(decoder, logs, 64), c.header())
    assert await _dump(database_url) == before
