"""`keeper run` killed with SIGKILL at random moments, and stopped with SIGTERM.

Real processes throughout: anvil, PostgreSQL and the `keeper` console script. The chain carries
a few thousand events over a few thousand blocks; the keeper is configured with tiny eth_getLogs
ranges (5 to 20 blocks) and a short follow step, so backfill and follow each take many
transactions, and the kills land inside them. After the last restart has caught up, the whole
database must equal (a) what the node's eth_getLogs returns and (b) an uninterrupted run into a
fresh database: every event table and projection row for row, the cursor, the reorg history
(empty), and the unfinalized window of `blocks`.

Progress is read from `ingest_cursor.indexed_block`; sleeps only pace the polling. Kill moments
come from a seeded generator: the seed is printed and can be replayed with
KEEPER_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keeper.dev.anvil import Anvil, rpc, start_anvil
from tests.support.activity import (
    DevChain,
    deploy_chain,
    make_activity,
    node_logs,
)
from tests.support.daemon import (
    Db,
    Keeper,
    wait_until,
)


def _seed() -> int:
    seed = int(os.environ.get("KEEPER_CRASH_SEED", str(time.time_ns() % 2**32)))
    print(f"KEEPER_CRASH_SEED={seed}")
    return seed


# --------------------------------------------------------------------------- database access


# --------------------------------------------------------------------------- the keeper process


def write_config(path: Path, chain: DevChain, database_url: str) -> Path:
    deployment_file = path / "deployment.json"
    chain.deployment.write(deployment_file)
    config = path / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_url = "{chain.url}"
deployment_file = "{deployment_file}"
rpc_timeout = 5.0
rpc_attempts = 3

[database]
url = "{database_url}"
pool_min = 1
pool_max = 4

[ingest]
poll_interval = 0.05
initial_range = 5
max_range = 20
target_logs = 100
max_follow_step = 3
progress_interval = 0.5
recheck_delay = 0.0

[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


def caught_up(db: Db, chain: DevChain) -> Callable[[], bool]:
    return lambda: db.cursor() >= chain.head()


def past(db: Db, block: int) -> Callable[[], bool]:
    return lambda: db.cursor() >= block


def run_to_head(chain: DevChain, database_url: str, path: Path) -> Keeper:
    """An uninterrupted `keeper run` until it has indexed the head, then SIGTERM."""
    path.mkdir()
    keeper = Keeper(write_config(path, chain, database_url), path / "keeper.log")
    db = Db(database_url)
    try:
        keeper.start()
        wait_until("the reference run", caught_up(db, chain), keeper, timeout=120)
        status, _ = keeper.terminate()
        assert status == 0, keeper.tail()
    finally:
        keeper.stop()
        db.close()
    return keeper


def assert_equal_databases(crashed: Db, reference: Db, chain: DevChain) -> None:
    head = chain.head()
    mine = crashed.logs()
    assert len(mine) == len(set(mine)), "a log was indexed twice"
    assert mine == node_logs(chain, head), "the index differs from the node's eth_getLogs"
    a, b = crashed.snapshot(), reference.snapshot()
    assert a.keys() == b.keys()
    assert sum(len(a[t]) for t in a) > 2_000
    for table in sorted(a):
        assert a[table] == b[table], f"{table} differs from the uninterrupted run"


# --------------------------------------------------------------------------- fixtures


def busy_chain(node: Anvil, seed: int, *, rounds: int, streams: int) -> DevChain:
    """Thousands of events over hundreds of blocks, then 80 empty blocks.

    (anvil's time to mine a block grows with the chain's length, so blocks are what makes a
    workload slow to build: the gaps between rounds are kept short.)
    """
    chain = deploy_chain(node)
    make_activity(chain, rounds, random.Random(seed), streams=streams, claims=True, max_gap=40)
    chain.skip(80)
    return chain


@pytest.fixture(scope="module")
def static_chain() -> Iterator[DevChain]:
    node = start_anvil()
    try:
        yield busy_chain(node, 3, rounds=8, streams=60)
    finally:
        node.stop()


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_kill_9_during_backfill_and_follow(
    anvil_factory: Callable[..., Anvil],
    database_factory: Callable[..., str],
    template_database: str,
    tmp_path: Path,
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    chain = busy_chain(anvil_factory(), seed, rounds=12, streams=100)
    assert len(chain.logs()) >= 2_000
    crashed_url = database_factory(template_database)
    keeper = Keeper(write_config(tmp_path, chain, crashed_url), tmp_path / "keeper.log")
    db = Db(crashed_url)
    kills: list[tuple[str, int]] = []
    try:
        start = chain.deployment.deployment_block
        final_at_start = chain.head() - 64  # anvil's `finalized` tag
        # 1. Killed while starting (imports, migrations, pool, cursor): a random moment before
        # its first range is written.
        keeper.start()
        deadline = time.monotonic() + rng.uniform(0.3, 3.0)
        while time.monotonic() < deadline and db.cursor() < start:
            time.sleep(0.003)
        keeper.kill()
        kills.append(("start", db.cursor()))

        # 2. Killed during backfill, at random blocks, a random few milliseconds after the
        # cursor passed them (so inside the next range's fetch, decode or transaction).
        points = sorted(rng.sample(range(start + 20, final_at_start - 60), 3))
        for point in points:
            keeper.start()
            wait_until(f"backfill past {point}", past(db, point), keeper)
            time.sleep(rng.uniform(0, 0.02))
            keeper.kill()
            kills.append(("backfill", db.cursor()))

        # 3. Killed while following a chain that keeps moving.
        keeper.start()
        wait_until("the end of backfill", past(db, final_at_start), keeper)
        for i in range(3):
            make_activity(chain, 1, rng, streams=12, max_gap=5)
            chain.skip(rng.randint(1, 5))
            target = rng.randint(db.cursor() + 1, chain.head())
            wait_until(f"follow past {target}", past(db, target), keeper)
            time.sleep(rng.uniform(0, 0.03))
            keeper.kill()
            kills.append((f"follow-{i}", db.cursor()))
            keeper.start()

        # 4. The last run catches up and stops cleanly.
        wait_until("the final catch-up", caught_up(db, chain), keeper, timeout=120)
        status, _ = keeper.terminate()
        assert status == 0, keeper.tail()
    finally:
        keeper.stop()

    print("kills (phase, cursor):", kills)
    backfill_kills = [block for what, block in kills if what == "backfill"]
    assert sum(1 for b in backfill_kills if start <= b) >= 2, kills
    assert all(b < final_at_start for b in backfill_kills), kills

    reference_url = database_factory(template_database)
    run_to_head(chain, reference_url, tmp_path / "reference")
    reference = Db(reference_url)
    try:
        assert_equal_databases(db, reference, chain)
    finally:
        reference.close()
        db.close()


@pytest.mark.parametrize("when", ["backfilling", "following"])
def test_sigterm_stops_within_seconds(
    static_chain: DevChain, database_url: str, tmp_path: Path, when: str
) -> None:
    """SIGTERM exits 0 within a few seconds and leaves the database at a range boundary."""
    keeper = Keeper(write_config(tmp_path, static_chain, database_url), tmp_path / "keeper.log")
    db = Db(database_url)
    try:
        keeper.start()
        start = static_chain.deployment.deployment_block
        if when == "backfilling":
            wait_until("backfill under way", past(db, start + 50), keeper)
        else:
            wait_until("the head", caught_up(db, static_chain), keeper)
            time.sleep(0.2)  # idle polls
        status, took = keeper.terminate(within=5.0)
        assert status == 0, keeper.tail()
        assert took < 5.0
        assert '"keeper_stopped"' in keeper.tail(5)
        stopped_at = db.cursor()
        if when == "backfilling":
            assert stopped_at < static_chain.head(), "SIGTERM came too late to test anything"
        # Everything up to the cursor, nothing after it.
        assert db.logs() == node_logs(static_chain, stopped_at)
    finally:
        keeper.stop()
        db.close()


def test_a_reorg_below_finality_stops_with_exit_status_3(
    anvil_factory: Callable[..., Anvil], database_url: str, tmp_path: Path
) -> None:
    """The documented contract of `keeper run`: exit 3 (not restarted by systemd) rather than
    index a chain that rewrote its finalized history."""
    chain = deploy_chain(anvil_factory())
    make_activity(chain, 2, random.Random(5), streams=4, max_gap=3)
    last_tx_block = chain.head()
    chain.skip(70)
    keeper = Keeper(write_config(tmp_path, chain, database_url), tmp_path / "keeper.log")
    db = Db(database_url)
    try:
        keeper.start()
        wait_until("the head", caught_up(db, chain), keeper)
        assert db.finalized() > last_tx_block - 1
        # Replace the last 75 blocks (back past the last transactions): the new chain differs
        # from block `last_tx_block` on, which the node already called final.
        rpc(chain.url, "anvil_reorg", [chain.head() - last_tx_block + 5, []])
        assert keeper.proc is not None
        status = keeper.proc.wait(timeout=30)
        assert status == 3, keeper.tail()
        assert '"fatal_reorg"' in keeper.tail()
    finally:
        keeper.stop()
        db.close()
