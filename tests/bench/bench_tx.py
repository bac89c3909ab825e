"""`make bench-tx`: transaction-manager throughput and RPC cost, one JSON object on the last line.

For 1 signer, then 4 signers, each on its own fresh anvil (automine) and fresh migrated database
(created and dropped on the server at KEEPER_BENCH_DATABASE_URL, default the local test server):

1. deploy the contracts and open N streams (distinct payees), then move chain time on a minute
   so each has something due (not timed);
2. plan N intents through `Outbox.plan`, each `settleStreams([id])` of its own stream (not
   timed);
3. drive `TxManager.tick()` until every intent is confirmed, timing it (the time includes one
   `count(*)` of the outbox per pass); after each pass one empty block is mined, standing in for
   a chain that keeps producing blocks when the keeper sends nothing (automine alone would leave
   the last intent one block short of depth 2);
4. check the outcome: every receipt succeeded, each signer's nonces are 0..k-1 and its
   transaction count on chain is k, and every stream was settled exactly once.

RPC calls are HTTP requests the keeper made to the node, read from `keeper_rpc_requests_total`
(one JSON-RPC batch counts as one request). The bench's own set-up and `evm_mine` calls do not go
through the keeper's client and are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
from eth_utils import to_checksum_address

from keeper import db, metrics
from keeper.chain.rpc import ChainClient
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.dev.anvil import dev_key, rpc, running_anvil
from keeper.logs import configure as configure_logs
from keeper.tx.manager import TxManager
from tests.bench.bench_index import DEFAULT_DSN, fresh_database
from tests.support.settle_load import (
    open_streams,
    plan_settles,
    settled_ids,
)

FIRST_SIGNER = 5  # dev accounts 5.. sign; account 0 deploys and pays the streams
SETTINGS = TxConfig(confirmations=2)
RUN_DEADLINE_S = 900  # a run that stops making progress fails instead of hanging


def say(line: str) -> None:
    """Progress goes to stderr; stdout ends with the JSON line."""
    print(line, file=sys.stderr, flush=True)


def rpc_counts() -> Counter[str]:
    """keeper_rpc_requests_total so far, by method."""
    counts: Counter[str] = Counter()
    for family in metrics.REGISTRY.collect():
        if family.name != "keeper_rpc_requests":
            continue
        for sample in family.samples:
            if sample.name == "keeper_rpc_requests_total":
                counts[sample.labels["method"]] += int(sample.value)
    return counts


@dataclass
class RunResult:
    """One timed run."""

    signers: int
    intents: int
    seconds: float
    ticks: int
    rpc: Counter[str]
    per_signer: dict[str, int]

    @property
    def rate(self) -> float:
        """Intents confirmed per second."""
        return self.intents / self.seconds if self.seconds else 0.0

    @property
    def rpc_per_intent(self) -> float:
        """HTTP requests to the node per confirmed intent."""
        return sum(self.rpc.values()) / self.intents


async def confirmed_count(pool: Any) -> int:
    """Intents confirmed (or final) so far."""
    async with pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM intents WHERE state IN ('confirmed', 'final')"
        )
    return int(n)


async def run(n_signers: int, intents: int, admin_dsn: str) -> RunResult:
    """Plan `intents` intents and time the manager confirming them all with `n_signers`."""
    signers = [Signer(dev_key(FIRST_SIGNER + i)) for i in range(n_signers)]
    with running_anvil(accounts=FIRST_SIGNER + n_signers) as node:
        streams = open_streams(node.url, intents)
        start_block = int(str(rpc(node.url, "eth_blockNumber")), 16)
        async with fresh_database(admin_dsn, f"keeper_bench_tx_{os.getpid()}") as dsn:
            pool = await db.create_pool(dsn, min_size=1, max_size=4)
            client = ChainClient(node.url)
            try:
                chain_id = await client.chain_id()
                await plan_settles(pool, chain_id, streams, "bench")
                manager = TxManager(
                    client, pool, chain_id=chain_id, signers=signers, settings=SETTINGS
                )
                before = rpc_counts()
                started = time.perf_counter()
                ticks = done = 0
                with anyio.fail_after(RUN_DEADLINE_S):
                    while done < intents:
                        report = await manager.tick()
                        ticks += 1
                        if report.failed:
                            raise AssertionError(f"{report.failed} intents failed (see the log)")
                        rpc(node.url, "evm_mine", [])
                        done = await confirmed_count(pool)
                        if ticks % 20 == 0:
                            say(f"  {n_signers} signer(s): {done}/{intents} confirmed")
                seconds = time.perf_counter() - started
                used = rpc_counts() - before
                async with pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT signer, count(*) AS n, min(nonce) AS low, max(nonce) AS top, "
                        "count(DISTINCT nonce) AS nonces, bool_and(receipt_status = 1) AS ok "
                        "FROM intents GROUP BY signer"
                    )
            finally:
                await client.close()
                await pool.close()
        per_signer: dict[str, int] = {}
        for row in rows:
            address = to_checksum_address(bytes(row["signer"]))
            count = int(str(rpc(node.url, "eth_getTransactionCount", [address, "latest"])), 16)
            n = int(row["n"])
            if not (row["ok"] and row["low"] == 0 and row["top"] + 1 == row["nonces"] == n):
                raise AssertionError(f"{address}: nonces or receipts wrong: {dict(row)}")
            if count != n:
                raise AssertionError(f"{address}: {n} intents but {count} mined transactions")
            per_signer[address] = n
        settled = settled_ids(node.url, streams.manager, start_block)
        if settled != Counter(streams.ids):
            raise AssertionError("not every stream was settled exactly once")
    return RunResult(n_signers, intents, seconds, ticks, used, per_signer)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Both runs; the JSON object."""
    admin_dsn = os.environ.get("KEEPER_BENCH_DATABASE_URL", DEFAULT_DSN)
    load_at_start = os.getloadavg()[0]
    results: dict[int, RunResult] = {}
    for n in (1, 4):
        say(f"{n} signer(s), {args.intents} intents ...")
        r = await run(n, args.intents, admin_dsn)
        results[n] = r
        say(
            f"{n} signer(s): {r.rate:.1f} intents/s ({r.seconds:.2f} s, {r.ticks} passes), "
            f"{r.rpc_per_intent:.2f} RPC calls/intent: {dict(sorted(r.rpc.items()))}"
        )
    one, four = results[1], results[4]
    return {
        "intents_per_s_1_signer": round(one.rate, 1),
        "intents_per_s_4_signers": round(four.rate, 1),
        "rpc_calls_per_intent": round(four.rpc_per_intent, 2),
        "rpc_calls_per_intent_1_signer": round(one.rpc_per_intent, 2),
        "rpc_calls_by_method_4_signers": dict(sorted(four.rpc.items())),
        "rpc_calls_by_method_1_signer": dict(sorted(one.rpc.items())),
        "intents": args.intents,
        "seconds_1_signer": round(one.seconds, 3),
        "seconds_4_signers": round(four.seconds, 3),
        "passes_1_signer": one.ticks,
        "passes_4_signers": four.ticks,
        "intents_per_signer_4_signers": sorted(four.per_signer.values()),
        "settings": {
            "confirmations": SETTINGS.confirmations,
            "in_flight_cap": SETTINGS.in_flight_cap,
            "assign_batch": SETTINGS.assign_batch,
            "calls": "settleStreams([id]) of a distinct stream with something due",
            "mining": "automine + one empty block after each pass",
        },
        # Other work on the machine skews absolute rates.
        "loadavg_1m": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON object is the last line of stdout.

    Chosen settings: `TxConfig(confirmations=2)`, the rest the keeper's defaults (in-flight cap
    16 per signer, at most 64 intents assigned per pass, fees and tip from the node). On anvil
    with automine every transaction is mined in its own block at once, so depth 2 is reached as
    soon as one more block follows; depth 1 would make "mined" and "confirmed" the same pass and
    skip the confirmation rule. N = 1,000 intents per run by default (`--intents`), about a
    minute or two in all on 2 cores.

    `rpc_calls_per_intent` is the 4-signer run's figure (the pool a keeper is meant to run
    with); `rpc_calls_per_intent_1_signer` is beside it. With one signer a pass assigns at most
    16 intents (the in-flight cap), so that run needs about four times the passes, and each pass
    has its fixed reads (head, finalized, balances, fee quote, receipts and headers batches).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intents", type=int, default=1_000, help="intents per run")
    parser.add_argument("--log-level", default="warning", help="keeper log level (stderr)")
    args = parser.parse_args(argv)
    configure_logs(args.log_level)
    out = anyio.run(bench, args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
