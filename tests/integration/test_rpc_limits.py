"""Ingest through a provider-like RPC: eth_getLogs limits, faults and outages.

A real anvil carries a few hundred events of every kind over several hundred blocks; the
indexer reads it through `RpcProxy`, which refuses eth_getLogs calls the way hosted providers
do (too many blocks, too many results, with or without a hint) or fails requests (HTTP 502/429,
dropped connections, delays, outages). Every test ends with the database holding exactly the
logs the node returns to a direct eth_getLogs: nothing lost, nothing twice.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.chain.rpc import ChainClient, RpcUnavailable
from keeper.config import IngestConfig
from keeper.db import Conn
from keeper.dev.anvil import Anvil, start_anvil
from keeper.ingest.indexer import Indexer
from tests.support.activity import (
    DevChain,
    deploy_chain,
    indexed_logs,
    make_activity,
    node_logs,
    write_config,
)
from tests.support.rpc_proxy import GetLogsCall, LimitStyle, RpcProxy

pytestmark = pytest.mark.anyio

_SCRIPT = Path(sys.executable).with_name("keeper")
KEEPER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keeper"]

ROUNDS = 10
# Tuning for the tests: a first range wide enough to hit every limit below, follow steps narrow
# enough to stay under them (see test_follow_adapts_to_a_block_limit for why that matters).
SETTINGS = IngestConfig(
    poll_interval=0.1, initial_range=400, max_range=4_000, max_follow_step=8, recheck_delay=0
)


# --------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    """One chain for the module: the activity, then 80 empty blocks (all of it final)."""
    node = start_anvil()
    try:
        dev = deploy_chain(node)
        make_activity(dev, ROUNDS, random.Random(7))
        dev.skip(80)
        yield dev
    finally:
        node.stop()


# --------------------------------------------------------------------------- the database


async def assert_same_as_node(conn: Conn, chain: DevChain) -> None:
    """The database holds exactly the node's logs up to its cursor, which is at the head."""
    cursor = await conn.fetchrow("SELECT indexed_block, backfill_done FROM ingest_cursor")
    assert cursor is not None
    head = chain.head()
    assert cursor["indexed_block"] == head
    assert cursor["backfill_done"]
    mine = await indexed_logs(conn)
    theirs = node_logs(chain, head)
    assert len(mine) == len(set(mine)), "a log was indexed twice"
    assert mine == theirs


@dataclass
class Harness:
    """An indexer reading `chain` through `proxy` into a fresh database."""

    chain: DevChain
    proxy: RpcProxy
    client: ChainClient
    pool: asyncpg.Pool
    indexer: Indexer

    async def cursor(self) -> int:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT indexed_block FROM ingest_cursor")
        return -1 if value is None else int(value)

    async def sync_to_head(self, max_polls: int = 200) -> None:
        """Poll (as the daemon does, without its sleeps) until the cursor is at the head."""
        head = self.chain.head()
        for _ in range(max_polls):
            await self.indexer.sync_once()
            if await self.cursor() >= head:
                return
        raise AssertionError(f"not at head {head} after {max_polls} polls: {await self.cursor()}")

    async def check(self) -> None:
        async with self.pool.acquire() as conn:
            await assert_same_as_node(conn, self.chain)


HarnessFactory = Callable[..., Any]


@pytest.fixture
async def harness(chain: DevChain, database_url: str) -> AsyncIterator[HarnessFactory]:
    """`await harness(proxy, settings=, attempts=, rpc_timeout=, path=)` -> Harness."""
    made: list[Harness] = []

    async def factory(
        proxy: RpcProxy,
        *,
        settings: IngestConfig = SETTINGS,
        attempts: int = 5,
        rpc_timeout: float = 10.0,
        max_backoff: float = 0.05,
        path: str = "",
    ) -> Harness:
        client = ChainClient(
            proxy.url + path, attempts=attempts, timeout=rpc_timeout, max_backoff=max_backoff
        )
        pool = await keeper_db.create_pool(database_url, min_size=1, max_size=4)
        indexer = Indexer(
            client,
            pool,
            chain_id=chain.deployment.chain_id,
            addresses=chain.addresses,
            start_block=chain.deployment.deployment_block,
            settings=settings,
        )
        h = Harness(chain, proxy, client, pool, indexer)
        made.append(h)
        return h

    try:
        yield factory
    finally:
        for h in made:
            await h.client.close()
            await h.pool.close()


def max_logs_per_block(chain: DevChain) -> int:
    per_block: dict[str, int] = {}
    for lg in chain.logs():
        per_block[lg["blockNumber"]] = per_block.get(lg["blockNumber"], 0) + 1
    return max(per_block.values())


# --------------------------------------------------------------------------- limits


def test_the_workload_is_big_enough(chain: DevChain) -> None:
    logs = chain.logs()
    blocks = {lg["blockNumber"] for lg in logs}
    assert len(logs) >= 300
    assert chain.head() - chain.deployment.deployment_block >= 400
    assert len(blocks) >= 2 * ROUNDS
    # A single block must stay under the result caps below, or no range could be answered.
    assert max_logs_per_block(chain) < 40


def _after_each_refusal(calls: list[GetLogsCall]) -> list[tuple[GetLogsCall, GetLogsCall]]:
    return [(a, b) for a, b in itertools.pairwise(calls) if a.refused]


@pytest.mark.parametrize(
    ("style", "max_blocks", "max_results", "retry"),
    [
        pytest.param("geth", 50, None, "stated", id="geth-max-blocks"),
        pytest.param("quicknode", 40, None, "stated", id="quicknode-max-blocks"),
        pytest.param("infura", 30, None, "stated", id="infura-max-blocks"),
        pytest.param("alchemy", 35, None, "suggested", id="alchemy-free-tier"),
        pytest.param("infura", None, 60, "suggested", id="infura-max-results"),
        pytest.param("alchemy", 25, 60, "suggested", id="alchemy-blocks-or-results"),
        pytest.param("nohint", 45, None, "halved", id="no-hint-max-blocks"),
        pytest.param("nohint", None, 60, "halved", id="no-hint-max-results"),
        pytest.param("geth", None, 60, "halved", id="geth-max-results"),
    ],
)
async def test_backfill_adapts_to_provider_limits(
    chain: DevChain,
    harness: HarnessFactory,
    style: LimitStyle,
    max_blocks: int | None,
    max_results: int | None,
    retry: str,
) -> None:
    with RpcProxy(chain.url, max_blocks=max_blocks, max_results=max_results, style=style) as p:
        h: Harness = await harness(p)
        await h.sync_to_head()
        await h.check()
        calls = list(p.getlogs)

    refused = [c for c in calls if c.refused]
    served = [c for c in calls if not c.refused]
    assert refused, "the provider's limit was never hit: the test proves nothing"
    assert len(served) >= 3
    for call in served:
        if max_blocks is not None and max_results is None:
            assert call.span <= max_blocks
        if max_results is not None and max_blocks is None:
            assert call.logs is not None and call.logs <= max_results
    for before, after in _after_each_refusal(calls):
        # The retry starts where the refused call started, narrower, and as the provider said:
        # the suggested range as it is, the stated maximum, or half without a hint.
        assert after.from_block == before.from_block
        assert after.span < before.span
        if retry == "suggested":
            assert before.suggested_to is not None
            assert after.to_block == before.suggested_to
            assert not after.refused, "the suggested range was refused"
        elif retry == "stated":
            assert after.span == max_blocks
        else:
            assert after.span == before.span // 2


async def test_follow_adapts_to_a_block_limit(chain: DevChain, harness: HarnessFactory) -> None:
    """The unfinalized window (64 blocks on anvil) is read through the same limits.

    Providers' free tiers allow as little as 10 blocks per eth_getLogs (Alchemy, QuickNode 5):
    a keeper with the default `max_follow_step` (256) must still follow the head.
    """
    settings = IngestConfig(poll_interval=0.1, initial_range=400, recheck_delay=0)
    assert settings.max_follow_step > 20
    with RpcProxy(chain.url, max_blocks=20, style="geth") as p:
        h: Harness = await harness(p, settings=settings)
        await h.sync_to_head()
        await h.check()


async def test_claims_in_their_own_range(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """A range holding a payee's `Claimed` but not the credits it claims is indexed too.

    That is every claim once ranges are narrower than the chain's history (a provider's limit,
    or following the head block by block); payee_ledger must then equal the contract's
    `credited()` for every account.
    """
    dev = deploy_chain(anvil_factory())
    make_activity(dev, 3, random.Random(11), streams=6, claims=True)
    dev.skip(80)
    payees = [*dev.accounts[6:9], dev.deployment.deployer]
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=2)
    client = ChainClient(dev.url)
    try:
        indexer = Indexer(
            client,
            pool,
            chain_id=dev.deployment.chain_id,
            addresses=dev.addresses,
            start_block=dev.deployment.deployment_block,
            settings=IngestConfig(initial_range=20, max_range=20, recheck_delay=0),
        )
        for _ in range(20):
            await indexer.sync_once()
        async with pool.acquire() as conn:
            await assert_same_as_node(conn, dev)
            ledger = {
                "0x" + bytes(r["account"]).hex(): int(r["credited"])
                for r in await conn.fetch("SELECT account, credited FROM payee_ledger")
            }
    finally:
        await client.close()
        await pool.close()
    for account in payees:
        on_chain = int(dev.manager.functions.credited(account).call())
        assert ledger.get(account.lower(), 0) == on_chain, account


# --------------------------------------------------------------------------- faults


async def test_transient_faults_are_retried(chain: DevChain, harness: HarnessFactory) -> None:
    with RpcProxy(chain.url, max_blocks=60, style="geth") as p:
        # Up to seven of these faults can hit one request in a row: give it room to retry.
        h: Harness = await harness(p, rpc_timeout=0.5, attempts=8)
        p.fail_next(2, 502)
        p.fail_next(2, 429, methods=["eth_getLogs"])
        p.drop_next(2)
        p.delay_next(1, 1.0)  # longer than the client's timeout
        p.fail_next(1, 503, methods=["eth_getBlockByNumber"])
        p.drop_next(1, methods=["eth_getLogs"])
        await h.sync_to_head()
        await h.check()
        assert p.pending_faults() == 0
        assert p.faults_served == {"status": 5, "drop": 3, "delay": 1}
        assert p.batches > 0  # the indexer's batched header reads went through too


async def test_faults_in_the_middle_of_backfill(chain: DevChain, harness: HarnessFactory) -> None:
    """Faults spread over the whole backfill (one request in three fails), not just its start."""
    with RpcProxy(chain.url, max_blocks=40, style="geth") as p:
        h: Harness = await harness(p)
        done = anyio.Event()

        async def sprinkle() -> None:
            kinds = [
                lambda: p.fail_next(1, 502),
                lambda: p.drop_next(1),
                lambda: p.fail_next(1, 429),
            ]
            i = 0
            while not done.is_set():
                if p.pending_faults() == 0 and p.http_requests % 3 == 0:
                    kinds[i % len(kinds)]()
                    i += 1
                await anyio.sleep(0.002)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sprinkle)
            await h.sync_to_head()
            done.set()
        await h.check()
        assert sum(p.faults_served.values()) >= 5


@pytest.mark.parametrize(
    ("fault", "methods"),
    [
        pytest.param("502", None, id="http-502"),
        pytest.param("drop", None, id="connection-dropped"),
        pytest.param("429", None, id="rate-limited"),
        pytest.param("502", ["eth_getLogs"], id="getlogs-502-during-backfill"),
    ],
)
async def test_an_outage_longer_than_the_retries_raises_rpc_unavailable(
    chain: DevChain, harness: HarnessFactory, fault: str, methods: list[str] | None
) -> None:
    with RpcProxy(chain.url) as p:
        h: Harness = await harness(p, attempts=3)
        if fault == "drop":
            p.drop_next(None, methods=methods)
        else:
            p.fail_next(None, int(fault), methods=methods)
        with pytest.raises(RpcUnavailable) as raised:
            await h.indexer.sync_once()
        assert "after 3 attempts" in str(raised.value)
        assert await h.cursor() < chain.head()
        # The outage ends: the next polls catch up from the cursor.
        p.clear_faults()
        await h.sync_to_head()
        await h.check()


async def test_rpc_errors_do_not_show_the_api_key(chain: DevChain, harness: HarnessFactory) -> None:
    """Hosted RPC URLs carry their API key in the path; the errors the daemon logs must not."""
    secret = "k3yThatMustNotLeak"
    with RpcProxy(chain.url) as p:
        h: Harness = await harness(p, attempts=2, path=f"/v2/{secret}")
        p.fail_next(None, 429)
        with pytest.raises(RpcUnavailable) as raised:
            await h.indexer.sync_once()
        assert secret not in str(raised.value)


def _is_rpc_unavailable(exc: BaseException) -> bool:
    """RpcUnavailable, alone or wrapped by task groups (see getlogs-502-during-backfill)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_rpc_unavailable(e) for e in exc.exceptions)
    return isinstance(exc, RpcUnavailable)


async def test_an_outage_in_the_middle_of_backfill_loses_nothing(
    chain: DevChain, harness: HarnessFactory
) -> None:
    """Backfill stops half-way; once the RPC is back it resumes from the cursor."""
    with RpcProxy(chain.url, max_blocks=30, style="geth") as p:
        h: Harness = await harness(p, attempts=2)
        start = chain.deployment.deployment_block

        async def cut() -> None:
            # The database has no event to wait on: poll it.
            while await h.cursor() < start + 100:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            p.fail_next(None, 502, methods=["eth_getLogs"])

        # Whether sync_once raises it bare or wrapped is the other test's business.
        with pytest.raises((RpcUnavailable, BaseExceptionGroup)) as raised:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cut)
                await h.sync_to_head()
        assert _is_rpc_unavailable(raised.value), raised.value
        stopped_at = await h.cursor()
        assert start + 100 <= stopped_at < chain.head()
        p.clear_faults()
        await h.sync_to_head()
        await h.check()


# --------------------------------------------------------------------------- the daemon


def _events(log_file: Path) -> list[dict[str, Any]]:
    out = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def failures(log_file: Path) -> int:
    return sum(e.get("event") == "sync_failed" for e in _events(log_file))


def _wait_for(
    what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log_file: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-25:])
    if proc.poll() is not None:
        raise AssertionError(f"keeper exited ({proc.returncode}) waiting for {what}:\n{tail}")
    raise AssertionError(f"timed out waiting for {what}:\n{tail}")


async def _cursor(database_url: str) -> int:
    conn = await keeper_db.connect(database_url)
    try:
        value = await conn.fetchval("SELECT indexed_block FROM ingest_cursor")
    except asyncpg.UndefinedTableError:
        value = None
    finally:
        await conn.close()
    return -1 if value is None else int(value)


def cursor_of(database_url: str) -> int:
    return anyio.run(_cursor, database_url)


@pytest.mark.parametrize(
    ("methods", "new_blocks"),
    [
        pytest.param(None, 5, id="whole-rpc-down-while-following"),
        pytest.param(["eth_getLogs"], 100, id="getlogs-down-during-backfill"),
    ],
)
def test_keeper_run_waits_out_an_rpc_outage(
    chain: DevChain,
    database_url: str,
    tmp_path: Path,
    methods: list[str] | None,
    new_blocks: int,
) -> None:
    """`keeper run` logs `sync_failed` while the RPC is down, keeps running, then catches up."""
    log_file = tmp_path / "keeper.log"
    with RpcProxy(chain.url) as p, log_file.open("wb") as log:
        config = write_config(tmp_path, chain, p.url, database_url)
        proc = subprocess.Popen(
            [*KEEPER, "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            head = chain.head()
            _wait_for("the first catch-up", lambda: cursor_of(database_url) >= head, proc, log_file)
            p.fail_next(None, 502, methods=methods)
            chain.skip(new_blocks)
            # Two failed polls: with the getLogs outage, the second one is a backfill.
            _wait_for("two sync_failed", lambda: failures(log_file) >= 2, proc, log_file)
            assert cursor_of(database_url) < chain.head()
            p.clear_faults()
            head = chain.head()
            _wait_for("the catch-up", lambda: cursor_of(database_url) >= head, proc, log_file)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = _events(log_file)
    failed = [e for e in events if e.get("event") == "sync_failed"]
    assert failed and all("after 2 attempts" in e["error"] for e in failed)
    assert events[-1]["event"] == "keeper_stopped"
