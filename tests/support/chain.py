"""Contracts deployed for a test, with the well-known development key."""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import DEV_MNEMONIC, rpc
from keeper.ops.deploy import DEFAULT_FEE_BPS, Deployer

# anvil's account 0 for DEV_MNEMONIC; a public, well-known development key.
DEV_KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
assert DEV_MNEMONIC  # the key above belongs to this mnemonic


def deploy_contracts(
    url: str,
    key: str = DEV_KEY0,
    *,
    oracle: str | None = None,
    fee_recipient: str | None = None,
    fee_bps: int = DEFAULT_FEE_BPS,
    notice_period: int = 0,
) -> Deployment:
    """Deploy TestToken, StreamManager (with `notice_period`) and EscrowVault for the tests.

    The tests choose the notice period themselves (0: closes and price decreases at once),
    so they do not depend on the operator tool's default. The deployer is admin and pauser;
    `oracle` (default: the deployer) gets ORACLE_ROLE.
    """
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    account = Account.from_key(key)
    deployer = Deployer(w3, account)
    admin = str(account.address)
    oracle = to_checksum_address(oracle or admin)
    fee_recipient = to_checksum_address(fee_recipient or admin)
    first_block = int(w3.eth.block_number) + 1
    token, _ = deployer.deploy("TestToken", "Test USD", "tUSD", admin)
    manager, _ = deployer.deploy(
        "StreamManager", token.address, admin, fee_recipient, fee_bps, notice_period
    )
    vault, _ = deployer.deploy("EscrowVault", token.address, admin)
    deployer.call(manager.functions.grantRole(manager.functions.ORACLE_ROLE().call(), oracle))
    return Deployment(
        chain_id=int(w3.eth.chain_id),
        deployment_block=first_block,
        token=str(token.address),
        stream_manager=str(manager.address),
        escrow_vault=str(vault.address),
        deployer=admin,
        oracle=oracle,
        fee_recipient=fee_recipient,
        fee_bps=fee_bps,
        notice_period=notice_period,
    )


def batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """JSON-RPC calls in batches of 500, answers in call order; raise on any error."""
    out: list[Any] = []
    for start in range(0, len(calls), 500):
        body = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
            for i, (m, p) in enumerate(calls[start : start + 500])
        ]
        req = urllib.request.Request(  # noqa: S310 - our own local node
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
            replies = sorted(json.loads(resp.read()), key=lambda r: r["id"])
        for reply in replies:
            if "error" in reply:
                raise AssertionError(f"JSON-RPC error: {reply['error']}")
            out.append(reply["result"])
    return out


def tx(sender: str, to: str, signature: str, *args: int | bytes) -> tuple[str, list[Any]]:
    return (
        "eth_sendTransaction",
        [{"from": sender, "to": to, "data": calldata(signature, list(args)), "gas": hex(300_000)}],
    )


def send_in_order(url: str, sender: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    """Send `calls` (all from `sender`) with explicit consecutive nonces: a batch of
    eth_sendTransaction is not guaranteed to take nonces in order."""
    first = int(str(rpc(url, "eth_getTransactionCount", [sender, "pending"])), 16)
    for i, (_, params) in enumerate(calls):
        params[0]["nonce"] = hex(first + i)
    return batch(url, calls)


def send_and_mine(
    url: str, sender: str, calls: list[tuple[str, list[Any]]], timeout: float = 30.0
) -> list[Any]:
    """`send_in_order`, then wait for every receipt and require each to have succeeded (automine
    takes a batch of sends one block at a time, after answering them)."""
    hashes = send_in_order(url, sender, calls)
    deadline = time.monotonic() + timeout
    while True:
        receipts = batch(url, [("eth_getTransactionReceipt", [h]) for h in hashes])
        if all(r is not None for r in receipts) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(r is not None and r["status"] == "0x1" for r in receipts), receipts
    return receipts


@functools.cache
def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


def calldata(signature: str, args: Sequence[int | bytes]) -> str:
    """ABI call data of `signature` (e.g. "getStream(uint256)") with static arguments only:
    uint256 values or raw 20-byte addresses. Much faster than web3's encoder in bulk."""
    words = "".join(
        (a.rjust(32, b"\0") if isinstance(a, bytes) else a.to_bytes(32, "big")).hex() for a in args
    )
    return _selector(signature) + words
