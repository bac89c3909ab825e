"""The indexer against a real anvil and a real PostgreSQL: backfill, follow, idempotence.

Every test deploys the contracts on its own anvil node and drives random activity on them
(`tests/support/ingest.py`), then checks the index three ways: against a fresh
index of the same chain, against the contracts' own state by eth_call, and against the
contracts' logs (nothing missing, nothing twice). Reorgs are in `test_ingest_reorgs.py`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import anyio
import pytest
from structlog.testing import capture_logs

from keeper import db as keeper_db
from keeper.chain.rpc import RpcUnavailable
from keeper.config import IngestConfig
from keeper.dev.anvil import Anvil
from keeper.ingest.events import Decoder
from keeper.ingest.indexer import ChainMismatch, FatalReorg, Indexer
from tests.support.chain import calldata
from tests.support.ingest import (
    ANVIL_FINALITY,
    PROJECTION_TABLES,
    STREAM_ACTIONS,
    Driver,
    FaultyClient,
    FreshDatabases,
    Target,
    Tx,
    accrued_of,
    contract_state,
    dump,
    event_tables,
    index_until_caught_up,
    open_indexer,
    verify_index,
)

pytestmark = pytest.mark.anyio

FAST = IngestConfig(recheck_delay=0.0, poll_interval=0.01)


@pytest.fixture
def fresh(database_factory: Callable[..., str], template_database: str) -> FreshDatabases:
    """Where the reference (fresh) indexes are built."""
    return FreshDatabases(lambda: database_factory(template_database))


def busy_chain(driver: Driver, blocks: int) -> None:
    """`blocks` blocks of random activity."""
    for _ in range(blocks):
        driver.act()


# ---------------------------------------------------------------------- backfill and follow


async def test_backfill_then_follow_match_the_contracts(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """History below the finalized block is backfilled in ranges, the rest followed block by
    block; both give the contracts' state, and the index keeps up as new blocks come."""
    driver = Driver(anvil_factory(), random.Random(11))
    busy_chain(driver, 25)
    driver.mine(ANVIL_FINALITY + 6)  # the activity is now final: backfill territory
    busy_chain(driver, 8)  # and some above the finalized block: follow territory
    finalized = driver.finalized()
    assert finalized > driver.setup_block + 20

    client = FaultyClient(driver.url)
    async with open_indexer(client, database_url, driver.target, FAST) as indexer:
        await index_until_caught_up(indexer)
        ranges = list(client.get_logs_calls)
        backfilled = [r for r in ranges if r[1] <= finalized]
        assert backfilled, "nothing was backfilled"
        assert backfilled[0][0] == driver.target.start_block
        assert backfilled[-1][1] == finalized
        assert sum(n for _, _, n in backfilled) > 50, "the backfill saw the activity"
        followed = [r for r in ranges if r[0] > finalized]
        assert followed and followed[-1][1] == driver.head()
        async with indexer.pool.acquire() as conn:
            cursor = await indexer.store.cursor(conn, indexer.start_block)
            below = await conn.fetchval(
                "SELECT count(*) FROM blocks WHERE chain_id = $1 AND number <= $2",
                driver.chain_id,
                finalized,
            )
        assert cursor.backfill_done
        assert cursor.finalized_block == finalized
        # Backfill keeps no parent-hash chain below the finalized block (range ends at most).
        assert below <= len(backfilled) < finalized - driver.target.start_block
        await verify_index(indexer, driver, fresh)

        for _ in range(4):  # follow: new blocks as they come
            busy_chain(driver, 3)
            assert await indexer.sync_once() == 3
            await verify_index(indexer, driver, fresh)


async def test_every_event_table_is_dumped_and_decoded(database_url: str) -> None:
    """The checks of these tests see every event table the schema has and the decoder fills
    (a new event table cannot silently escape the comparisons)."""
    addresses = {"StreamManager": "0x" + "11" * 20, "EscrowVault": "0x" + "22" * 20}
    conn = await keeper_db.connect(database_url)
    try:
        tables = await event_tables(conn)
        assert tables == Decoder(31337, addresses).tables
        assert set(await dump(conn, 31337)) >= set(tables)
    finally:
        await conn.close()


async def test_a_claim_of_credit_from_earlier_blocks(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A payee claims, in a later block, what settlements credited it before: the ledger
    goes down to what `credited()` says (the block's own net ledger change is negative)."""
    driver = Driver(anvil_factory(), random.Random(4))
    payer, payee, m = driver.payers[0], driver.signing_payees[0], driver.manager
    driver.send([driver.tx("open", m, "openStream", [payee, 10, 10**6], payer)])
    driver.mine()
    driver.send([driver.tx("settle", m, "settleStreams", [[1]], driver.bystander)])
    driver.mine(seconds=100)
    async with open_indexer(driver.url, database_url, driver.target, FAST) as indexer:
        await verify_index(indexer, driver, fresh)
        driver.send([driver.tx("claim", m, "claim", [], payee)])
        driver.mine(seconds=5)
        await verify_index(indexer, driver, fresh)
        async with indexer.pool.acquire() as conn:
            credited = await conn.fetchval(
                "SELECT credited FROM payee_ledger WHERE account = $1", bytes.fromhex(payee[2:])
            )
        assert credited == 0


async def test_syncing_again_changes_nothing(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A second poll, a second Indexer on the same database and a restarted one write
    nothing twice: events, projections, blocks, reorgs and the cursor stay as they were."""
    driver = Driver(anvil_factory(), random.Random(5))
    busy_chain(driver, 15)
    driver.mine(ANVIL_FINALITY + 3)
    busy_chain(driver, 5)

    async with open_indexer(driver.url, database_url, driver.target, FAST) as first:
        await index_until_caught_up(first)
        async with first.pool.acquire() as conn:
            before = await dump(conn, driver.chain_id, blocks=True, reorgs=True)
        assert await first.sync_once() == 0
        assert await first.sync_once() == 0
        async with first.pool.acquire() as conn:
            assert await dump(conn, driver.chain_id, blocks=True, reorgs=True) == before

        async with open_indexer(driver.url, database_url, driver.target, FAST) as second:
            assert await second.sync_once() == 0
            async with second.pool.acquire() as conn:
                assert await dump(conn, driver.chain_id, blocks=True, reorgs=True) == before
            # Both indexers take turns as the chain moves: nothing is written twice.
            for turn in range(6):
                busy_chain(driver, 2)
                await index_until_caught_up(second if turn % 2 else first)
            assert await first.sync_once() == 0
            assert await second.sync_once() == 0
            await verify_index(second, driver, fresh)


async def test_restart_after_an_outage_mid_backfill(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A process that dies of an RPC outage in the middle of a backfill leaves the index at a
    range boundary; the next process continues from there and ends equal to a fresh index."""
    driver = Driver(anvil_factory(), random.Random(8))
    busy_chain(driver, 30)
    driver.mine(ANVIL_FINALITY + 2)
    finalized = driver.finalized()

    client = FaultyClient(driver.url)
    client.fail_get_logs(after=4, times=100)
    settings = IngestConfig(recheck_delay=0.0, initial_range=2)
    async with open_indexer(client, database_url, driver.target, settings) as crashed:
        # The typed error, not an exception group from the backfill's tasks: the run loop
        # waits out RpcUnavailable, and only it.
        with pytest.raises(RpcUnavailable):
            await crashed.sync_once()
        async with crashed.pool.acquire() as conn:
            cursor = await crashed.store.cursor(conn, crashed.start_block)
            partial = await dump(conn, driver.chain_id)
    ends = [end for _, end, _ in client.get_logs_calls]
    assert cursor.indexed_block in ends, "the cursor must sit at the end of a written range"
    assert cursor.indexed_block < finalized
    assert sum(len(rows) for rows in partial.values()) > 1, "some ranges were written"

    async with open_indexer(driver.url, database_url, driver.target, FAST) as restarted:
        await verify_index(restarted, driver, fresh)


async def test_run_waits_out_an_rpc_outage_mid_backfill(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """`run()` reports an RPC outage during a backfill and resumes when the node is back,
    as it does for outages anywhere else; the daemon does not die of it."""
    driver = Driver(anvil_factory(), random.Random(9))
    busy_chain(driver, 20)
    driver.mine(ANVIL_FINALITY + 2)
    client = FaultyClient(driver.url)
    client.fail_get_logs(after=3, times=2)
    settings = IngestConfig(recheck_delay=0.0, initial_range=2, poll_interval=0.01)
    async with open_indexer(client, database_url, driver.target, settings) as indexer:
        head = driver.head()
        async with anyio.create_task_group() as tg:
            await tg.start(indexer.run)
            with anyio.fail_after(20):
                while True:
                    async with indexer.pool.acquire() as conn:
                        cursor = await indexer.store.cursor(conn, indexer.start_block)
                    if cursor.indexed_block == head:
                        break
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert client.failures_left == 0, "the outage happened"
        await verify_index(indexer, driver, fresh)


async def test_run_follows_the_head_and_checks_the_chain(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """`run()` polls by itself until cancelled; a node of another chain is refused."""
    driver = Driver(anvil_factory(), random.Random(21))
    busy_chain(driver, 5)
    async with open_indexer(driver.url, database_url, driver.target, FAST) as indexer:
        async with anyio.create_task_group() as tg:
            await tg.start(indexer.run)
            for _ in range(3):
                busy_chain(driver, 2)
                head = driver.head()
                with anyio.fail_after(10):
                    while True:
                        async with indexer.pool.acquire() as conn:
                            cursor = await indexer.store.cursor(conn, indexer.start_block)
                        if cursor.indexed_block == head:
                            break
                        await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        await verify_index(indexer, driver, fresh)

    t = driver.target
    wrong = Target(t.chain_id + 1, t.addresses, t.start_block)
    async with open_indexer(driver.url, database_url, wrong, FAST) as other:
        with pytest.raises(ChainMismatch):
            await other.run()


# ---------------------------------------------------------------------- accrual in the views


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stream_balances_accrued_now_equals_accrued_of(
    seed: int, anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """keeper.stream_balances.accrued_now, valued at the indexed block's timestamp, equals the
    contract's accruedOf(id) by eth_call at that block, for every stream, through random
    deposits, rates, top-ups (of depleted streams too), usage charges, settlements, closes,
    and blocks that land exactly on, just before and just after a stream's depletion."""
    rng = random.Random(seed)
    driver = Driver(anvil_factory(), rng)
    big = driver.payers[0]
    extreme = [
        (0, 10**6),  # rate 0: never accrues
        (7, 0),  # no deposit: depleted from the start
        (2**64 - 1, 2**96 - 1),  # the largest rate and balance the contract stores
        (1, 1),
        (rng.randint(1, 10**4), rng.randint(1, 10**9)),
    ]
    driver.send([driver.tx("mint", driver.token, "mint", [big, 2**97], driver.admin)])
    driver.mine()
    m = driver.manager
    driver.send(
        [
            driver.tx("open", m, "openStream", [rng.choice(driver.payees), r, d], big)
            for r, d in extreme
        ]
    )
    driver.mine(seconds=1)
    checked: list[int] = []

    async def compare(indexer: Indexer) -> None:
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT stream_id, accrued_now, as_of_block, as_of FROM keeper.stream_balances"
                " WHERE chain_id = $1 ORDER BY stream_id",
                driver.chain_id,
            )
        block = driver.head()
        assert {r["as_of_block"] for r in rows} == {block}
        assert {r["as_of"] for r in rows} == {int(driver.block(block)["timestamp"], 16)}
        in_view = {int(r["stream_id"]): int(r["accrued_now"]) for r in rows}
        assert set(in_view) == set(contract_state(driver, block).streams), "streams missing"
        on_chain = accrued_of(driver, sorted(in_view), block)
        assert in_view == on_chain, f"block {block}"
        checked.extend(v for v in on_chain.values() if v)

    async with open_indexer(driver.url, database_url, driver.target, FAST) as indexer:
        for round_ in range(12):
            if round_ % 3 == 2:
                # A block exactly when a stream's balance runs out, or a second either side.
                view = contract_state(driver, "latest")
                ends = [
                    s.settled_at - (-s.balance // s.rate)
                    for s in view.streams.values()
                    if s.status == "open" and s.rate and s.balance
                ]
                ends = [t for t in ends if view.timestamp + 1 < t < view.timestamp + 10**7]
                if ends:
                    driver.mine_at(rng.choice(ends) + rng.choice([-1, 0, 1]))
                    await compare(indexer)
            seconds = rng.choice([0, 1, 9, 600, 86_400])
            driver.act(rng.randint(1, 5), seconds=seconds, only=STREAM_ACTIONS)
            await compare(indexer)
            if rng.random() < 0.5:
                driver.mine(seconds=rng.randint(1, 5_000))  # time passes, nothing settled
                await compare(indexer)
    # Fewer than before StreamManager v2: a payer's close request stops a stream's accrual.
    assert len(checked) > 15, "too few streams accrued anything: the test proves little"


# ---------------------------------------------------------------------- big blocks


async def test_a_block_with_more_than_65535_values(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """One block whose events fill more than 65,535 column values (the bind-parameter limit
    of one PostgreSQL statement): 2,000 StreamSettled and 7,000 SettleSkipped rows from one
    settleStreams call all land, whether the block is followed or backfilled."""
    node = anvil_factory()
    driver = Driver(node, random.Random(99))
    driver.rpc("evm_setBlockGasLimit", [hex(2_000_000_000)])
    driver.mine()
    n_streams, n_unknown = 2_000, 7_000
    payer = driver.payers[1]
    nonce = int(driver.rpc("eth_getTransactionCount", [payer, "latest"]), 16)
    manager = str(driver.manager.address)
    opens = []
    for i in range(n_streams):
        payee = (0xB16B10C0 + i).to_bytes(20, "big")  # distinct payees: a ledger row each
        data = calldata("openStream(address,uint256,uint256)", [payee, 1 + i % 7, 10**6])
        tx = {
            "from": payer,
            "to": manager,
            "data": data,
            "gas": hex(400_000),
            "nonce": hex(nonce + i),
        }
        opens.append(("eth_sendTransaction", [tx]))
    driver.rpc_batch(opens)
    driver.mine()
    assert contract_state(driver, "latest").streams.keys() == set(range(1, n_streams + 1))

    ids = list(range(1, n_streams + 1)) + list(range(10**6, 10**6 + n_unknown))
    random.Random(1).shuffle(ids)
    data = driver.manager.encode_abi("settleStreams", [ids])
    driver.send([Tx("settleStreams", driver.bystander, manager, data, gas=400_000_000)])
    driver.mine(seconds=30)
    block = driver.head()

    async with open_indexer(driver.url, database_url, driver.target, FAST) as indexer:
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            rows = await dump(conn, driver.chain_id)
        in_block = {
            table: [r for r in table_rows if r[1] == block]
            for table, table_rows in rows.items()
            if table not in (*PROJECTION_TABLES, "ingest_cursor")
        }
        assert len(in_block["stream_settled"]) == n_streams
        assert len(in_block["settle_skipped"]) == n_unknown
        assert len(in_block["fees_credited"]) == 1
        values = sum(len(r) for table_rows in in_block.values() for r in table_rows)
        assert values > 65_535
        assert len(rows["payee_ledger"]) == n_streams + 1  # every payee and the fee recipient
        await verify_index(indexer, driver, fresh)

        # The same block through backfill (a fresh index below the finalized block).
        driver.mine(ANVIL_FINALITY + 1)
        await verify_index(indexer, driver, fresh)


# ---------------------------------------------------------------------- adaptive backfill


async def test_backfill_ranges_grow_from_one_block(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """Started with a range of one block, backfill doubles its range while answers stay
    small, covers the finalized history exactly once in order, and reports its progress."""
    driver = Driver(anvil_factory(), random.Random(13))
    busy_chain(driver, 12)
    driver.mine(200)
    finalized = driver.finalized()
    client = FaultyClient(driver.url)
    # Below the configuration's bounds (they hold operators to sane values): a line per range.
    settings = IngestConfig.model_construct(
        recheck_delay=0.0, initial_range=1, progress_interval=0.0
    )
    with capture_logs() as logs:
        async with open_indexer(client, database_url, driver.target, settings) as indexer:
            await index_until_caught_up(indexer)
            backfill = [r for r in client.get_logs_calls if r[1] <= finalized]
            sizes = [b - a + 1 for a, b, _ in backfill]
            assert sizes[:5] == [1, 2, 4, 8, 16]
            assert all(s2 > s1 for s1, s2 in itertools.pairwise(sizes[:-1]))
            assert backfill[0][0] == driver.target.start_block
            for (_, end, _), (start, _, _) in itertools.pairwise(backfill):
                assert start == end + 1, "ranges must be contiguous"
            assert backfill[-1][1] == finalized
    progress = [e for e in logs if e["event"] == "backfill_progress"]
    assert [e["block"] for e in progress] == [end for _, end, _ in backfill]
    assert progress[-1]["block"] == finalized
    async with open_indexer(driver.url, database_url, driver.target, FAST) as indexer:
        await verify_index(indexer, driver, fresh)


async def test_backfill_ranges_shrink_when_answers_are_large(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A range whose answer holds more logs than `target_logs` is followed by a narrower one
    (down to `min_range`); the result is still exactly the chain."""
    driver = Driver(anvil_factory(), random.Random(17))
    for _ in range(40):
        driver.act(6)  # busy blocks: a dozen logs each
    driver.mine(ANVIL_FINALITY + 1)
    finalized = driver.finalized()
    client = FaultyClient(driver.url)
    # Below the configuration's bounds (they hold operators to sane values): a tiny target.
    settings = IngestConfig.model_construct(
        recheck_delay=0.0, initial_range=32, target_logs=20, min_range=2
    )
    async with open_indexer(client, database_url, driver.target, settings) as indexer:
        await index_until_caught_up(indexer)
        backfill = [r for r in client.get_logs_calls if r[1] <= finalized]
        sizes = [b - a + 1 for a, b, _ in backfill]
        assert sizes[0] == 32 and backfill[0][2] > 20
        for (a, b, n), nxt in zip(backfill, sizes[1:], strict=False):
            if n > 20:
                assert nxt < b - a + 1 or nxt == 2, f"range {a}-{b} had {n} logs, next {nxt}"
        assert min(sizes) >= 2
        await verify_index(indexer, driver, fresh)


# ---------------------------------------------------------------------- nodes without finality


@pytest.mark.parametrize("mode", ["null", "error"])
async def test_finality_depth_fallback(
    mode: str, anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A node that answers the `finalized` tag with null (or refuses it) is taken to finalize
    at head - `finality_depth`: history below is backfilled, the rest followed, a reorg inside
    that window is rolled back and one below it is fatal."""
    driver = Driver(anvil_factory(), random.Random(23))
    busy_chain(driver, 12)
    driver.mine(5)
    busy_chain(driver, 6)
    client = FaultyClient(driver.url)
    client.finalized_mode = mode
    depth = 8
    settings = IngestConfig(recheck_delay=0.0, finality_depth=depth)
    async with open_indexer(client, database_url, driver.target, settings) as indexer:
        await index_until_caught_up(indexer)
        head = driver.head()
        async with indexer.pool.acquire() as conn:
            cursor = await indexer.store.cursor(conn, indexer.start_block)
        assert cursor.finalized_block == head - depth
        assert client.get_logs_calls[0][1] == head - depth  # one backfill range, then follow
        assert [(a, b) for a, b, _ in client.get_logs_calls[1:]] == [(head - depth + 1, head)]
        await verify_index(indexer, driver, fresh)

        driver.reorg(depth, n_txs=4)  # the whole window: allowed
        await verify_index(indexer, driver, fresh)
        async with indexer.pool.acquire() as conn:
            (row,) = await conn.fetch(
                "SELECT depth FROM reorgs WHERE chain_id = $1", driver.chain_id
            )
        assert row["depth"] == depth

        driver.reorg(depth + 1, n_txs=2)  # one block below the finalized block
        with pytest.raises(FatalReorg) as raised:
            await indexer.sync_once()
        assert raised.value.exit_code == 3
