"""A chain full of contract events for the indexer benchmark, generated fast on a fresh anvil.

Streams are opened by one (impersonated) payer, then settled all at once by `settleStreams`
again and again with one second of chain time between the calls, so each call emits one
`StreamSettled` per stream. Usage prices, usage batches, top-ups and a few escrows exercise the
other event tables. Calls go out as raw `eth_sendTransaction` (anvil signs for impersonated
accounts) over one kept-alive HTTP connection, mostly without waiting for receipts: anvil mines
them in arrival order, and every 50th call (and each settle round) waits for the last receipt
and fails on a revert. Every transaction is mined in its own block (automine), as on a chain
where streams are opened one by one; only the settle rounds emit thousands of logs per block.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from web3.contract import Contract

from keeper.chain.deployment import Deployment
from keeper.plan.accrual import pack_report
from tests.support.gas import Env, setup, synthetic_address

RATE = 1_000  # base units per second
DEPOSIT = 10**10  # lasts 10**7 s at RATE: never depletes during the benchmark
USAGE_PRICE = 3
# Wait for the receipt of every so many fire-and-forget calls: anvil mines a long backlog of
# pending transactions far more slowly than it mines them as they come.
SYNC_EVERY = 50


class RpcFailed(RuntimeError):
    """A JSON-RPC call of the workload generator returned an error."""


class FastRpc:
    """Sequential JSON-RPC over one kept-alive HTTP connection (much cheaper than urllib)."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self.next_id = 0

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call `method` and return its result; raise `RpcFailed` on a JSON-RPC error."""
        self.next_id += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": list(params)}
        )
        for attempt in range(2):
            try:
                self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
                reply = json.loads(self.conn.getresponse().read())
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        if "error" in reply:
            raise RpcFailed(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@dataclass
class Workload:
    """What was generated: where, which streams, and how many events of each kind were sent."""

    url: str
    deployment: Deployment
    env: Env
    payer: str
    stream_ids: list[int]
    sent: dict[str, int] = field(default_factory=dict)
    last_block: int = 0
    seconds: float = 0.0

    @property
    def addresses(self) -> dict[str, str]:
        """The indexed contracts, as `Indexer(addresses=...)` takes them."""
        return {
            "StreamManager": self.deployment.stream_manager,
            "EscrowVault": self.deployment.escrow_vault,
        }


class _Sender:
    """Fire-and-forget contract calls as impersonated accounts."""

    def __init__(self, rpc: FastRpc) -> None:
        self.rpc = rpc
        self.last_hash: str | None = None
        self.sent = 0

    def fire(self, c: Contract, fn: str, args: Sequence[Any], sender: str, gas: int) -> str:
        return self.fire_data(c.address, c.encode_abi(fn, args=list(args)), sender, gas)

    def fire_data(self, to: str, data: str, sender: str, gas: int) -> str:
        """Send pre-encoded calldata (encoding a 2,000-id array costs web3 ~150 ms)."""
        tx = {"from": sender, "to": to, "data": data, "gas": hex(gas)}
        sent = self.last_hash = str(self.rpc.call("eth_sendTransaction", [tx]))
        self.sent += 1
        if self.sent % SYNC_EVERY == 0:
            self.sync()
        return sent

    def sync(self) -> None:
        """Wait until the last call fired is mined (so all earlier ones are) and succeeded."""
        if self.last_hash is None:
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            receipt = self.rpc.call("eth_getTransactionReceipt", [self.last_hash])
            if receipt is not None:
                if int(receipt["status"], 16) != 1:
                    raise RpcFailed(f"transaction {self.last_hash} reverted")
                self.last_hash = None
                return
            time.sleep(0.002)
        raise RpcFailed(f"transaction {self.last_hash} was not mined in time")


def generate(
    url: str,
    *,
    streams: int = 2_000,
    settle_rounds: int = 100,
    usage_streams: int = 500,
    usage_rounds: int = 10,
    top_ups: int = 200,
    escrows: int = 40,
    payees: int = 20,
    tail_blocks: int = 70,
    progress: Callable[[str], None] | None = None,
) -> Workload:
    """Deploy on the fresh node at `url` and fill it with events (see the module docstring)."""
    say = progress or (lambda _line: None)
    started = time.monotonic()
    env = setup(url)
    dep = env_deployment(env, url)
    rpc = FastRpc(url)
    out = _Sender(rpc)
    m, v, tok = env.manager, env.vault, env.token
    payer = synthetic_address(0xB0B0, 0)
    rpc.call("anvil_setBalance", [payer, hex(10**24)])
    budget = DEPOSIT * streams + 10**12 * (top_ups + escrows + 1)
    out.fire(tok, "mint", [payer, budget], env.admin, 200_000)
    out.fire(tok, "approve", [m.address, 2**256 - 1], payer, 100_000)
    out.fire(tok, "approve", [v.address, 2**256 - 1], payer, 100_000)
    out.sync()
    sent: dict[str, int] = {}

    def count(kind: str, n: int = 1) -> None:
        sent[kind] = sent.get(kind, 0) + n

    first_id = int(m.functions.nextStreamId().call())
    ids = list(range(first_id, first_id + streams))
    per_payee = max(1, streams // payees)
    for i in range(streams):
        payee = synthetic_address(0xBEE0, i // per_payee)
        out.fire(m, "openStream", [payee, RATE, DEPOSIT], payer, 300_000)
        count("StreamOpened")
        if (i + 1) % 500 == 0:
            say(f"opened {i + 1}/{streams} streams")
    out.sync()

    priced = ids[:usage_streams]
    for sid in priced:
        out.fire(m, "setUsagePrice", [sid, USAGE_PRICE], payer, 100_000)
        count("UsagePriceSet")
    out.sync()
    say(f"usage price set on {len(priced)} streams")

    gas_limit = 55_000_000
    settle_all = m.encode_abi("settleStreams", args=[ids])
    usage_every = max(1, settle_rounds // max(usage_rounds, 1))
    seq = 0
    for r in range(settle_rounds):
        # Exactly one second of chain time since the previous block, so every stream has
        # something due (anvil would otherwise stamp blocks with its wall-clock-driven time).
        out.sync()
        latest = rpc.call("eth_getBlockByNumber", ["latest", False])
        rpc.call("evm_setNextBlockTimestamp", [int(latest["timestamp"], 16) + 1])
        out.fire_data(m.address, settle_all, env.admin, gas_limit)
        count("StreamSettled", streams)
        if usage_rounds and r % usage_every == 0 and seq < usage_rounds:
            seq += 1
            n = len(priced)
            words = [pack_report(sid, seq, 5) for sid in priced]
            out.fire(m, "recordUsage", [words], env.admin, gas_limit)
            count("UsageRecorded", n)
        if (r + 1) % 10 == 0:
            say(f"settled {r + 1}/{settle_rounds} rounds")
    out.sync()

    for i in range(top_ups):
        out.fire(m, "topUp", [ids[i % streams], 1_000_000], payer, 200_000)
        count("StreamToppedUp")
    if escrows:
        # Read once the top-ups are mined: the node keeps no state but the head's
        # (--prune-history), and a read racing a new block asks for a block it has dropped.
        out.sync()
        first_escrow = int(v.functions.nextEscrowId().call())
        out.fire(v, "deposit", [10**9 * escrows], payer, 200_000)
        count("Deposited")
        for _ in range(escrows):
            out.fire(v, "createEscrow", [env.admin, 10**6, 60], payer, 300_000)
            count("EscrowCreated")
        released = list(range(first_escrow, first_escrow + escrows // 2))
        for eid in released:
            out.fire(v, "releaseEscrow", [eid], payer, 200_000)
            count("EscrowReleased")
        out.sync()
        rpc.call("evm_increaseTime", [61])
        rest = list(range(first_escrow + escrows // 2, first_escrow + escrows))
        out.fire(v, "refundExpired", [rest], env.admin, gas_limit)
        count("EscrowRefunded", len(rest))
    out.sync()
    # Everything above must be below the node's `finalized` tag (head - 64).
    rpc.call("anvil_mine", [hex(tail_blocks)])
    last = int(rpc.call("eth_blockNumber"), 16)
    rpc.close()
    seconds = time.monotonic() - started
    say(f"generated {sum(sent.values())} events in {last} blocks in {seconds:.1f} s")
    return Workload(
        url=url,
        deployment=dep,
        env=env,
        payer=payer,
        stream_ids=ids,
        sent=sent,
        last_block=last,
        seconds=seconds,
    )


def env_deployment(env: Env, url: str) -> Deployment:
    """The `Deployment` of the contracts `env` drives (the gas helpers keep only contracts)."""
    chain_id = int(env.w3.eth.chain_id)
    # setup() deployed from the node's first blocks: the deployment starts at block 1.
    return Deployment(
        chain_id=chain_id,
        deployment_block=1,
        token=env.token.address,
        stream_manager=env.manager.address,
        escrow_vault=env.vault.address,
        deployer=env.admin,
        oracle=env.admin,
        fee_recipient=env.admin,
        fee_bps=int(env.manager.functions.feeBps().call()),
    )
