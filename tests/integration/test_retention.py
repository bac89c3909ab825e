"""Retention against a real PostgreSQL (keeper.db.retention): old finished intents with their
attempts, items and faults, and old reconciled usage rows, leave the live tables in bounded
batches, moved into schema `archive` or deleted; everything the keeper may still read stays;
a replayed producer key is refused as before, and sequence numbers go on where they were."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from eth_utils import to_checksum_address
from structlog.testing import capture_logs

from keeper import db as keeper_db
from keeper.chain.deployment import Deployment
from keeper.config import RetentionConfig
from keeper.db.retention import RETIRED_ROWS, TABLES, Retention
from keeper.loops import LoopGuard
from keeper.plan.planner import Planner
from keeper.plan.usage import UsageOracle
from keeper.service.daemon import Heartbeat
from keeper.service.retention import retention_loop
from tests.support.tx import Env
from tests.support.usage import SETTINGS, index, statuses, world

pytestmark = pytest.mark.anyio

CHAIN = 31337
SIGNER = bytes.fromhex("51" * 20)
OTHER_SIGNER = bytes.fromhex("52" * 20)
TARGET = bytes.fromhex("07" * 20)
PAYER = bytes.fromhex("11" * 20)
PAYEE = bytes.fromhex("ab" * 20)
FINALIZED = 1_000
INDEXED = 1_100
T0 = 1_800_000_000
OLD = timedelta(days=120)
YOUNG = timedelta(days=10)

_unique = itertools.count(1)


def settings(mode: str = "archive", batch_rows: int = 1_000) -> RetentionConfig:
    return RetentionConfig(keep_days=90, mode=mode, batch_rows=batch_rows)


@pytest.fixture
async def conn(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """The test's database with a chain indexed to INDEXED, finalized at FINALIZED."""
    await db.execute(
        "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_hash, "
        "indexed_timestamp, head_block, head_timestamp, finalized_block) "
        "VALUES ($1, 0, $2, $3, $4, $2, $4, $5)",
        CHAIN,
        INDEXED,
        b"\x01" * 32,
        T0,
        FINALIZED,
    )
    await db.execute(
        "INSERT INTO planner_settings (chain_id, settle_min_amount, settle_max_interval, "
        "settle_horizon, backoff_seconds) VALUES ($1, 1, 3600, 600, 600)",
        CHAIN,
    )
    yield db


async def intent(
    db: asyncpg.Connection,
    state: str,
    age: timedelta,
    *,
    signer: bytes = SIGNER,
    block: int | None = 900,
    items: int = 2,
    attempts: int = 2,
    fault: bool = False,
    effects_checked: bool = True,
    kind: str = "settle",
) -> int:
    """An intent in `state`, last changed `age` ago, with its items, attempts and a fault."""
    n = next(_unique)
    sent = state in ("assigned", "final", "replan") or (state == "failed" and block is not None)
    mined = state == "final" or (state == "failed" and block is not None)
    iid = await db.fetchval(
        """
        INSERT INTO intents (chain_id, kind, key, target, calldata, state, reason, signer, nonce,
                             gas_limit, tx_hash, block_number, block_hash, receipt_status,
                             created_at, updated_at, effects_checked_at)
        VALUES ($1, $2, $3, $4, '\\x00', $5, $6, $7, $8, $9, $10, $11, $12, $13,
                now() - $14::interval, now() - $14::interval,
                CASE WHEN $15 THEN now() - $14::interval END)
        RETURNING id
        """,
        CHAIN,
        kind,
        f"{kind}:{n}",
        TARGET,
        state,
        None if state == "final" else "test",
        signer if sent else None,
        n if sent else None,
        100_000 if sent else None,
        n.to_bytes(32, "big") if mined else None,
        block if mined else None,
        n.to_bytes(32, "big") if mined else None,
        (1 if state == "final" else 0) if mined else None,
        age,
        state == "final" and effects_checked,
    )
    for a in range(attempts if sent else 0):
        await db.execute(
            "INSERT INTO attempts (intent_id, chain_id, signer, nonce, max_fee, priority_fee, "
            "gas_limit, raw, tx_hash, state, broadcast_at, broadcasts) "
            "VALUES ($1, $2, $3, $4, 2, 1, 100000, '\\x02', $5, 'broadcast', now(), 1)",
            iid,
            CHAIN,
            signer,
            n,
            (n * 100 + a + 1).to_bytes(32, "big"),
        )
    for position in range(items if kind != "purge" else 0):
        await db.execute(
            "INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, outcome, "
            "checked_at) VALUES ($1, $2, $3, $4, $5, 'effect', now() - $6::interval)",
            iid,
            position,
            CHAIN,
            kind,
            Decimal(n * 100 + position),
            age,
        )
    if fault:
        await db.execute(
            "INSERT INTO tx_faults (intent_id, chain_id, stage, error, failures, retry_at) "
            "VALUES ($1, $2, 'effects', 'boom', 1, now())",
            iid,
            CHAIN,
        )
    return int(iid)


async def live_ids(db: asyncpg.Connection) -> set[int]:
    return {int(r["id"]) for r in await db.fetch("SELECT id FROM intents")}


async def archived_ids(db: asyncpg.Connection) -> set[int]:
    return {int(r["id"]) for r in await db.fetch("SELECT id FROM archive.intents")}


async def children(db: asyncpg.Connection, schema: str, ids: set[int]) -> dict[str, int]:
    counts = {}
    for table in ("attempts", "batch_items", "tx_faults"):
        sql = f"SELECT count(*) FROM {schema}.{table} WHERE intent_id = ANY($1::bigint[])"  # noqa: S608 - fixed names
        counts[table] = int(await db.fetchval(sql, sorted(ids)))
    return counts


async def run(db: asyncpg.Connection, config: RetentionConfig) -> Any:
    return await Retention(CHAIN, config).run(db)


async def test_each_archive_table_has_its_live_tables_columns_in_order(
    db: asyncpg.Connection,
) -> None:
    """A batch moves rows with `INSERT INTO archive.x SELECT * FROM moved`: a migration that adds
    a column to a live table must add it to its archive table too."""
    query = (
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    for table in TABLES:
        live = await db.fetch(query, f"public.{table}")
        assert live and await db.fetch(query, f"archive.{table}") == live, table


# --------------------------------------------------------------------------- intents


@pytest.mark.parametrize("mode", ["archive", "delete"])
async def test_old_finished_intents_leave_with_their_children_and_the_rest_stays(
    conn: asyncpg.Connection, mode: str
) -> None:
    retired = {
        await intent(conn, "final", OLD, fault=True),
        await intent(conn, "failed", OLD, block=None, attempts=0),  # failed in simulation
        await intent(conn, "failed", OLD),  # reverted on chain
        await intent(conn, "replan", OLD, block=None),
        await intent(conn, "final", OLD, kind="purge", items=0),
    }
    kept = {
        # Too young.
        await intent(conn, "final", YOUNG),
        await intent(conn, "failed", YOUNG, block=None),
        # Live: on its way, whatever its age.
        await intent(conn, "planned", OLD, block=None, attempts=0),
        await intent(conn, "assigned", OLD, block=None),
        # Final but above the finalized block (keeper.items_in_flight may still need it).
        await intent(conn, "final", OLD, block=FINALIZED + 1),
        # Final with its effects not checked yet (effects_due).
        await intent(conn, "final", OLD, effects_checked=False),
        # The newest live nonce of its signer's lane (lane_next_nonce, keeper.signers).
        await intent(conn, "final", OLD, signer=OTHER_SIGNER),
    }
    # Old, but an item of it was checked since (keeper.items_backed_off reads it).
    await conn.execute(
        "UPDATE batch_items SET checked_at = now() - interval '1 day' WHERE intent_id = $1",
        kept_checked := await intent(conn, "final", OLD),
    )
    kept.add(kept_checked)
    lane_head = await intent(conn, "final", YOUNG)  # SIGNER's newest nonce: young, stays
    kept.add(lane_head)
    await conn.executemany(
        "INSERT INTO signer_state (chain_id, signer, balance, low_balance) "
        "VALUES ($1, $2, 1, false)",
        [(CHAIN, SIGNER), (CHAIN, OTHER_SIGNER)],
    )
    next_nonces = "SELECT address, next_nonce FROM keeper.signers ORDER BY address"
    signers_before = await conn.fetch(next_nonces)
    assert len(signers_before) == 2
    retired_children = await children(conn, "public", retired)
    assert retired_children == {"attempts": 8, "batch_items": 8, "tx_faults": 1}
    kept_children = await children(conn, "public", kept)
    action = "archived" if mode == "archive" else "deleted"
    counted = RETIRED_ROWS.labels(table="attempts", action=action)._value.get()

    report = await run(conn, settings(mode))

    assert await live_ids(conn) == kept
    assert await children(conn, "public", retired) == {
        "attempts": 0,
        "batch_items": 0,
        "tx_faults": 0,
    }
    assert await children(conn, "public", kept) == kept_children
    assert report.rows["intents"] == 5
    assert report.rows["attempts"] == 8 and report.rows["batch_items"] == 8
    assert report.rows["tx_faults"] == 1
    if mode == "archive":
        assert await archived_ids(conn) == retired
        assert await children(conn, "archive", retired) == retired_children
        # Moved as they were, column for column.
        row = await conn.fetchrow("SELECT * FROM archive.intents WHERE id = $1", min(retired))
        assert (
            row is not None
            and row["key"]
            and row["state"] == "final"
            and row["block_number"] == 900
        )
    else:
        assert await archived_ids(conn) == set()
        assert await conn.fetchval("SELECT count(*) FROM archive.attempts") == 0
    assert RETIRED_ROWS.labels(table="attempts", action=action)._value.get() == counted + 8
    # The operator views still read, and the lanes' next nonces did not move.
    for view in await conn.fetch(
        "SELECT format('%I.%I', schemaname, viewname) AS v FROM pg_views "
        "WHERE schemaname = 'keeper'"
    ):
        await conn.fetch(f"SELECT * FROM {view['v']}")  # noqa: S608 - catalog names
    assert await conn.fetch(next_nonces) == signers_before
    pipeline = {int(r["intent_id"]) for r in await conn.fetch("SELECT * FROM keeper.tx_pipeline")}
    assert pipeline == kept
    # A second run finds nothing more.
    again = await run(conn, settings(mode))
    assert sum(again.rows.values()) == 0 and again.batches == 3


async def test_batches_take_at_most_batch_rows_intents_each(conn: asyncpg.Connection) -> None:
    # Made newest first: the last one made is the oldest.
    made = [await intent(conn, "final", OLD + timedelta(hours=i)) for i in range(8)]
    await intent(conn, "final", YOUNG)  # the lane's newest nonce
    retention = Retention(CHAIN, settings(batch_rows=3))
    steps = retention.start()
    taken: list[set[int]] = []
    while True:
        before = await archived_ids(conn)
        more = await steps.step(conn)
        taken.append(await archived_ids(conn) - before)
        if not more:
            break
    # Intents 3 + 3 + 2, oldest first, then one empty batch of reports and one of rejected rows.
    assert taken == [set(made[5:]), set(made[2:5]), set(made[:2]), set(), set()]
    assert steps.batches == 5 and steps.rows["intents"] == 8
    assert steps.rows["batch_items"] == 16 and steps.rows["attempts"] == 16


async def test_a_locked_row_is_skipped_not_waited_for(
    conn: asyncpg.Connection, database_url: str
) -> None:
    locked = await intent(conn, "final", OLD)
    free = await intent(conn, "final", OLD)
    await intent(conn, "final", YOUNG)
    other = await keeper_db.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM intents WHERE id = $1 FOR UPDATE", locked)
            with anyio.fail_after(10):
                await run(conn, settings())
        assert await archived_ids(conn) == {free}
        assert locked in await live_ids(conn)
        await run(conn, settings())
        assert await archived_ids(conn) == {free, locked}
    finally:
        await other.close()


async def test_a_table_lock_ends_the_run_after_the_lock_timeout(
    conn: asyncpg.Connection, database_url: str
) -> None:
    old = await intent(conn, "final", OLD, fault=True)
    await intent(conn, "final", YOUNG)
    other = await keeper_db.connect(database_url)
    try:
        async with other.transaction():
            # What a VACUUM FULL or a migration would hold.
            await other.execute("LOCK TABLE tx_faults IN ACCESS EXCLUSIVE MODE")
            with anyio.fail_after(10):
                stopped = await run(conn, settings())
        assert stopped.lock_timeouts == 1 and stopped.batches == 0
        assert old in await live_ids(conn)  # the batch rolled back whole
        assert await children(conn, "archive", {old}) == {
            "attempts": 0,
            "batch_items": 0,
            "tx_faults": 0,
        }
        again = await run(conn, settings())
        assert again.lock_timeouts == 0 and await archived_ids(conn) == {old}
    finally:
        await other.close()


async def test_nothing_is_retired_before_a_block_is_known_to_be_final(
    conn: asyncpg.Connection,
) -> None:
    await intent(conn, "failed", OLD, block=None, attempts=0)
    await conn.execute("UPDATE ingest_cursor SET finalized_block = NULL")
    report = await run(conn, settings())
    assert report.batches == 0 and report.finalized_block is None
    assert await archived_ids(conn) == set()


# --------------------------------------------------------------------------- usage


async def stream(db: asyncpg.Connection, stream_id: int, usage_seq: int) -> None:
    await db.execute(
        "INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at, "
        "usage_seq, price, status, opened_block, updated_block) "
        "VALUES ($1, $2, $3, $4, 0, 1000000, $5, $6, 1, 'open', 10, 10)",
        CHAIN,
        Decimal(stream_id),
        PAYER,
        PAYEE,
        T0,
        Decimal(usage_seq),
    )


async def report(
    db: asyncpg.Connection,
    stream_id: int,
    seq: int,
    key: str,
    age: timedelta,
    *,
    state: str = "recorded",
    block: int = 900,
) -> int:
    """An accepted inbox row and its report, reconciled `age` ago (pending: not reconciled)."""
    inbox_id = await db.fetchval(
        "INSERT INTO usage_inbox (chain_id, stream_id, units, producer_key, label, received_at, "
        "verdict, validated_at) VALUES ($1, $2, '5', $3, 'tenant-7', now() - $4::interval, "
        "'accepted', now() - $4::interval) RETURNING id",
        CHAIN,
        str(stream_id),
        key,
        age,
    )
    reconciled = state != "pending"
    await db.execute(
        "INSERT INTO usage_reports (inbox_id, chain_id, stream_id, seq, units, producer_key, "
        "label, observed_at, accepted_at, state, block_number, tx_hash, charged, fee, shortfall, "
        "reason, detail, reconciled_at) VALUES ($1, $2, $3, $4, 5, $5, 'tenant-7', "
        "now() - $6::interval, now() - $6::interval, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        inbox_id,
        CHAIN,
        Decimal(stream_id),
        Decimal(seq),
        key,
        age,
        state,
        block if reconciled else None,
        b"\x09" * 32 if reconciled else None,
        Decimal(5) if state == "recorded" else None,
        Decimal(0) if state == "recorded" else None,
        Decimal(0) if state == "recorded" else None,
        "sequence_taken" if state == "rejected" else None,
        "taken" if state == "rejected" else None,
        None if not reconciled else await db.fetchval("SELECT now() - $1::interval", age),
    )
    return int(inbox_id)


async def rejected_at_intake(db: asyncpg.Connection, key: str, age: timedelta) -> int:
    return int(
        await db.fetchval(
            "INSERT INTO usage_inbox (chain_id, stream_id, units, producer_key, received_at, "
            "verdict, reason, detail, validated_at) VALUES ($1, '1', 'abc', $2, "
            "now() - $3::interval, 'rejected', 'malformed_units', 'abc', now() - $3::interval) "
            "RETURNING id",
            CHAIN,
            key,
            age,
        )
    )


async def inbox(db: Any, stream_id: int, key: str, units: int = 3) -> int:
    return int(
        await db.fetchval(
            "INSERT INTO usage_inbox (stream_id, units, producer_key) VALUES ($1, $2, $3) "
            "RETURNING id",
            str(stream_id),
            str(units),
            key,
        )
    )


async def intake(db: asyncpg.Connection) -> dict[int, tuple[Any, ...]]:
    """The real intake's verdicts: inbox id -> (verdict, reason, detail, seq)."""
    async with db.transaction():
        await UsageOracle(CHAIN, unknown_stream_grace=0).intake(db)
    return {
        int(r["id"]): (r["verdict"], r["reason"], r["detail"], r["seq"])
        for r in await db.fetch(
            "SELECT u.id, u.verdict, u.reason, u.detail, r.seq FROM usage_inbox u "
            "LEFT JOIN usage_reports r ON r.inbox_id = u.id"
        )
    }


@pytest.mark.parametrize("mode", ["archive", "delete"])
async def test_reconciled_usage_leaves_and_its_keys_still_refuse_replays(
    conn: asyncpg.Connection, mode: str
) -> None:
    await stream(conn, 1, usage_seq=4)
    await stream(conn, 2, usage_seq=2)
    old = {
        await report(conn, 1, 1, "k1", OLD),
        await report(conn, 1, 2, "k2", OLD),
        await report(conn, 1, 3, "k3", OLD, state="rejected"),  # sequence_taken
        await report(conn, 2, 1, "k4", OLD),
    }
    bad_old = await rejected_at_intake(conn, "bad-old", OLD)
    kept = {
        await report(conn, 1, 4, "k5", YOUNG),
        await report(conn, 1, 5, "k6", OLD, state="pending"),
        # Reconciled by an event above the finalized block (a reorg may undo it).
        await report(conn, 2, 2, "k7", OLD, block=FINALIZED + 1),
        await rejected_at_intake(conn, "bad-young", YOUNG),
        await inbox(conn, 2, "unvalidated"),
    }
    # A replay of an old key before retention: its verdict is the reference.
    replay_before = await inbox(conn, 1, "k2")
    verdicts = await intake(conn)
    unvalidated = max(kept)
    kept.discard(unvalidated)
    kept |= {unvalidated, replay_before}
    reference = verdicts[replay_before]
    assert reference[:2] == ("rejected", "duplicate_producer_key")
    assert verdicts[unvalidated][:2] == ("accepted", None)
    assert verdicts[unvalidated][3] == 3

    result = await run(conn, settings(mode))

    live = {int(r["id"]) for r in await conn.fetch("SELECT id FROM usage_inbox")}
    assert live == kept
    assert result.rows["usage_reports"] == 4 and result.rows["usage_inbox"] == 5
    reports_left = {r["producer_key"] for r in await conn.fetch("SELECT * FROM usage_reports")}
    assert reports_left == {"k5", "k6", "k7", "unvalidated"}
    retired_keys = {
        r["producer_key"]: int(r["inbox_id"])
        for r in await conn.fetch("SELECT * FROM usage_retired_keys WHERE chain_id = $1", CHAIN)
    }
    assert set(retired_keys) == {"k1", "k2", "k3", "k4"}
    archived = {int(r["id"]) for r in await conn.fetch("SELECT id FROM archive.usage_inbox")}
    archived_reports = await conn.fetchval("SELECT count(*) FROM archive.usage_reports")
    if mode == "archive":
        assert archived == old | {bad_old}
        assert archived_reports == 4
    else:
        assert archived == set() and archived_reports == 0
    # The usage views read what is left.
    shown = {r["producer_key"] for r in await conn.fetch("SELECT * FROM keeper.usage")}
    assert shown == {"k5", "k6", "k7", "bad-young", "unvalidated", "k2"}

    # A replay of each retired key through the real intake: refused as before retention.
    replays = {await inbox(conn, 1, key): key for key in ("k1", "k2", "k3", "k4")}
    verdicts = await intake(conn)
    for inbox_id, key in replays.items():
        verdict, reason, detail, seq = verdicts[inbox_id]
        assert (verdict, reason, seq) == ("rejected", "duplicate_producer_key", None), key
        assert f"(inbox row {retired_keys[key]})" in detail
    assert verdicts[next(i for i, k in replays.items() if k == "k2")] == reference
    # A key rejected at intake was never accepted: a corrected row may use it.
    corrected = await inbox(conn, 1, "bad-old")
    assert (await intake(conn))[corrected][:2] == ("accepted", None)


async def test_sequence_numbers_go_on_after_every_report_of_a_stream_left(
    conn: asyncpg.Connection,
) -> None:
    await stream(conn, 1, usage_seq=3)
    await stream(conn, 2, usage_seq=2)
    for seq in (1, 2, 3):
        await report(conn, 1, seq, f"a{seq}", OLD)
    await report(conn, 2, 1, "b1", OLD)
    await report(conn, 2, 2, "b2", OLD)
    await report(conn, 2, 3, "b3", OLD, state="pending")  # not recorded yet: stays
    await run(conn, settings("delete"))
    assert await conn.fetchval("SELECT count(*) FROM usage_reports") == 1
    first, second = await inbox(conn, 1, "a4"), await inbox(conn, 2, "b4")
    verdicts = await intake(conn)
    assert verdicts[first][3] == 4  # after the contract's 3, though no report of 1 is left
    assert verdicts[second][3] == 4  # after the pending 3


async def test_a_report_above_its_streams_sequence_is_kept(conn: asyncpg.Connection) -> None:
    # Inconsistent on purpose (a recorded report past the contract's sequence): retiring it
    # would let the intake hand out its sequence number again.
    await stream(conn, 1, usage_seq=1)
    await report(conn, 1, 1, "a1", OLD)
    await report(conn, 1, 2, "a2", OLD)
    await run(conn, settings())
    left = [r["producer_key"] for r in await conn.fetch("SELECT * FROM usage_reports")]
    assert left == ["a2"]


# --------------------------------------------------------------------------- the daemon


async def test_the_daemons_loop_retires_in_batches_and_stops_on_request(
    conn: asyncpg.Connection, database_url: str
) -> None:
    made = {await intent(conn, "final", OLD) for _ in range(3)}
    await intent(conn, "final", YOUNG)
    config = RetentionConfig(batch_rows=2, batch_pause=0.01, interval=3_600)
    shutdown, heartbeat = anyio.Event(), Heartbeat(60)
    errors: list[str] = []
    guard = LoopGuard("retention", config.interval, on_error=errors.append)
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=2)
    try:
        with capture_logs() as logs, anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    partial(
                        retention_loop,
                        Retention(CHAIN, config),
                        pool,
                        shutdown=shutdown,
                        heartbeat=heartbeat,
                        guard=guard,
                    )
                )
                while not any(e["event"] == "retention_run" for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                # The loop now waits out its hour; a stop request ends it at once.
                shutdown.set()
    finally:
        await pool.close()
    assert await archived_ids(conn) == made
    (line,) = [e for e in logs if e["event"] == "retention_run"]
    assert line["intents"] == 3 and line["batches"] == 4  # 2 + 1 intents, reports, rejected
    assert line["mode"] == "archive" and line["finalized_block"] == FINALIZED
    assert not heartbeat.stuck() and errors == []


# --------------------------------------------------------------------------- keeper retire


def keeper_retire(tmp_path: Path, database_url: str, *args: str) -> dict[str, Any]:
    address = to_checksum_address("0x" + "07" * 20)
    Deployment(CHAIN, 1, address, address, address, address, address, address, 250).write(
        tmp_path / "deployment.json"
    )
    config = tmp_path / "keeper.toml"
    config.write_text(
        '[chain]\nrpc_url = "http://127.0.0.1:1"\ndeployment_file = "deployment.json"\n'
        f'[database]\nurl = "{database_url}"\n[retention]\nmode = "delete"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "keeper", "retire", "--config", str(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_keeper_retire_counts_with_dry_run_then_retires(
    conn: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    old = await intent(conn, "final", OLD)
    await intent(conn, "final", YOUNG)
    await stream(conn, 1, usage_seq=1)
    await report(conn, 1, 1, "k1", OLD)
    dry = await anyio.to_thread.run_sync(keeper_retire, tmp_path, database_url, "--dry-run")
    assert dry["dry_run"] and dry["mode"] == "delete" and dry["finalized_block"] == FINALIZED
    assert dry["rows"] == {
        "tx_faults": 0,
        "attempts": 2,
        "batch_items": 2,
        "intents": 1,
        "usage_reports": 1,
        "usage_inbox": 1,
    }
    # Nothing changed.
    assert old in await live_ids(conn)
    assert await conn.fetchval("SELECT count(*) FROM usage_retired_keys") == 0
    done = await anyio.to_thread.run_sync(keeper_retire, tmp_path, database_url)
    assert done["rows"] == dry["rows"] and not done["dry_run"]
    assert old not in await live_ids(conn) and await archived_ids(conn) == set()
    assert await conn.fetchval("SELECT producer_key FROM usage_retired_keys") == "k1"


# --------------------------------------------------------------------------- on a chain


async def test_on_a_chain_retired_usage_stays_charged_once_and_numbering_goes_on(
    env: Env, database_url: str
) -> None:
    """Usage recorded on chain, its reports and intent retired, then the same producer keys
    replayed and new usage sent: the replays are refused and the new reports continue each
    stream's sequence, recorded by the contract (no gap, no replay)."""
    manager = world(env)
    await index(env, database_url)
    p = Planner(
        env.deployment.chain_id,
        stream_manager=env.deployment.stream_manager,
        escrow_vault=env.deployment.escrow_vault,
        settings=SETTINGS,
    )

    async def until_idle() -> None:
        for _ in range(4):
            async with env.pool.acquire() as c:
                await p.plan_pass(c)
            for _ in range(3):
                await env.manager.tick()
                env.mine()
            await index(env, database_url)
            await env.manager.tick()
        async with env.pool.acquire() as c:
            await p.plan_pass(c)

    async def put(*rows: tuple[int, int, str]) -> None:
        async with env.pool.acquire() as c:
            for stream_id, units, key in rows:
                await inbox(c, stream_id, key, units)

    await put((1, 10, "a"), (2, 1, "b"), (1, 20, "c"))
    async with env.pool.acquire() as c:
        await p.store_settings(c)
    await until_idle()
    assert {k: v[:2] for k, v in (await statuses(env)).items()} == {
        "a": ("recorded", 1),
        "b": ("recorded", 1),
        "c": ("recorded", 2),
    }
    chain = env.deployment.chain_id
    async with env.pool.acquire() as c:
        # Everything is final and three months old.
        await c.execute("UPDATE ingest_cursor SET finalized_block = indexed_block")
        await c.execute(
            "UPDATE usage_reports SET reconciled_at = reconciled_at - interval '100 days'"
        )
        await c.execute("SET session_replication_role = replica")  # no trigger sets updated_at
        await c.execute("UPDATE intents SET updated_at = updated_at - interval '100 days'")
        await c.execute("SET session_replication_role = DEFAULT")
        await c.execute("UPDATE batch_items SET checked_at = checked_at - interval '100 days'")
        done = await Retention(chain, settings()).run(c)
        assert done.rows["usage_reports"] == 3 and done.rows["usage_inbox"] == 3
        assert await c.fetchval("SELECT count(*) FROM usage_reports") == 0
        # The usage intent is not finished as far as the manager knows (confirmed): it stays.
        assert await c.fetchval("SELECT state FROM intents WHERE kind = 'usage'") == "confirmed"
        assert done.rows["intents"] == 0
    # The same usage replayed, and new usage.
    await put((1, 10, "a"), (2, 1, "b"), (1, 30, "d"), (2, 2, "e"))
    await until_idle()
    # keeper.usage shows the live rows: the refused replays and the new usage.
    async with env.pool.acquire() as c:
        rows = {
            r["producer_key"]: (r["status"], r["seq"], r["reason"])
            for r in await c.fetch("SELECT * FROM keeper.usage")
        }
    assert rows == {
        "a": ("rejected", None, "duplicate_producer_key"),
        "b": ("rejected", None, "duplicate_producer_key"),
        "d": ("recorded", Decimal(3), None),
        "e": ("recorded", Decimal(2), None),
    }
    # The contract charged each unit once: stream 1 at 3 per unit (10 + 20 + 30 units), and
    # its sequence is 3; stream 2's is 2.
    assert manager.functions.getStream(1).call()[5] == 3
    assert manager.functions.getStream(2).call()[5] == 2
    async with env.pool.acquire() as c:
        charged = await c.fetchval(
            "SELECT sum(charged) FROM usage_recorded WHERE stream_id = 1 AND chain_id = $1", chain
        )
        skipped = await c.fetchval("SELECT count(*) FROM usage_skipped")
    assert charged == 3 * (10 + 20 + 30) and skipped == 0
