"""Opening many streams and settling them through a real transaction manager: the load shared by
`make bench-tx` and the transaction-manager load test."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils import keccak

from keeper.db.outbox import IntentRequest, Outbox, Planned
from keeper.dev.anvil import rpc
from tests.support import gas


def open_streams(url: str, n: int) -> Streams:
    """Deploy on the fresh node at `url` and open `n` streams (distinct payees), then move chain
    time on so each has something due: settling one goes the same way when simulated and when
    mined (a stream settled in the latest block would simulate as "nothing due", at the latest
    block's timestamp, and then need more gas in the next block than was estimated)."""
    env = gas.setup(url)
    payer = env.admin
    env.fund(payer, gas.DEPOSIT * n)
    env.sync()
    first = int(env.manager.functions.nextStreamId().call())
    nonce = int(str(rpc(url, "eth_getTransactionCount", [payer, "pending"])), 16)
    open_sig, open_types = "openStream(address,uint256,uint256)", ["address", "uint256", "uint256"]
    opens: list[tuple[str, list[Any]]] = []
    for i in range(n):
        data = _call_data(
            open_sig, open_types, [gas.synthetic_address(0xB7, i), gas.RATE, gas.DEPOSIT]
        )
        tx = {
            "from": payer,
            "to": env.manager.address,
            "nonce": hex(nonce + i),
            "gas": hex(300_000),
        }
        opens.append(("eth_sendTransaction", [{**tx, "data": "0x" + data.hex()}]))
    # Sent in one batch with automine off, then mined in a few full blocks: a thousand
    # transactions one by one would take longer than the measurement.
    rpc(url, "evm_setAutomine", [False])
    _batch(url, opens)
    while int(str(rpc(url, "eth_getTransactionCount", [payer, "latest"])), 16) < nonce + n:
        rpc(url, "evm_mine", [])
    rpc(url, "evm_setAutomine", [True])
    opened = int(env.manager.functions.nextStreamId().call()) - first
    if opened != n:
        raise AssertionError(f"{opened} of {n} streams opened")
    rpc(url, "evm_increaseTime", [60])
    rpc(url, "evm_mine", [])
    ids = list(range(first, first + n))
    calldata = [_call_data("settleStreams(uint256[])", ["uint256[]"], [[i]]) for i in ids]
    return Streams(str(env.manager.address), ids, calldata)


def settled_ids(url: str, manager: str, from_block: int) -> Counter[int]:
    """StreamSettled events of `manager` from `from_block` on, counted by stream id."""
    topic = "0x" + keccak(text="StreamSettled(uint256,uint256,uint256,uint256)").hex()
    logs = rpc(
        url,
        "eth_getLogs",
        [
            {
                "address": manager,
                "topics": [topic],
                "fromBlock": hex(from_block),
                "toBlock": "latest",
            }
        ],
        timeout=60,
    )
    assert isinstance(logs, list)
    return Counter(int(lg["data"][2:66], 16) for lg in logs)


async def plan_settles(
    pool: Any,
    chain_id: int,
    streams: Streams,
    prefix: str,
    *,
    which: slice = slice(None),
    urgent: bool = False,
) -> None:
    """One settle intent per stream (those of `which`), planned through the outbox."""
    outbox = Outbox(chain_id)
    async with pool.acquire() as conn:
        for sid, data in zip(streams.ids[which], streams.calldata[which], strict=True):
            req = IntentRequest(
                kind="settle",
                key=f"{prefix}:{sid}",
                target=streams.manager,
                calldata=data,
                items=[sid],
                urgent=urgent,
            )
            assert isinstance(await outbox.plan(conn, req), Planned)


def _batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """One JSON-RPC batch (set-up only); the results in call order, or raise on any error."""
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    )
    req = urllib.request.Request(  # noqa: S310 - url is our own local node
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
        replies = sorted(json.loads(resp.read()), key=lambda r: int(r["id"]))
    errors = [r["error"] for r in replies if "error" in r]
    if errors:
        raise AssertionError(f"set-up batch: {len(errors)} calls failed, e.g. {errors[0]}")
    return [r["result"] for r in replies]


def _call_data(signature: str, types: list[str], args: list[Any]) -> bytes:
    """ABI-encoded call (eth_abi directly: web3's encode_abi costs milliseconds per call)."""
    return keccak(text=signature)[:4] + abi_encode(types, args)


@dataclass(frozen=True)
class Streams:
    """Streams opened for a run: each one settled by exactly one intent."""

    manager: str  # StreamManager's address
    ids: list[int]
    calldata: list[bytes]  # settleStreams([id]) of each
