"""The event catalog: decoded rows name their columns after it, and the rollback built from it
deletes from each of its tables once."""

from __future__ import annotations

import re

from keeper.ingest.catalog import CATALOG, EVENT_TABLES, RAW_TABLE, ROWS, rollback_query
from keeper.ingest.events import Decoder
from tests.support.synthetic import ADDRESSES, CHAIN, Chain


def test_every_table_has_a_row_class_with_its_copy_columns() -> None:
    decoder = Decoder(CHAIN, ADDRESSES)
    assert sorted(ROWS) == list(EVENT_TABLES) == decoder.tables
    for spec in decoder.typed.values():
        assert ROWS[spec.table]._fields == spec.copy_columns == decoder.columns(spec.table)
    assert len(EVENT_TABLES) == len(CATALOG) + 1


def test_decoded_rows_read_by_column_name() -> None:
    decoder = Decoder(CHAIN, ADDRESSES)
    c = Chain(decoder)
    c.emit("StreamManager", "StreamSettled", 7, 100, 3, 900)
    c.emit_raw("StreamManager", "Paused", [])
    batch = decoder.decode(c.logs, {})
    (settled,) = batch.rows["stream_settled"]
    assert (settled.stream_id, settled.amount, settled.fee, settled.balance_after) == (
        7,
        100,
        3,
        900,
    )
    assert (settled.block_number, settled.log_index) == (c.block, 0)
    assert tuple(settled) == (
        CHAIN,
        c.block,
        0,
        settled.tx_hash,
        settled.block_time,
        7,
        100,
        3,
        900,
    )
    assert "stream_id=7" in repr(settled)
    (paused,) = batch.rows[RAW_TABLE]
    assert (paused.contract, paused.event, paused.log_index) == ("StreamManager", "Paused", 1)


def test_the_rollback_deletes_from_every_event_table_once() -> None:
    deleted = re.findall(
        r"DELETE FROM (\w+) WHERE chain_id = \$1 AND block_number > \$2", rollback_query()
    )
    assert sorted(deleted) == list(EVENT_TABLES)
