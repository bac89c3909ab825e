"""`keeper verify` against anvil and PostgreSQL: a faithful index verifies (exit 0), and each
corrupted projection value is named by kind, id and field (exit 1). The check is pinned to the
indexed block, so activity after it changes nothing, and a reorganised-away indexed block is
reported rather than compared with another block's state. A node that refuses EIP-1898 block
hashes in eth_call is read by block number, and a reorg during those reads is reported."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from keeper import db as keeper_db
from keeper.dev.anvil import Anvil, rpc, start_anvil
from tests.support.activity import DevChain, deploy_chain, make_activity, write_config
from tests.support.daemon import keeper
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.rpc_proxy import RpcProxy


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    node = start_anvil()
    try:
        dev = deploy_chain(node)
        make_activity(dev, 5, random.Random(5), max_gap=10)
        yield dev
    finally:
        node.stop()


async def index(chain: DevChain, database_url: str) -> int:
    """Index the chain up to its head; return the indexed block."""
    d = chain.deployment
    target = Target(chain_id=d.chain_id, addresses=chain.addresses, start_block=d.deployment_block)
    async with open_indexer(chain.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)
    return chain.head()


async def execute(url: str, query: str, *args: Any) -> Any:
    conn = await keeper_db.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def verify(config: Path, *args: str) -> Any:
    return keeper("verify", "--config", str(config), *args)


@pytest.mark.anyio
async def test_a_faithful_index_verifies_and_each_corruption_is_named(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    block = await index(chain, database_url)
    config = write_config(tmp_path, chain, chain.url, database_url)
    ok = verify(config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"chain 31337 at block {block} (0x" in ok.stdout
    assert "the database matches the contracts" in ok.stdout
    report = json.loads(verify(config, "--json").stdout)
    assert report["ok"] and report["streams"] == 18 and report["escrows"] >= 5
    assert report["accounts"] >= 7

    sid = 4
    balance = await execute(
        database_url,
        "UPDATE streams SET balance = balance + 1 WHERE stream_id = $1 RETURNING balance",
        sid,
    )
    bad = verify(config)
    assert bad.returncode == 1
    assert f"stream {sid} balance: database {balance}, chain {balance - 1}" in bad.stdout
    assert "1 difference" in bad.stdout

    # More kinds at once: an escrow's status, a ledger entry, a vault balance, a lost stream.
    await execute(database_url, "UPDATE escrows SET status = 'open' WHERE escrow_id = 1")
    account = await execute(
        database_url,
        "UPDATE payee_ledger SET credited = credited + 5 "
        "WHERE account = (SELECT account FROM payee_ledger WHERE credited > 0 "
        "ORDER BY account LIMIT 1) "
        "RETURNING account",
    )
    await execute(database_url, "DELETE FROM streams WHERE stream_id = 9")
    report = json.loads(verify(config, "--json").stdout)
    assert not report["ok"]
    named = {(d["kind"], d["key"], d["field"]) for d in report["differences"]}
    assert named == {
        ("stream", str(sid), "balance"),
        ("escrow", "1", "status"),
        ("credited", "0x" + bytes(account).hex(), "credited"),
        ("stream", "9", "exists"),
    }


@pytest.mark.anyio
async def test_verify_reads_the_contracts_at_the_indexed_block(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    block = await index(chain, database_url)
    config = write_config(tmp_path, chain, chain.url, database_url)
    # The chain moves on after the indexed block: money moves, a stream closes.
    admin = chain.deployment.deployer
    payer = chain.manager.functions.getStream(3).call()[0]
    chain.block(
        (admin, chain.manager, "settleStreams", [list(range(1, 19))]),
        (payer, chain.manager, "closeStream", [3]),
    )
    assert chain.head() > block
    result = verify(config)
    assert result.returncode == 0, result.stdout
    assert f"at block {block} " in result.stdout
    pinned = verify(config, "--block", str(block))
    assert pinned.returncode == 0
    other = verify(config, "--block", str(block + 1))
    assert other.returncode == 1
    assert f"--block {block + 1}: the database holds the state at its indexed block {block}" in (
        other.stderr
    )
    assert f"pass --block {block}" in other.stderr


@pytest.mark.anyio
async def test_an_indexed_block_reorganised_away_is_reported(
    anvil_factory: Callable[..., Anvil], database_url: str, tmp_path: Path
) -> None:
    dev = deploy_chain(anvil_factory())
    make_activity(dev, 1, random.Random(1), max_gap=2)
    block = await index(dev, database_url)
    indexed_hash = await execute(database_url, "SELECT indexed_hash FROM ingest_cursor")
    rpc(dev.url, "anvil_reorg", [2, []])
    assert dev.head() == block
    config = write_config(tmp_path, dev, dev.url, database_url)
    result = verify(config)
    assert result.returncode == 1
    assert f"the indexed block {block} (0x{bytes(indexed_hash).hex()}) is not on the" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def _at_block_hash(params: list[Any]) -> bool:
    """An eth_call naming its block by hash (EIP-1898)."""
    return len(params) > 1 and isinstance(params[1], dict) and "blockHash" in params[1]


def refuse_block_hash(proxy: RpcProxy) -> None:
    """Answer every eth_call at `{"blockHash": …}` with an error, as Ganache does."""
    proxy.error_next(None, -32602, "Invalid block tag", methods=["eth_call"], params=_at_block_hash)


@pytest.mark.anyio
async def test_a_node_without_eip1898_is_read_by_block_number(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    block = await index(chain, database_url)
    with RpcProxy(chain.url) as proxy:
        refuse_block_hash(proxy)
        config = write_config(tmp_path, chain, proxy.url, database_url)
        ok = verify(config)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"chain 31337 at block {block} (0x" in ok.stdout
        assert "the database matches the contracts" in ok.stdout
        assert "verify_pinned_by_number" in ok.stderr
        assert proxy.errors_served["eth_call"] >= 1
        report = json.loads(verify(config, "--json").stdout)
        assert report["ok"] and report["pinned_by"] == "number" and report["streams"] == 18

        # Differences are still found, read at the indexed block's number.
        balance = await execute(
            database_url,
            "UPDATE streams SET balance = balance + 1 WHERE stream_id = 2 RETURNING balance",
        )
        bad = verify(config)
        assert bad.returncode == 1
        assert f"stream 2 balance: database {balance}, chain {balance - 1}" in bad.stdout
    direct = json.loads(
        verify(write_config(tmp_path, chain, chain.url, database_url), "--json").stdout
    )
    assert direct["pinned_by"] == "hash"


@pytest.mark.anyio
async def test_a_reorg_while_reading_by_block_number_is_reported(
    anvil_factory: Callable[..., Anvil], database_url: str, tmp_path: Path
) -> None:
    dev = deploy_chain(anvil_factory())
    make_activity(dev, 1, random.Random(1), max_gap=2)
    block = await index(dev, database_url)
    stored = await execute(database_url, "SELECT indexed_hash FROM ingest_cursor")
    indexed_hash = "0x" + bytes(stored).hex()
    with RpcProxy(dev.url) as proxy:
        refuse_block_hash(proxy)
        # verify's first read at the block's number waits until the chain has been reorganised.
        first_read = "0x" + keccak(text="nextStreamId()")[:4].hex()
        held = proxy.hold(
            "eth_call", params=lambda p: p[1:] == [hex(block)] and p[0]["data"] == first_read
        )
        config = write_config(tmp_path, dev, proxy.url, database_url)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(verify, config)
            assert held.wait(60), "verify never read by block number"
            rpc(dev.url, "anvil_reorg", [2, []])
            assert dev.head() == block
            held.release()
            result = running.result(120)
    assert result.returncode == 1, result.stdout
    new_hash = str(rpc(dev.url, "eth_getBlockByNumber", [hex(block), False])["hash"])  # type: ignore[index]
    assert new_hash != indexed_hash
    assert (
        f"block {block} changed while the contracts were read (was {indexed_hash}, now "
        f"{new_hash})" in " ".join(result.stderr.split())
    )
    assert "nothing was compared" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
