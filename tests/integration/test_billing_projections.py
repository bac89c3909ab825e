"""StreamManager v2's events in the index: the packed UsageRecorded unpacked into its columns,
the stream and endpoint projections of prices announced with notice (in force, replaced before
their time, pending), closing streams and the notice period, written by the fast path and
recomputed from the events, and rewound exactly by a reorg at every block of the history.

The logs are synthetic (tests/integration/test_ingest_copy.py's `busy_chain`), so each price
change's fate is known: streams 1-4 are priced 3 at once, then 4 (replaced before its time by
6), 6 (in force before 10 replaces it) and 10 (pending at the end); endpoint 2 of the first
payee likewise (added at 9); endpoint 1 is added at 7 and waits for 5. Streams 11 and 12 are
closing, stream 9 closed, streams 5, 10, ... on the price list.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from keeper import db as keeper_db
from keeper.chain.rpc import BlockHeader
from keeper.db.queries import load_queries
from keeper.ingest import events
from keeper.ingest.events import Decoder, UnknownEventShape, unpack_usage_recorded
from keeper.ingest.store import Store
from keeper.resources import Artifact, load_artifact
from tests.support.ingest import dump
from tests.support.synthetic import (
    ADDRESSES,
    CHAIN,
    FIRST_BLOCK,
    _account,
    busy_chain,
    usage_words,
)

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000


def block_time(block: int) -> int:
    return T0 + 12 * block


def header(block: int) -> BlockHeader:
    return BlockHeader(
        block,
        "0x" + block.to_bytes(32, "big").hex(),
        "0x" + (block - 1).to_bytes(32, "big").hex(),
        block_time(block),
    )


def test_usage_recorded_unpacks_its_three_words() -> None:
    words = usage_words(7, 2**32 - 1, 3, 2**64 - 1, 10**20, 123, 2**96 - 1, 5)
    # Bits from 192 of the report are not part of it.
    report = words[0] | (2**64 - 1) << 192
    assert unpack_usage_recorded([report, words[1], words[2]]) == [
        7,
        2**32 - 1,
        3,
        2**64 - 1,
        10**20,
        123,
        (2**64 - 1) * 5 - 10**20,
        2**96 - 1,
        5,
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda i: {**i, "name": "packed"},  # a renamed word may pack otherwise
        lambda i: {**i, "type": "uint128"},
    ],
)
def test_a_changed_packed_event_is_refused_at_import(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    def artifact(name: str) -> Artifact:
        loaded = load_artifact(name)
        if name != "StreamManager":
            return loaded
        abi = [
            {**item, "inputs": [change(item["inputs"][0]), *item["inputs"][1:]]}
            if item.get("name") == "UsageRecorded"
            else item
            for item in loaded.abi
        ]
        return dataclasses.replace(loaded, abi=abi)

    monkeypatch.setattr(events, "load_artifact", artifact)
    with pytest.raises(UnknownEventShape, match="UsageRecorded"):
        events.build_catalog()


async def _write(url: str, logs: list[dict[str, Any]], first: int, end: int) -> None:
    decoder = Decoder(CHAIN, ADDRESSES)
    store = Store(CHAIN, decoder)
    conn = await keeper_db.connect(url)
    try:
        await store.cursor(conn, FIRST_BLOCK)
        batch = decoder.decode(
            [lg for lg in logs if first <= int(lg["blockNumber"], 16) <= end], {}
        )
        await store.write_range(conn, batch, first, header(end), backfill_done=True)
    finally:
        await conn.close()


async def _dump(url: str) -> Any:
    conn = await keeper_db.connect(url)
    try:
        return await dump(conn, CHAIN, observed=False)
    finally:
        await conn.close()


async def test_projections_of_prices_closes_and_endpoints(
    database_factory: Callable[..., str], template_database: str
) -> None:
    """The fast path's projections are the recomputed ones, and they say what the events
    mean; the views read them at the indexed head."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(3))
    end = c.block
    url = database_factory(template_database)
    await _write(url, c.logs, FIRST_BLOCK, end)
    written = await _dump(url)

    q = load_queries("ingest.sql")
    conn = await keeper_db.connect(url)
    try:
        ids = [int(r["stream_id"]) for r in await conn.fetch("SELECT stream_id FROM streams")]
        keys = await conn.fetch("SELECT payee, endpoint FROM endpoint_added")
        await conn.execute("UPDATE streams SET price = 99, price_list = NOT price_list")
        await conn.execute("DELETE FROM endpoints")
        await conn.execute(q["refresh_streams"], CHAIN, ids)
        await conn.execute(
            q["refresh_endpoints"],
            CHAIN,
            [r["payee"] for r in keys],
            [r["endpoint"] for r in keys],
        )
        await conn.execute(q["refresh_contract_params"], CHAIN)
        assert await _dump(url) == written

        streams = {
            int(r["stream_id"]): r
            for r in await conn.fetch("SELECT * FROM streams WHERE chain_id = $1", CHAIN)
        }
        head = block_time(end)
        for sid in range(1, 5):
            s = streams[sid]
            assert (int(s["price"]), int(s["price_pending"])) == (6, 10)
            assert s["price_effective_at"] == block_time(FIRST_BLOCK + 2 + 10) + 600
            assert s["price_effective_at"] > head
        for sid in range(5, 11):
            if sid == 9:
                continue
            assert (int(streams[sid]["price"]), streams[sid]["price_pending"]) == (3, None)
        assert sorted(sid for sid, s in streams.items() if s["price_list"]) == list(range(5, 41, 5))
        closing_at = block_time(FIRST_BLOCK + 2 + 7)
        assert {
            sid: (s["status"], s["close_at"]) for sid, s in streams.items() if sid in (9, 11, 12)
        } == {
            9: ("closed", None),
            11: ("closing", closing_at + 600),
            12: ("closing", closing_at + 6),
        }
        assert streams[11]["rate"] == 0 and streams[13]["rate"] == 1_000
        endpoints = {
            int(r["endpoint"]): r
            for r in await conn.fetch("SELECT * FROM endpoints WHERE chain_id = $1", CHAIN)
        }
        assert endpoints[1]["name"] == "api/v1"
        assert endpoints[2]["name"] == "0x" + ("ff" + "00" * 31)
        assert (int(endpoints[1]["price"]), int(endpoints[1]["price_pending"])) == (7, 5)
        assert (int(endpoints[2]["price"]), int(endpoints[2]["price_pending"])) == (6, 10)
        assert {bytes(r["payee"]) for r in endpoints.values()} == {_account(10)}
        assert await conn.fetchval("SELECT notice_period FROM contract_params") == 600
        usage = await conn.fetch(
            "SELECT stream_id, seq, endpoint, units, charged, fee, shortfall, price "
            "FROM usage_recorded WHERE stream_id = 4 ORDER BY seq"
        )
        assert [tuple(int(v) for v in r.values()) for r in usage] == [
            (4, 1, 1, 5, 15, 0, 0, 3),
            (4, 2, 1, 5, 15, 0, 0, 3),
        ]

        # The views, at the indexed head.
        listed = await conn.fetch("SELECT * FROM keeper.price_list ORDER BY endpoint")
        assert [
            (r["name"], int(r["price"]), int(r["pending_price"]), r["effective_at"]) for r in listed
        ] == [
            ("api/v1", 7, 5, block_time(FIRST_BLOCK + 2 + 3) + 600),
            ("0x" + "ff" + "00" * 31, 6, 10, block_time(FIRST_BLOCK + 2 + 10) + 600),
        ]
        history = await conn.fetch(
            "SELECT kind, endpoint, stream_id, price, status FROM keeper.price_history "
            "WHERE endpoint = 2 OR stream_id = 1"
        )
        assert [(r["kind"], int(r["price"]), r["status"]) for r in history] == [
            ("endpoint_added", 9, "applied"),
            ("usage_price_set", 3, "applied"),
            ("usage_price_set", 4, "replaced"),
            ("endpoint_price_set", 4, "replaced"),
            ("usage_price_set", 6, "applied"),
            ("endpoint_price_set", 6, "applied"),
            ("usage_price_set", 10, "scheduled"),
            ("endpoint_price_set", 10, "scheduled"),
        ]
        terms = await conn.fetch(
            "SELECT kind, stream_id, endpoint, price, new_price, deadline, seconds_left "
            "FROM keeper.pending_terms ORDER BY kind, stream_id, endpoint"
        )
        got = [
            (
                r["kind"],
                r["stream_id"] and int(r["stream_id"]),
                r["endpoint"] and int(r["endpoint"]),
                r["new_price"] and int(r["new_price"]),
                r["seconds_left"],
            )
            for r in terms
        ]
        assert got == [
            ("close", 11, None, None, closing_at + 600 - head),
            ("close", 12, None, None, 0),
            ("endpoint_price", None, 1, 5, block_time(FIRST_BLOCK + 2 + 3) + 600 - head),
            ("endpoint_price", None, 2, 10, block_time(FIRST_BLOCK + 2 + 10) + 600 - head),
            *[
                ("stream_price", sid, None, 10, block_time(FIRST_BLOCK + 2 + 10) + 600 - head)
                for sid in range(1, 5)
            ],
        ]
        balances = {
            int(r["stream_id"]): r for r in await conn.fetch("SELECT * FROM keeper.stream_balances")
        }
        assert balances[11]["status"] == "closing" and balances[11]["accrued_now"] == 0
        assert (balances[1]["price"], balances[1]["price_pending"]) == (6, 10)
        assert balances[5]["price_list"] and not balances[1]["price_list"]
    finally:
        await conn.close()


@pytest.mark.parametrize("ancestor", [FIRST_BLOCK, 15, 16, 17, 18, 19, 21, 22])
async def test_a_reorg_rewinds_prices_closes_and_endpoints_exactly(
    database_factory: Callable[..., str], template_database: str, ancestor: int
) -> None:
    """Rolled back to `ancestor`, the index is a fresh index of the blocks up to it; the rest
    written again, it is the index of the whole history."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(3))
    end = c.block
    whole, truncated = database_factory(template_database), database_factory(template_database)
    await _write(whole, c.logs, FIRST_BLOCK, end)
    expected_whole = await _dump(whole)
    await _write(truncated, c.logs, FIRST_BLOCK, ancestor)
    expected_truncated = await _dump(truncated)

    conn = await keeper_db.connect(whole)
    try:
        store = Store(CHAIN, decoder)
        removed = await store.rollback_to(conn, header(ancestor), header(end), None)
        assert removed == sum(int(lg["blockNumber"], 16) > ancestor for lg in c.logs)
    finally:
        await conn.close()
    assert await _dump(whole) == expected_truncated

    if ancestor < end:
        await _write(whole, c.logs, ancestor + 1, end)
    assert await _dump(whole) == expected_whole
