"""`keeper.ingest.logcheck` and `keeper.chain.bloom` on real chains: anvil and Hardhat's node.

Each node mines the project's contracts and their events (one block holding logs of the token,
the stream manager and the escrow vault together); its headers' logsBloom must equal the bloom
`Bloom.from_logs` computes of all the block's logs, and the checks must accept its real
`eth_getLogs` answer and flag the incomplete, mixed and forged ones a provider could give.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from keeper.chain.bloom import Bloom
from keeper.chain.deployment import Deployment
from keeper.chain.rpc import BlockHeader, ChainClient
from keeper.ingest.events import build_catalog
from keeper.ingest.logcheck import LogProblem, check_block_logs
from tests.support.chain import batch, deploy_contracts, send_in_order, tx
from tests.support.dev_nodes import DevNode

pytestmark = pytest.mark.anyio

PAYEES = [(0x7100 + i).to_bytes(20, "big") for i in range(3)]
FORGED = "0x00000000000000000000000000000000000bad00"


def emit_events(node: DevNode, d: Deployment) -> int:
    """Fund the deployer, then mine one block with two streams, a deposit and an escrow:
    logs of all three contracts in one block. Returns that block's number."""
    admin = d.deployer
    # Automine off from the first send: Hardhat's node refuses a sender's queued nonces while
    # automining, and a batch of sends may reach it out of order.
    node.set_automine(False)
    try:
        funding = send_in_order(
            node.url,
            admin,
            [
                tx(admin, d.token, "mint(address,uint256)", bytes.fromhex(admin[2:]), 10**24),
                tx(admin, d.token, "approve(address,uint256)", _raw(d.stream_manager), 2**256 - 1),
                tx(admin, d.token, "approve(address,uint256)", _raw(d.escrow_vault), 2**256 - 1),
            ],
        )
        node.mine()
        assert all(r["status"] == "0x1" for r in _receipts(node.url, funding))
        m, v = d.stream_manager, d.escrow_vault
        hashes = send_in_order(
            node.url,
            admin,
            [
                tx(admin, m, "openStream(address,uint256,uint256)", PAYEES[0], 5, 10**18),
                tx(admin, m, "openStream(address,uint256,uint256)", PAYEES[1], 7, 10**18),
                tx(admin, v, "deposit(uint256)", 10**18),
                tx(admin, v, "createEscrow(address,uint256,uint256)", PAYEES[2], 10**17, 0),
            ],
        )
        node.mine()
    finally:
        node.set_automine(True)
    receipts = _receipts(node.url, hashes)
    assert all(r["status"] == "0x1" for r in receipts), receipts
    blocks = {int(r["blockNumber"], 16) for r in receipts}
    assert len(blocks) == 1, blocks
    node.mine()  # and an empty block after it
    return blocks.pop()


def _raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def _receipts(url: str, hashes: list[Any]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        receipts = batch(url, [("eth_getTransactionReceipt", [h]) for h in hashes])
        if all(r is not None for r in receipts):
            return receipts
        assert time.monotonic() < deadline, "transactions not mined"
        time.sleep(0.1)


def _topics0() -> set[str]:
    typed, raw = build_catalog()
    return set(typed) | set(raw)


def _problems(
    headers: list[BlockHeader], logs: list[dict[str, Any]], d: Deployment
) -> list[LogProblem]:
    return check_block_logs(headers, logs, [d.stream_manager, d.escrow_vault], _topics0())


async def test_real_answers_pass_and_bad_ones_are_flagged(
    node_factory: Callable[[], DevNode],
) -> None:
    node = node_factory()
    d = deploy_contracts(node.url)
    mixed = emit_events(node, d)
    first, last = d.deployment_block, node.head()
    client = ChainClient(node.url)
    try:
        fetched = await client.headers(list(range(first, last + 1)))
        headers = [h for h in fetched if h is not None]
        assert len(headers) == last - first + 1
        watched = [d.stream_manager, d.escrow_vault]
        logs = await client.get_logs(watched, first, last)
        everything = await client.request(
            "eth_getLogs", [{"fromBlock": hex(first), "toBlock": hex(last)}]
        )
    finally:
        await client.close()

    # The node's bloom of every block is the one computed from all its logs.
    by_block: dict[int, list[dict[str, Any]]] = {h.number: [] for h in headers}
    for log in everything:
        by_block[int(log["blockNumber"], 16)].append(log)
    for header in headers:
        assert header.logs_bloom is not None
        assert Bloom.from_hex(header.logs_bloom) == Bloom.from_logs(by_block[header.number]), (
            header.number
        )
        assert Bloom.from_logs(by_block[header.number]).hex() == header.logs_bloom.lower()
    contracts = {log["address"].lower() for log in by_block[mixed]}
    assert contracts == {d.token.lower(), d.stream_manager.lower(), d.escrow_vault.lower()}
    assert Bloom.from_hex(headers[-1].logs_bloom or "").empty  # the empty block after it

    # The real answer passes (the token's logs are in the blooms but not asked for).
    assert _problems(headers, logs, d) == []

    # Nothing of the mixed block: both watched contracts are missing.
    without = [log for log in logs if int(log["blockNumber"], 16) != mixed]
    problems = _problems(headers, without, d)
    assert [(p.block, p.reason) for p in problems] == [(mixed, "missing_logs")] * 2
    assert all(a.lower() in p.detail for a, p in zip(watched, problems, strict=True))

    # Only the vault's logs of the mixed block dropped: the vault is missing.
    vault = d.escrow_vault.lower()
    partial = [
        log
        for log in logs
        if not (int(log["blockNumber"], 16) == mixed and log["address"].lower() == vault)
    ]
    problems = _problems(headers, partial, d)
    assert [(p.block, p.reason) for p in problems] == [(mixed, "missing_logs")]
    assert vault in problems[0].detail

    # Without blooms nothing can be missing, but hashes are still checked.
    bare = [dataclasses.replace(h, logs_bloom=None) for h in headers]
    assert _problems(bare, without, d) == []

    # A log of the mixed block from another branch (one of the two streams opened there).
    index = next(
        i
        for i, log in enumerate(logs)
        if int(log["blockNumber"], 16) == mixed and log["address"].lower() == watched[0].lower()
    )
    tampered = [dict(log) for log in logs]
    tampered[index]["blockHash"] = "0x" + "ab" * 32
    for hs in (headers, bare):
        problems = _problems(hs, tampered, d)
        assert [(p.block, p.reason) for p in problems] == [(mixed, "block_hash")]

    # A log the block cannot hold: an address nothing in it logged.
    forged = dict(logs[index], address=FORGED)
    mixed_header = next(h for h in headers if h.number == mixed)
    assert bytes.fromhex(FORGED[2:]) not in Bloom.from_hex(mixed_header.logs_bloom or "")
    problems = _problems(headers, [*logs, forged], d)
    assert [(p.block, p.reason) for p in problems] == [(mixed, "not_in_bloom")]
    assert FORGED in problems[0].detail

    # A log of a block the headers do not cover.
    beyond = dict(logs[index], blockNumber=hex(last + 1))
    problems = _problems(headers, [*logs, beyond], d)
    assert [(p.block, p.reason) for p in problems] == [(last + 1, "outside_range")]
