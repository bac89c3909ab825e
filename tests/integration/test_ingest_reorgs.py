"""Reorgs against a real anvil and a real PostgreSQL.

The property (DESIGN.md, "reorgs"): random sequences of contract activity, mined blocks,
`anvil_reorg` and `anvil_rollback` always leave the database equal to a fresh index of the
same chain, with projections equal to the contracts' own state and exactly the contracts'
logs stored. Sequences are drawn from seeded `random.Random`s, so a failure names its seed and
replays; the driver's `history` says what happened. They include reorgs while the index is
part-way to the head, reorgs between the indexer's header and log reads, restarts, and reorgs
of the whole unfinalized window; every run ends with a reorg below the finalized block, which
must stop the indexer (FatalReorg, exit code 3) and leave the database untouched.

Every test has its own anvil node, so no reorg disturbs another test.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

from keeper import db as keeper_db
from keeper import metrics
from keeper.config import IngestConfig
from keeper.dev.anvil import Anvil
from keeper.ingest.indexer import FatalReorg, Indexer
from keeper.ingest.store import Cursor
from tests.support.ingest import (
    ANVIL_FINALITY,
    Driver,
    FaultyClient,
    FreshDatabases,
    dump,
    event_keys,
    index_until_caught_up,
    make_indexer,
    open_indexer,
    reorg_rows,
    verify_index,
)

pytestmark = pytest.mark.anyio

FAST = IngestConfig(recheck_delay=0.0, poll_interval=0.01)


@pytest.fixture
def fresh(database_factory: Callable[..., str], template_database: str) -> FreshDatabases:
    """Where the reference (fresh) indexes are built."""
    return FreshDatabases(lambda: database_factory(template_database))


def reorgs_counted() -> float:
    """keeper_reorgs_total as the metrics endpoint would show it."""
    return metrics.REGISTRY.get_sample_value("keeper_reorgs_total") or 0.0


@dataclass(frozen=True)
class Expected:
    """The `reorgs` row the indexer must write when it next syncs."""

    ancestor: int
    old_head: int
    old_hash: str
    events_removed: int


@dataclass(frozen=True)
class Snapshot:
    """The indexed block, the node's hashes up to it, and the blocks of the stored events."""

    indexed: int
    hashes: dict[int, str]
    event_blocks: list[int]


class Run:
    """The chain, the indexer under test (with its own pool and client), and what a check
    must find. Open with `Run.open`, close with `close`."""

    def __init__(
        self, driver: Driver, indexer: Indexer, fresh: FreshDatabases, database_url: str
    ) -> None:
        self.driver = driver
        self.indexer = indexer
        self.fresh = fresh
        self.database_url = database_url
        self.rows_seen = 0
        self.max_finalized = -1  # highest finalized block the index has recorded
        self.reorgs_checked = 0

    @classmethod
    async def open(
        cls,
        driver: Driver,
        database_url: str,
        fresh: FreshDatabases,
        settings: IngestConfig = FAST,
    ) -> Run:
        """An indexer of `driver`'s contracts on `database_url`."""
        run = cls(driver, await _indexer(driver, database_url, settings), fresh, database_url)
        async with run.indexer.pool.acquire() as conn:
            run.rows_seen = len(await reorg_rows(conn, driver.chain_id))
        return run

    @property
    def client(self) -> FaultyClient:
        """The indexer's client."""
        assert isinstance(self.indexer.client, FaultyClient)
        return self.indexer.client

    async def close(self) -> None:
        """Close the indexer's pool and client."""
        await self.indexer.pool.close()
        await self.indexer.client.close()

    async def restart(self) -> None:
        """Replace the indexer by a new one on the same database (a process restart)."""
        settings = self.indexer.settings
        await self.close()
        self.indexer = await _indexer(self.driver, self.database_url, settings)

    async def cursor(self) -> Cursor:
        """The indexer's cursor row."""
        async with self.indexer.pool.acquire() as conn:
            return await self.indexer.store.cursor(conn, self.indexer.start_block)

    def depth_bound(self, *, finalized: int | None = None) -> int:
        """The deepest reorg that stays above every block the index saw finalized (and above
        the set-up blocks the driver needs)."""
        head = self.driver.head()
        floor = max(self.max_finalized, finalized or -1, self.driver.setup_block)
        return max(0, min(ANVIL_FINALITY, head - floor))

    async def snapshot(self) -> Snapshot:
        """What `expectation` compares a mutated chain against."""
        cursor = await self.cursor()
        async with self.indexer.pool.acquire() as conn:
            keys = await event_keys(conn, self.driver.chain_id)
        hashes = self.driver.block_hashes(self.driver.setup_block, cursor.indexed_block)
        return Snapshot(cursor.indexed_block, hashes, [k[0] for k in keys])

    def expectation(self, before: Snapshot) -> Expected | None:
        """The reorg the index must record for the chain's change since `before`: None if no
        indexed block changed, else its common ancestor and what it removes."""
        after = self.driver.block_hashes(self.driver.setup_block, before.indexed)
        changed = sorted(n for n in before.hashes if after.get(n) != before.hashes[n])
        if not changed:
            return None
        assert changed == list(range(changed[0], before.indexed + 1)), "not a suffix"
        ancestor = changed[0] - 1
        return Expected(
            ancestor=ancestor,
            old_head=before.indexed,
            old_hash=before.hashes[before.indexed],
            events_removed=sum(1 for b in before.event_blocks if b > ancestor),
        )

    async def predict(self, mutate: Callable[[], None]) -> Expected | None:
        """Run `mutate` (a reorg or rollback) and return `expectation` of it."""
        before = await self.snapshot()
        mutate()
        return self.expectation(before)

    async def reorg_rows(self) -> list[asyncpg.Record]:
        """The chain's `reorgs` rows."""
        async with self.indexer.pool.acquire() as conn:
            return await reorg_rows(conn, self.driver.chain_id)

    async def check(self, expected: Expected | None, *, exact: bool = True) -> None:
        """Catch up and verify the index (`verify_index`); with `exact`, the reorgs table
        gained exactly the row `expected` describes (or none); the metric counts every row."""
        counted = reorgs_counted()
        # anvil's `finalized` is head - 64, so it moves back after a rollback; the blocks the
        # index must keep are those above the highest finalized block it ever saw.
        floor = self.max_finalized if self.max_finalized >= 0 else None
        await verify_index(self.indexer, self.driver, self.fresh, finalized=floor)
        rows = await self.reorg_rows()
        new, self.rows_seen = rows[self.rows_seen :], len(rows)
        assert reorgs_counted() - counted == len(new), "keeper_reorgs_total != reorgs rows"
        cursor = await self.cursor()
        self.max_finalized = max(self.max_finalized, cursor.finalized_block or -1)
        if not exact:
            return
        if expected is None:
            assert not new, f"unexpected reorg rows: {[dict(r) for r in new]}"
            return
        assert len(new) == 1, f"expected one reorg row, got {[dict(r) for r in new]}"
        (row,) = new
        assert row["ancestor_block"] == expected.ancestor
        assert row["depth"] == expected.old_head - expected.ancestor
        assert row["old_head_block"] == expected.old_head
        assert "0x" + bytes(row["old_head_hash"]).hex() == expected.old_hash
        assert row["events_removed"] == expected.events_removed
        new_head = row["new_head_block"]
        assert new_head is not None and new_head >= expected.ancestor
        assert "0x" + bytes(row["new_head_hash"]).hex() == self.driver.block(new_head)["hash"]
        self.reorgs_checked += 1


async def _indexer(driver: Driver, database_url: str, settings: IngestConfig) -> Indexer:
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=4)
    return make_indexer(FaultyClient(driver.url), pool, driver.target, settings)


# ---------------------------------------------------------------------- the steps


Step = Callable[[Run, random.Random], Awaitable[None]]


async def step_activity(run: Run, rng: random.Random) -> None:
    """A few blocks of random contract activity."""
    for _ in range(rng.randint(1, 3)):
        run.driver.act()
    await run.check(None)


async def step_quiet(run: Run, rng: random.Random) -> None:
    """Empty blocks, time passing."""
    run.driver.mine(rng.randint(1, 4), seconds=rng.choice([0, 1, 600]))
    await run.check(None)


async def _after_mutation(run: Run, rng: random.Random) -> None:
    """Sometimes the chain moves on before the indexer looks again."""
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 2)):
            run.driver.act()


async def step_reorg(run: Run, rng: random.Random) -> None:
    """anvil_reorg of random depth (sometimes the deepest allowed), with or without new
    transactions in the replacing blocks."""
    bound = run.depth_bound()
    if bound < 1:
        return await step_activity(run, rng)
    depth = bound if rng.random() < 0.2 else rng.randint(1, bound)
    n_txs = rng.choice([0, 1, 3, 6])
    fork = rng.random() < 0.8  # else the new branch may share blocks with the old one
    expected = await run.predict(lambda: run.driver.reorg(depth, n_txs, fork=fork))
    await _after_mutation(run, rng)
    await run.check(expected)


async def step_rollback(run: Run, rng: random.Random) -> None:
    """anvil_rollback of random depth; the chain may then grow again."""
    bound = run.depth_bound()
    if bound < 1:
        return await step_activity(run, rng)
    depth = rng.randint(1, bound)
    expected = await run.predict(lambda: run.driver.rollback(depth))
    await _after_mutation(run, rng)
    await run.check(expected)


async def step_midway(run: Run, rng: random.Random) -> None:
    """The index is part-way to the head (a small follow step) when the chain reorganises:
    the reorg may replace only blocks not indexed yet, or indexed ones too."""
    blocks = rng.randint(2, 6)
    for _ in range(blocks):
        run.driver.act()
    # Another process on the same database, taking one block per poll.
    one_by_one = run.indexer.settings.model_copy(update={"max_follow_step": 1})
    slow = make_indexer(run.indexer.client, run.indexer.pool, run.driver.target, one_by_one)
    for _ in range(rng.randint(1, blocks - 1)):
        await slow.sync_once()
    cursor = await run.cursor()
    assert cursor.indexed_block < run.driver.head(), "the index should be part-way"
    bound = run.depth_bound(finalized=cursor.finalized_block)
    depth = rng.randint(1, bound)
    if rng.random() < 0.3:
        expected = await run.predict(lambda: run.driver.rollback(depth))
    else:
        expected = await run.predict(lambda: run.driver.reorg(depth, rng.choice([0, 2, 5])))
    await _after_mutation(run, rng)
    await run.check(expected)


async def step_race(run: Run, rng: random.Random) -> None:
    """The chain reorganises after the indexer read the new headers and before it reads
    their logs."""
    for _ in range(rng.randint(1, 4)):
        run.driver.act()
    fired: list[int] = []

    def reorg_now(first: int, last: int) -> None:
        if fired:
            return
        floor = max(run.driver.head() - ANVIL_FINALITY, 0)
        bound = run.depth_bound(finalized=floor)
        if bound >= 1:
            depth = rng.randint(1, bound)
            run.driver.reorg(depth, rng.choice([0, 3]))
            fired.append(depth)

    run.client.before_get_logs = reorg_now
    try:
        await run.indexer.sync_once()
    finally:
        run.client.before_get_logs = None
    await run.check(None, exact=False)


async def step_restart(run: Run, rng: random.Random) -> None:
    """A new process on the same database, sometimes after the chain reorganised while it
    was down."""
    await run.restart()
    if rng.random() < 0.5 and run.depth_bound() >= 1:
        depth = rng.randint(1, run.depth_bound())
        expected = await run.predict(lambda: run.driver.reorg(depth, 2))
        await _after_mutation(run, rng)
        await run.check(expected)
    else:
        await run.check(None)


async def step_finality(run: Run, rng: random.Random) -> None:
    """The chain grows past the finality depth (the activity goes to backfill territory for
    a fresh index), then reorganises exactly the whole unfinalized window."""
    for _ in range(rng.randint(1, 3)):
        run.driver.act()
    run.driver.mine(ANVIL_FINALITY + rng.randint(1, 12))
    await run.check(None)
    cursor = await run.cursor()
    head = run.driver.head()
    assert cursor.finalized_block == head - ANVIL_FINALITY
    assert cursor.finalized_block >= run.max_finalized
    window = head - cursor.finalized_block
    expected = await run.predict(lambda: run.driver.reorg(window, rng.choice([0, 4])))
    await run.check(expected)
    assert expected is not None and expected.ancestor == cursor.finalized_block


STEPS_PER_RUN = 20
STEPS: list[tuple[Step, int]] = [
    (step_activity, 6),
    (step_quiet, 2),
    (step_reorg, 6),
    (step_rollback, 3),
    (step_midway, 4),
    (step_race, 2),
    (step_restart, 1),
]


async def fatal_reorg_leaves_the_database_alone(
    run: Run, rng: random.Random, *, extra: int | None = None
) -> None:
    """A reorg reaching below the finalized block the index recorded: FatalReorg (exit code
    3) at every attempt, also after a restart, and nothing in the database changes (but what
    the cursor records of the node's last answers)."""
    cursor = await run.cursor()
    assert cursor.finalized_block is not None
    head = run.driver.head()
    extra = rng.randrange(3) if extra is None else extra
    below = head - cursor.finalized_block + 1 + extra  # the common ancestor < finalized
    assert head - below >= run.driver.setup_block, "the chain is too short for this check"
    async with run.indexer.pool.acquire() as conn:
        before = await dump(conn, run.driver.chain_id, blocks=True, reorgs=True, observed=False)
    counted = reorgs_counted()
    old_hashes = run.driver.block_hashes(head - below + 1, head)
    run.driver.reorg(below, rng.choice([0, 3]), fork=True)
    new_hashes = run.driver.block_hashes(head - below + 1, head)
    assert all(old_hashes[n] != new_hashes[n] for n in old_hashes), "the reorg changed nothing"
    for attempt in range(3):
        if attempt == 2:
            await run.restart()
        with pytest.raises(FatalReorg) as raised:
            await run.indexer.sync_once()
        assert raised.value.exit_code == 3
        async with run.indexer.pool.acquire() as conn:
            after = await dump(conn, run.driver.chain_id, blocks=True, reorgs=True, observed=False)
        assert after == before, "a fatal reorg changed the database"
    assert reorgs_counted() == counted


# ---------------------------------------------------------------------- the property


@pytest.mark.parametrize("seed", [101, 202, 303, 404, 505])
async def test_random_histories_end_equal_to_a_fresh_index(
    seed: int,
    anvil_factory: Callable[..., Anvil],
    database_url: str,
    fresh: FreshDatabases,
) -> None:
    """After every step of a random history of activity, reorgs and rollbacks, the index
    equals a fresh index of the chain, its projections equal the contracts' state, its events
    are exactly the contracts' logs, and each reorg is recorded with its depth and hashes."""
    rng = random.Random(seed)
    driver = Driver(anvil_factory(), rng)
    settings = FAST.model_copy(
        update={
            "max_follow_step": rng.choice([1, 2, 5, 256]),
            "initial_range": rng.choice([1, 3, 2_000]),
        }
    )
    run = await Run.open(driver, database_url, fresh, settings)
    try:
        for _ in range(3):
            driver.act()
        await run.check(None)
        steps, weights = zip(*STEPS, strict=True)
        done: list[str] = []
        for i in range(STEPS_PER_RUN):
            if i == STEPS_PER_RUN // 2:
                await step_finality(run, rng)
                done.append(step_finality.__name__)
            step = rng.choices(steps, weights)[0]
            await step(run, rng)
            done.append(step.__name__)
        # The end: a reorg below the finalized block (on a chain long enough to have one).
        run.driver.mine(ANVIL_FINALITY + rng.randint(2, 8))
        await run.check(None)
        await fatal_reorg_leaves_the_database_alone(run, rng)
        print(f"seed {seed}: {Counter(done)}, {run.reorgs_checked} reorgs checked")
        assert run.reorgs_checked >= 3, "too few reorgs reached the index"
    except BaseException:
        print(f"seed {seed}, settings {settings}; history:")
        print("\n".join(driver.history[-80:]))
        raise
    finally:
        await run.close()


# ---------------------------------------------------------------------- single scenarios


@asynccontextmanager
async def running(
    driver: Driver, database_url: str, fresh: FreshDatabases, settings: IngestConfig = FAST
) -> AsyncIterator[Run]:
    """`Run.open` ... `close`."""
    run = await Run.open(driver, database_url, fresh, settings)
    try:
        yield run
    finally:
        await run.close()


async def test_a_reorg_is_recorded_and_counted(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A reorg of 3 indexed blocks: one `reorgs` row (depth, ancestor, old and new head hash,
    events removed), keeper_reorgs_total + 1, the operator views agree, and the index equals a
    fresh one."""
    driver = Driver(anvil_factory(), random.Random(7))
    for _ in range(6):
        driver.act(4)
    async with running(driver, database_url, fresh) as run:
        await run.check(None)
        expected = await run.predict(lambda: driver.reorg(3, 5))
        assert expected is not None and expected.events_removed > 0
        await run.check(expected)
        async with run.indexer.pool.acquire() as conn:
            view = await conn.fetchrow(
                "SELECT * FROM keeper.reorgs WHERE chain_id = $1", driver.chain_id
            )
            status = await conn.fetchrow(
                "SELECT reorgs_total, last_reorg_depth FROM keeper.indexer_status"
                " WHERE chain_id = $1",
                driver.chain_id,
            )
        assert view is not None and view["depth"] == 3
        assert view["old_head_hash"] == expected.old_hash
        assert status is not None and tuple(status) == (1, 3)


async def test_a_reorg_that_removes_credit(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """A reorg drops a block whose settlement credited a payee that was credited before:
    the rollback subtracts exactly that credit (and the fee recipient's share)."""
    driver = Driver(anvil_factory(), random.Random(6))
    payer, payee, m = driver.payers[0], driver.payees[2], driver.manager
    driver.send([driver.tx("open", m, "openStream", [payee, 10, 10**6], payer)])
    driver.mine()
    for _ in range(3):
        driver.send([driver.tx("settle", m, "settleStreams", [[1]], driver.bystander)])
        driver.mine(seconds=100)
    async with running(driver, database_url, fresh) as run:
        await run.check(None)
        expected = await run.predict(lambda: driver.reorg(1))
        assert expected is not None and expected.events_removed == 2  # settled + fee
        await run.check(expected)
        driver.send([driver.tx("settle", m, "settleStreams", [[1]], driver.bystander)])
        driver.mine(seconds=7)
        await run.check(None)


async def test_a_reorg_while_the_indexer_was_down(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """The chain reorganises and grows while no indexer runs; the next one finds the fork
    from what the database holds and rolls back exactly to the common ancestor."""
    driver = Driver(anvil_factory(), random.Random(8))
    for _ in range(8):
        driver.act()
    async with open_indexer(driver.url, database_url, driver.target, FAST) as first:
        await index_until_caught_up(first)
    async with running(driver, database_url, fresh) as run:
        expected = await run.predict(lambda: driver.reorg(5, 4))
        for _ in range(3):
            driver.act()
        await run.check(expected)


async def test_reorg_of_the_whole_unfinalized_window(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """With more than 64 blocks, a reorg of exactly the unfinalized window (down to the
    finalized block itself, which stays) is an ordinary reorg."""
    rng = random.Random(9)
    driver = Driver(anvil_factory(), rng)
    async with running(driver, database_url, fresh) as run:
        await step_finality(run, rng)
        (row,) = await run.reorg_rows()
        assert row["depth"] == ANVIL_FINALITY


@pytest.mark.parametrize("extra", [0, 1, 5])
async def test_a_reorg_below_the_finalized_block_is_fatal(
    extra: int, anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """One block deeper than the unfinalized window (the finalized block itself replaced) or
    more: FatalReorg with exit code 3 at every attempt and after a restart, and nothing in
    the database changes."""
    rng = random.Random(10 + extra)
    driver = Driver(anvil_factory(), rng)
    for _ in range(5):
        driver.act()
    driver.mine(ANVIL_FINALITY + 10)
    for _ in range(5):
        driver.act()
    async with running(driver, database_url, fresh) as run:
        await run.check(None)
        await fatal_reorg_leaves_the_database_alone(run, rng, extra=extra)


@pytest.mark.parametrize(("depth", "n_txs"), [(1, 0), (2, 6), (3, 3), (5, 0), (6, 4)])
async def test_reorg_between_the_header_and_log_reads(
    depth: int,
    n_txs: int,
    anvil_factory: Callable[..., Anvil],
    database_url: str,
    fresh: FreshDatabases,
) -> None:
    """The chain reorganises after the indexer fetched three new headers and before it
    fetched their logs (which now carry other block hashes): nothing of the orphaned blocks
    is written. A reorg of only those new blocks is then no reorg of the index at all; a
    deeper one is rolled back from the common ancestor as usual."""
    driver = Driver(anvil_factory(), random.Random(12 + depth))
    for _ in range(4):
        driver.act(4)
    async with running(driver, database_url, fresh) as run:
        await run.check(None)
        for _ in range(3):
            driver.act(4)
        before = await run.snapshot()
        async with run.indexer.pool.acquire() as conn:
            stored = await dump(conn, driver.chain_id, blocks=True, observed=False)
        fired: list[int] = []

        def reorg_now(first: int, last: int) -> None:
            if not fired:
                fired.append(first)
                driver.reorg(depth, n_txs, fork="log")

        run.client.before_get_logs = reorg_now
        assert await run.indexer.sync_once() == 0
        run.client.before_get_logs = None
        assert fired == [before.indexed + 1], "the hook fires on the follow's log read"
        async with run.indexer.pool.acquire() as conn:
            after = await dump(conn, driver.chain_id, blocks=True, observed=False)
        assert after == stored, "blocks whose logs changed under the indexer were written"
        await run.check(run.expectation(before))


@pytest.mark.parametrize("lagging_round_trips", [1, 2])
async def test_a_lagging_node_is_not_a_reorg(
    lagging_round_trips: int,
    anvil_factory: Callable[..., Anvil],
    database_url: str,
    fresh: FreshDatabases,
) -> None:
    """A node (e.g. one behind a load balancer) that briefly answers from behind the indexed
    block, then catches up, is re-checked and not believed: nothing is rolled back, no reorg
    is recorded or counted, and indexing goes on."""
    driver = Driver(anvil_factory(), random.Random(14))
    for _ in range(8):
        driver.act()
    async with running(driver, database_url, fresh) as run:
        await run.check(None)
        async with run.indexer.pool.acquire() as conn:
            before = await dump(conn, driver.chain_id, blocks=True, reorgs=True, observed=False)
        counted = reorgs_counted()
        run.client.lag(driver.head() - 2, lagging_round_trips)
        await run.indexer.sync_once()
        async with run.indexer.pool.acquire() as conn:
            after = await dump(conn, driver.chain_id, blocks=True, reorgs=True, observed=False)
        assert after == before, "a lagging answer changed the index"
        assert reorgs_counted() == counted
        driver.act()
        await run.check(None)
