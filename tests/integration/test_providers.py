"""Several RPC providers against real anvil nodes behind the test suite's chaos proxy
(`tests.support.rpc_proxy.RpcProxy`), with a real PostgreSQL: failover of reads, sends that
reach the node although a provider reset the connection, lag and chain id found by the
probes, logs a provider left out never stored, and a reorg that one provider alone shows never
rolled back."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog
from eth_account import Account

from keeper import metrics
from keeper.chain.rpc import ChainClient
from keeper.config import IngestConfig
from keeper.dev.anvil import DEV_CHAIN_ID, Anvil, dev_key, rpc
from keeper.ingest.checked_logs import BLOOM_FALSE_POSITIVES, LOGS_REJECTED, LogChecker
from keeper.ingest.events import Decoder
from keeper.ops.deploy import deploy_all
from tests.acceptance.test_keeper_e2e import build_world
from tests.support.chain import DEV_KEY0
from tests.support.dev_nodes import AnvilNode
from tests.support.ingest import (
    Driver,
    chain_log_keys,
    event_keys,
    index_until_caught_up,
    open_indexer,
)
from tests.support.rpc_proxy import RpcProxy

pytestmark = pytest.mark.anyio

FAST = IngestConfig(recheck_delay=0.0, poll_interval=0.01)
HTML_502 = "<html><body>502 Bad Gateway</body></html>"


@asynccontextmanager
async def two_providers(
    upstream: str, other: str | None = None, *, rpc_timeout: float = 30.0, max_lag_blocks: int = 5
) -> AsyncIterator[tuple[RpcProxy, RpcProxy, ChainClient]]:
    """Two proxies (in front of `upstream`, the second of `other` if given) and a client of
    both, the first one preferred."""
    with RpcProxy(upstream) as a, RpcProxy(other or upstream) as b:
        client = ChainClient(
            [a.url, b.url],
            attempts=4,
            max_backoff=0.05,
            timeout=rpc_timeout,
            max_lag_blocks=max_lag_blocks,
        )
        client.pool.expected_chain_id = DEV_CHAIN_ID
        try:
            yield a, b, client
        finally:
            await client.close()


FAULTS: dict[str, Callable[[RpcProxy], None]] = {
    "429-retry-after": lambda p: p.fail_next(None, 429, retry_after="1"),
    "503-retry-after": lambda p: p.fail_next(None, 503, body="down", retry_after="1"),
    "502-html": lambda p: p.fail_next(None, 502, body=HTML_502),
    "200-html": lambda p: p.fail_next(None, 200, body=HTML_502),
    "200-truncated": lambda p: p.fail_next(None, 200, truncate=True),
    "502-truncated": lambda p: p.fail_next(None, 502, truncate=True),
    "200-invalid-json": lambda p: p.fail_next(
        None, 200, body='{"jsonrpc":"2.0","id":1,"result":', content_type="application/json"
    ),
    "200-not-jsonrpc": lambda p: p.fail_next(
        None, 200, body='{"message":"Internal server error"}', content_type="application/json"
    ),
    "reset-before": lambda p: p.drop_next(None),
    "reset-after": lambda p: p.drop_next(None, after_forwarding=True),
    "slow": lambda p: p.delay_next(None, 3.0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_reads_move_to_the_healthy_provider(anvil: Anvil, fault: str) -> None:
    """Whatever the preferred provider does, reads (single calls and batches) are answered by
    the other one within the one retry layer, and the failing one is demoted."""
    if int(str(rpc(anvil.url, "eth_blockNumber")), 16) < 2:
        rpc(anvil.url, "anvil_mine", [hex(2)])
    async with two_providers(anvil.url, rpc_timeout=1.0) as (a, b, client):
        FAULTS[fault](a)
        head = await client.head()
        assert head.number == int(str(rpc(anvil.url, "eth_blockNumber")), 16)
        headers = await client.headers([0, 1])
        assert [h.number for h in headers if h] == [0, 1]
        assert await client.chain_id() == DEV_CHAIN_ID
        lines = {line["provider"]: line for line in client.snapshot()}
        assert lines[client.labels[1]]["selected"] is True
        assert lines[client.labels[0]]["healthy"] is False
        assert sum(lines[client.labels[0]]["errors"].values()) >= 1
        assert a.faults_served, "the fault never met a request"
        assert b.http_requests >= 3


async def test_a_rate_limited_provider_waits_out_its_retry_after(anvil: Anvil) -> None:
    """With one provider, a 429 with `Retry-After: 1` is retried after at least that long."""
    import time

    with RpcProxy(anvil.url) as a:
        client = ChainClient(a.url, attempts=3, max_backoff=0.01)
        a.fail_next(1, 429, body="slow down", retry_after="1", content_type="text/plain")
        started = time.monotonic()
        assert await client.chain_id() == DEV_CHAIN_ID
        assert time.monotonic() - started >= 1.0
        await client.close()


def _transfer(nonce: int) -> str:
    key = dev_key(9)
    signed = Account.sign_transaction(
        {
            "to": "0x" + "77" * 20,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "nonce": nonce,
            "chainId": DEV_CHAIN_ID,
        },
        key.reveal_hex(),
    )
    return "0x" + bytes(signed.raw_transaction).hex()


async def test_a_send_reaches_the_node_through_resets(anvil_factory: Callable[..., Anvil]) -> None:
    """A provider that resets the connection after the node took the transaction, and one that
    answers 503: the broadcast's merged answer says sent, and the node has it once."""
    node = anvil_factory()
    nonce = int(str(rpc(node.url, "eth_getTransactionCount", [dev_key(9).address, "latest"])), 16)
    raw = _transfer(nonce)
    async with two_providers(node.url) as (a, b, client):
        a.drop_next(None, after_forwarding=True, methods=["eth_sendRawTransaction"])
        b.fail_next(None, 503, body="down", methods=["eth_sendRawTransaction"])
        from keeper.tx.send import merged_answer
        from keeper.tx.send_errors import SendOutcome

        answers = await client.broadcast("eth_sendRawTransaction", [raw])
        outcome, error = merged_answer(answers)
        assert outcome is SendOutcome.TIMEOUT  # no provider said: it may have gone out
        assert error is not None and client.labels[0] in error  # it names the provider
        a.clear_faults()
        b.clear_faults()
        # Sent again, the same bytes: the node already has them (anvil automines: mined).
        outcome, _ = merged_answer(await client.broadcast("eth_sendRawTransaction", [raw]))
        assert outcome in (SendOutcome.ALREADY_KNOWN, SendOutcome.NONCE_TOO_LOW)
    rpc(node.url, "evm_mine")
    after = int(str(rpc(node.url, "eth_getTransactionCount", [dev_key(9).address, "latest"])), 16)
    assert after == nonce + 1


async def test_probes_demote_a_lagging_provider_and_exclude_another_chain(anvil: Anvil) -> None:
    rpc(anvil.url, "anvil_mine", [hex(20)])
    async with two_providers(anvil.url, max_lag_blocks=3) as (a, _, client):
        a.lag_head(10)
        await client.probe_once()
        lines = {line["provider"]: line for line in client.snapshot()}
        first, second = client.labels
        assert lines[first]["lag_blocks"] == 10 and lines[first]["healthy"] is False
        assert lines[second]["selected"] is True
        # The finalized block is one every healthy provider has finalized: the lagging one is
        # not healthy, so the healthy one's tag (anvil: head - 64, at least 0) decides.
        head = int(str(rpc(anvil.url, "eth_blockNumber")), 16)
        tag = rpc(anvil.url, "eth_getBlockByNumber", ["finalized", False])
        assert isinstance(tag, dict)
        assert client.cap_finalized(head - 2, 2) == min(int(tag["number"], 16), head - 2)
        a.clear_faults()
        await client.probe_once()
        assert client.pool.lag(client.pool.providers[0]) == 0
        a.clear_faults()
        a.report_chain_id(999)
        await client.probe_once()
        lines = {line["provider"]: line for line in client.snapshot()}
        assert "999" in str(lines[first]["excluded"])
        assert (
            metrics.REGISTRY.get_sample_value("keeper_rpc_provider_healthy", {"provider": first})
            == 0.0
        )
        a.clear_faults()
        await client.probe_once()
        lines = {line["provider"]: line for line in client.snapshot()}
        assert lines[first]["excluded"] is None and lines[first]["healthy"] is True


async def test_logs_one_provider_leaves_out_are_read_from_the_other(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """The preferred provider answers eth_getLogs without the logs of the newest blocks: the
    follow zone notices against the headers' blooms, takes the logs from the other provider,
    and the index holds exactly the contracts' logs."""
    driver = Driver(anvil_factory(), random.Random(16))
    for _ in range(3):
        driver.act(3, seconds=1)
    rejected = LOGS_REJECTED.labels(reason="missing_logs")._value.get()
    async with two_providers(driver.url) as (a, _, client):
        a.drop_logs(2)
        async with open_indexer(client, database_url, driver.target, FAST) as indexer:
            await index_until_caught_up(indexer)
            for _ in range(4):
                driver.act(3, seconds=1)
                await index_until_caught_up(indexer)
            async with indexer.pool.acquire() as conn:
                stored = await event_keys(conn, driver.chain_id)
    assert stored == chain_log_keys(driver, driver.target.start_block, driver.head())
    assert a.dropped_logs > 0
    assert LOGS_REJECTED.labels(reason="missing_logs")._value.get() > rejected


@pytest.mark.parametrize("receipts", [True, False], ids=["receipts", "no-receipts"])
async def test_one_provider_leaving_out_logs_never_gets_them_stored(
    anvil_factory: Callable[..., Anvil], database_url: str, receipts: bool
) -> None:
    """With one provider that keeps leaving out the newest blocks' logs, the index stops short
    of them (their receipts show the logs exist; a node without eth_getBlockReceipts saying
    the same twice is no proof either) and takes them once the provider answers whole."""
    driver = Driver(anvil_factory(), random.Random(17))
    for _ in range(3):
        driver.act(3, seconds=1)
    with RpcProxy(driver.url) as a:
        if not receipts:  # as Hardhat's node
            a.error_next(None, -32601, "Method not found", methods=["eth_getBlockReceipts"])
        client = ChainClient(a.url, attempts=2, max_backoff=0.01)
        async with open_indexer(client, database_url, driver.target, FAST) as indexer:
            await index_until_caught_up(indexer)
            a.drop_logs(2)
            driver.act(4, seconds=1)
            driver.act(4, seconds=1)
            for _ in range(5):
                await indexer.sync_once()
            async with indexer.pool.acquire() as conn:
                stored = await event_keys(conn, driver.chain_id)
                cursor = await indexer.store.cursor(conn, indexer.start_block)
            head = driver.head()
            assert cursor.indexed_block < head - 1  # it did not go past the doubtful blocks
            assert stored == chain_log_keys(driver, driver.target.start_block, cursor.indexed_block)
            a.drop_logs(None)
            await index_until_caught_up(indexer)
            async with indexer.pool.acquire() as conn:
                stored = await event_keys(conn, driver.chain_id)
    assert stored == chain_log_keys(driver, driver.target.start_block, driver.head())


async def test_no_provider_alone_makes_the_index_roll_back(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """The preferred provider switches to another chain (an anvil forked two blocks below the
    indexed head, with blocks of its own): a reorg by its account. While the other provider
    still serves the indexed chain, nothing is rolled back; once it shows the new chain too,
    the reorg is confirmed and handled, and the index follows the new chain."""
    driver = Driver(anvil_factory(), random.Random(18))
    for _ in range(4):
        driver.act(3, seconds=1)
    async with (
        two_providers(driver.url) as (a, b, client),
        open_indexer(client, database_url, driver.target, FAST) as indexer,
    ):
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            before = await indexer.store.cursor(conn, indexer.start_block)
        head = driver.head()
        fork = anvil_factory(
            extra_args=["--fork-url", driver.url, "--fork-block-number", str(head - 2)]
        )
        rpc(fork.url, "anvil_mine", [hex(4)])
        a.upstream = fork.url  # only the preferred provider shows the new chain
        reorgs = metrics.REGISTRY.get_sample_value("keeper_reorgs_total") or 0.0
        for _ in range(3):
            await indexer.sync_once()
        async with indexer.pool.acquire() as conn:
            after = await indexer.store.cursor(conn, indexer.start_block)
        assert (after.indexed_block, after.indexed_hash) == (
            before.indexed_block,
            before.indexed_hash,
        )
        assert (metrics.REGISTRY.get_sample_value("keeper_reorgs_total") or 0.0) == reorgs
        b.upstream = fork.url  # the other provider confirms it
        await index_until_caught_up(indexer)
        assert (metrics.REGISTRY.get_sample_value("keeper_reorgs_total") or 0.0) == reorgs + 1
        async with indexer.pool.acquire() as conn:
            final = await indexer.store.cursor(conn, indexer.start_block)
        tip = rpc(fork.url, "eth_getBlockByNumber", ["latest", False])
        assert isinstance(tip, dict)
        assert final.indexed_block == int(tip["number"], 16)
        assert final.indexed_hash == tip["hash"]


async def test_a_bloom_false_positive_is_settled_by_the_receipts(
    anvil_factory: Callable[..., Anvil],
) -> None:
    """A block of 1,500 logs has a dense bloom: it holds the escrow vault's address and a
    watched event signature although the vault logged nothing in it. The block's receipts
    show no vault log is missing, so the answer is taken, not asked for again and again."""
    node = anvil_factory()
    d = deploy_all(node.url, DEV_KEY0, notice_period=0)
    build_world(AnvilNode(node), d)
    addresses = [d.stream_manager, d.escrow_vault]
    decoder = Decoder(
        d.chain_id, {"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault}
    )
    client = ChainClient(node.url)
    try:
        head = (await client.head()).number
        headers = [h for h in await client.headers(list(range(1, head + 1))) if h]
        logs = await client.get_logs(addresses, 1, head)
        checker = LogChecker(
            client,
            addresses,
            [*decoder.typed, *decoder.raw],
            check_blooms=True,
            recheck_delay=0.0,
            log=structlog.get_logger(),
        )
        doubtful = checker.problems(headers, logs)
        assert [p.reason for p in doubtful] == ["missing_logs"]  # the bloom's false positive
        positives = BLOOM_FALSE_POSITIVES._value.get()
        taken = await checker.checked(headers, logs)
        assert taken is not None and taken[0] == headers and taken[1] == logs
        assert BLOOM_FALSE_POSITIVES._value.get() == positives + 1
    finally:
        await client.close()


def test_keeper_status_shows_each_provider(anvil: Anvil, tmp_path: Path, database_url: str) -> None:
    """`keeper status --config` probes each provider and prints a line for each: the one
    answering a 502 page is demoted with its error, the other healthy; no API key shows."""
    zero = "0x" + "11" * 20
    names = ("token", "stream_manager", "escrow_vault", "deployer", "oracle", "fee_recipient")
    deployment = {"chain_id": DEV_CHAIN_ID, "deployment_block": 1, "fee_bps": 250}
    deployment.update(dict.fromkeys(names, zero))  # type: ignore[arg-type]
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    with RpcProxy(anvil.url) as a, RpcProxy(anvil.url) as b:
        a.fail_next(None, 502, body=HTML_502)
        urls = [f"{a.url}/v2/S3CRETKEY1", f"{b.url}/v2/S3CRETKEY2"]
        config = tmp_path / "keeper.toml"
        config.write_text(
            f"[chain]\nrpc_urls = {json.dumps(urls)}\ndeployment_file = "
            f'"deployment.json"\nrpc_attempts = 1\n[database]\nurl = "{database_url}"\n'
        )
        shown = subprocess.run(
            [sys.executable, "-m", "keeper", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert shown.returncode == 0, shown.stderr
    lines = {
        line.split()[1] if line.startswith("rpc ") else line.split()[0]: line
        for line in shown.stdout.splitlines()
        if "127.0.0.1" in line and line.split()
    }
    assert "DEMOTED" in lines[a.url] and "HTTP 502" in lines[a.url], shown.stdout
    assert "healthy" in lines[b.url] or "selected" in lines[b.url], shown.stdout
    assert "S3CRETKEY" not in shown.stdout + shown.stderr
