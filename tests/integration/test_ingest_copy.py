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
from keeper.chain.rpc import BlockHeader
from keeper.ingest.events import RAW_TABLE, DecodedBatch, Decoder, EventSpec, MalformedLog
from keeper.ingest.store import Store
from tests.support.ingest import dump
from tests.support.synthetic import ADDRESSES, CHAIN, FIRST_BLOCK, Chain, busy_chain


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
