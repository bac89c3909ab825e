"""`tests.support.dev_nodes`: both node kinds start the same dev chain and honour the `DevNode`
calls the end-to-end tests rely on."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from keeper.dev.anvil import DEV_CHAIN_ID, dev_key, rpc
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0
from tests.support.dev_nodes import DevNode, HardhatNode


def block(node: DevNode, tag: int | str) -> dict[str, Any]:
    header = rpc(
        node.url, "eth_getBlockByNumber", [hex(tag) if isinstance(tag, int) else tag, False]
    )
    assert isinstance(header, dict)
    return header


def balance(node: DevNode, address: str) -> int:
    return int(str(rpc(node.url, "eth_getBalance", [address, "latest"])), 16)


def send(node: DevNode, value: int) -> str:
    sender = dev_key(1).address
    return str(
        rpc(node.url, "eth_sendTransaction", [{"from": sender, "to": sender, "value": hex(value)}])
    )


def test_the_dev_chain_and_its_keys(node_factory: Callable[[], DevNode]) -> None:
    node = node_factory()
    assert int(str(rpc(node.url, "eth_chainId")), 16) == DEV_CHAIN_ID
    assert node.url.startswith("http://127.0.0.1:")
    for index in range(10):
        assert balance(node, dev_key(index).address) == 10_000 * 10**18, index
    # Automine, like anvil's default: a transaction is mined at once.
    before = node.head()
    tx_hash = send(node, 1)
    receipt = None
    deadline = time.monotonic() + 10
    while receipt is None and time.monotonic() < deadline:
        # anvil answers the send a moment before its automine has mined it
        receipt = rpc(node.url, "eth_getTransactionReceipt", [tx_hash])
        time.sleep(0.05)
    assert isinstance(receipt, dict) and int(receipt["blockNumber"], 16) == before + 1
    d = deploy_all(node.url, DEV_KEY0)
    code = rpc(node.url, "eth_getCode", [d.stream_manager, "latest"])
    assert isinstance(code, str) and len(code) > 2


def test_mining_snapshots_and_state(node_factory: Callable[[], DevNode]) -> None:
    node = node_factory()
    start = node.head()
    node.mine(3)
    assert node.head() == start + 3

    snap = node.snapshot()
    node.mine(2)
    node.revert(snap)
    assert node.head() == start + 3

    address = "0x000000000000000000000000000000000000bEEF"
    node.set_balance(address, 12345)
    assert balance(node, address) == 12345

    node.set_next_base_fee(7 * 10**9)
    node.mine()
    assert int(block(node, "latest")["baseFeePerGas"], 16) == 7 * 10**9

    clock = int(block(node, "latest")["timestamp"], 16)
    node.increase_time(3_600)
    node.mine()
    assert int(block(node, "latest")["timestamp"], 16) >= clock + 3_600

    node.set_automine(False)
    pending = send(node, 1)
    assert rpc(node.url, "eth_getTransactionReceipt", [pending]) is None
    node.set_interval_mining(1)
    deadline = time.monotonic() + 10
    while rpc(node.url, "eth_getTransactionReceipt", [pending]) is None:
        assert time.monotonic() < deadline, "interval mining mined nothing"
        time.sleep(0.1)
    node.set_interval_mining(0)


def test_a_reorg_replaces_the_blocks_after_the_fork_point(
    node_factory: Callable[[], DevNode],
) -> None:
    node = node_factory()
    node.mine(2)
    fork = node.fork_point()
    mined = send(node, 1)
    node.mine(1)
    old = [block(node, n)["hash"] for n in range(fork.block + 1, fork.block + 3)]
    assert node.reorg_to(fork) == 2
    assert node.head() == fork.block + 2
    new = [block(node, n)["hash"] for n in range(fork.block + 1, fork.block + 3)]
    assert all(a != b for a, b in zip(old, new, strict=True))
    assert block(node, fork.block + 1)["parentHash"] == block(node, fork.block)["hash"]
    assert rpc(node.url, "eth_getTransactionReceipt", [mined]) is None


@pytest.mark.parametrize("node_factory", ["hardhat"], indirect=True)
def test_stopping_hardhat_ends_its_process_group(node_factory: Callable[[], DevNode]) -> None:
    node = node_factory()
    assert isinstance(node, HardhatNode)
    workdir, group = node.workdir, node.process.pid
    node.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not workdir.exists()
