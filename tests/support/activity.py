"""A dev chain with the contracts deployed and random activity on it (streams, settlements,
usage, escrows), block by block: the workload of the indexer, backfill, verify and crash tests."""

from __future__ import annotations

import json
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from eth_abi.abi import encode as abi_encode
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from keeper.chain.deployment import Deployment
from keeper.db import Conn
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import contract, deploy_all
from keeper.plan.batches import pack_usage

MAX_GAP = 90  # empty blocks between rounds: 1..MAX_GAP
GAS = hex(3_000_000)
_FUNCTIONS: dict[tuple[str, str], tuple[str, list[str]]] = {}


@dataclass
class DevChain:
    """anvil with the contracts deployed, automine off: each `block()` mines one block."""

    node: Anvil
    deployment: Deployment
    token: Contract
    manager: Contract
    vault: Contract
    accounts: list[str]

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def addresses(self) -> dict[str, str]:
        return {
            "StreamManager": self.deployment.stream_manager,
            "EscrowVault": self.deployment.escrow_vault,
        }

    def block(self, *txs: tuple[str, Contract, str, list[Any]]) -> None:
        """Mine one block holding `txs` (sender, contract, function, args); all must succeed."""
        hashes = _batch(
            self.url,
            [
                (
                    "eth_sendTransaction",
                    [{"from": s, "to": c.address, "data": encode_call(c, fn, a), "gas": GAS}],
                )
                for s, c, fn, a in txs
            ],
        )
        rpc(self.url, "evm_mine")
        receipts = _batch(self.url, [("eth_getTransactionReceipt", [h]) for h in hashes])
        failed = [(tx[2], r["status"]) for tx, r in zip(txs, receipts, strict=True)]
        assert all(status == "0x1" for _, status in failed), failed

    def skip(self, blocks: int) -> None:
        """Mine `blocks` empty blocks."""
        rpc(self.url, "anvil_mine", [hex(blocks)])

    def wait(self, seconds: int) -> None:
        rpc(self.url, "evm_increaseTime", [seconds])

    def head(self) -> int:
        return int(str(rpc(self.url, "eth_blockNumber")), 16)

    def logs(self, to_block: int | None = None) -> list[dict[str, Any]]:
        """Every log of the keeper's contracts, straight from the node."""
        end = self.head() if to_block is None else to_block
        result = rpc(
            self.url,
            "eth_getLogs",
            [
                {
                    "address": list(self.addresses.values()),
                    "fromBlock": hex(self.deployment.deployment_block),
                    "toBlock": hex(end),
                }
            ],
            timeout=60,
        )
        assert isinstance(result, list)
        return result


def deploy_chain(node: Anvil) -> DevChain:
    """Deploy the contracts on `node` and switch to mining blocks by hand.

    Without a notice period: the activity's payer closes (and the checks of `keeper verify`
    built on them) expect a closed stream at once.
    """
    deployment = deploy_all(node.url, dev_key(0).reveal_hex(), notice_period=0)
    w3 = Web3(Web3.HTTPProvider(node.url))
    accounts = [str(Web3.to_checksum_address(a)) for a in w3.eth.accounts]
    rpc(node.url, "evm_setAutomine", [False])
    return DevChain(
        node=node,
        deployment=deployment,
        token=contract(w3, "TestToken", deployment.token),
        manager=contract(w3, "StreamManager", deployment.stream_manager),
        vault=contract(w3, "EscrowVault", deployment.escrow_vault),
        accounts=accounts,
    )


def make_activity(
    chain: DevChain,
    rounds: int,
    rng: random.Random,
    *,
    streams: int = 18,
    claims: bool = True,
    max_gap: int = MAX_GAP,
) -> None:
    """Streams, settlements, usage, top-ups, rate changes and escrows over many blocks.

    Every event kind of both contracts except pausing and close requests (the chain has no
    notice period) appears (`Claimed` only with `claims`: see test_claims_in_their_own_range);
    no block holds more than about `streams + 3` logs.
    """
    admin = chain.deployment.deployer  # also the oracle and the fee recipient
    payers, payees = chain.accounts[3:6], chain.accounts[6:9]
    m, v, t = chain.manager, chain.vault, chain.token
    first_id = int(m.functions.nextStreamId().call())
    first_escrow = int(v.functions.nextEscrowId().call())
    ids = list(range(first_id, first_id + streams))
    payer_of = {sid: payers[i % len(payers)] for i, sid in enumerate(ids)}
    setup: list[tuple[str, Contract, str, list[Any]]] = []
    for p in payers:
        setup += [
            (admin, t, "mint", [p, 10**15]),
            (p, t, "approve", [m.address, 2**256 - 1]),
            (p, t, "approve", [v.address, 2**256 - 1]),
            (p, v, "deposit", [10**9]),
        ]
    chain.block(*setup)
    chain.block(
        *[
            (payer_of[sid], m, "openStream", [payees[i % len(payees)], 100 + i, 10**8])
            for i, sid in enumerate(ids)
        ]
    )
    priced = ids[::2]
    listing: list[tuple[str, Contract, str, list[Any]]] = []
    if m.functions.endpointCount(payees[0]).call() == 0:  # once per chain: names are unique
        listing.append((payees[0], m, "addEndpoint", [b"GET /v1/quote".ljust(32, b"\0"), 4]))
    chain.block(*[(payer_of[sid], m, "setUsagePrice", [sid, 3]) for sid in priced], *listing)
    escrows = first_escrow
    for r in range(rounds):
        chain.wait(rng.randint(10, 200))
        chain.block((admin, m, "settleStreams", [[*ids, 10**9]]))
        chain.skip(rng.randint(1, max_gap))
        sid = rng.choice(ids)
        txs: list[tuple[str, Contract, str, list[Any]]] = [
            (admin, m, "recordUsage", [[pack_usage(p, r + 1, r + 1, 0) for p in priced]]),
            (payer_of[sid], m, "topUp", [sid, 10**5]),
            (payers[r % 3], v, "createEscrow", [payees[r % 3], 1_000 + r, 300]),
        ]
        if r % 3 == 1:
            txs.append((payer_of[sid], m, "updateRate", [sid, 120 + r]))
        if r % 2 == 1:
            txs.append((payers[(r - 1) % 3], v, "releaseEscrow", [escrows - 1]))
        escrows += 1
        chain.block(*txs)
        chain.skip(rng.randint(1, max_gap))
    chain.wait(1_000)
    chain.block(
        # A replay and a gap.
        (
            admin,
            m,
            "recordUsage",
            [[pack_usage(priced[0], 1, 1, 0), pack_usage(priced[1], 1, rounds + 5, 0)]],
        ),
        (payees[0], m, "setEndpointPrice", [1, 6]),
        (admin, v, "refundExpired", [list(range(first_escrow, escrows + 1))]),
        (payer_of[ids[0]], m, "closeStream", [ids[0]]),
        (payer_of[ids[1]], m, "closeStream", [ids[1]]),
        (payers[0], v, "withdraw", [1_000]),
    )
    if claims:
        # The third payee keeps its credit: the ledger must show it.
        chain.block(*[(p, m, "claim", []) for p in payees[:2]], (admin, m, "claim", []))


async def indexed_logs(conn: Conn) -> list[tuple[int, int, str]]:
    """(block, log index, tx hash) of every row of every event table."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'log_index' ORDER BY table_name"
    )
    rows: list[tuple[int, int, str]] = []
    for t in tables:
        name = str(t["table_name"])
        assert name.isidentifier()
        # The table names come from the catalog, not from input.
        query = f'SELECT block_number, log_index, tx_hash FROM "{name}"'  # noqa: S608
        rows += [
            (r["block_number"], r["log_index"], "0x" + bytes(r["tx_hash"]).hex())
            for r in await conn.fetch(query)
        ]
    return sorted(rows)


def node_logs(chain: DevChain, to_block: int) -> list[tuple[int, int, str]]:
    return sorted(
        (int(lg["blockNumber"], 16), int(lg["logIndex"], 16), lg["transactionHash"])
        for lg in chain.logs(to_block)
    )


def write_config(tmp_path: Path, chain: DevChain, rpc_url: str, database_url: str) -> Path:
    deployment_file = tmp_path / "deployment.json"
    chain.deployment.write(deployment_file)
    config = tmp_path / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_url = "{rpc_url}"
deployment_file = "{deployment_file}"
rpc_timeout = 2.0
rpc_attempts = 2

[database]
url = "{database_url}"
pool_min = 1
pool_max = 4

[ingest]
poll_interval = 0.1
initial_range = 400
max_follow_step = 32
recheck_delay = 0.0

[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


def _batch(url: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    """Several JSON-RPC calls in one HTTP request; their results, in order."""
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    req = urllib.request.Request(  # noqa: S310 - our own local node
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
        replies = sorted(json.loads(resp.read()), key=lambda r: r["id"])
    errors = [r["error"] for r in replies if "error" in r]
    assert not errors, errors
    return [r["result"] for r in replies]


def encode_call(c: Contract, fn: str, args: list[Any]) -> str:
    """Calldata of `c.fn(*args)` (web3's encode_abi is ten times slower, and we send many)."""
    key = (c.address, fn)
    if key not in _FUNCTIONS:
        abi = cast("list[dict[str, Any]]", c.abi)
        item = next(e for e in abi if e.get("type") == "function" and e.get("name") == fn)
        types = [str(i["type"]) for i in item.get("inputs", [])]
        _FUNCTIONS[key] = ("0x" + keccak(text=f"{fn}({','.join(types)})")[:4].hex(), types)
    selector, types = _FUNCTIONS[key]
    return selector + bytes(abi_encode(types, args)).hex()
