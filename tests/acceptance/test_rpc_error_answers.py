"""`keeper run` through a provider that answers reads with JSON-RPC errors for a while.

A well-formed error answer (HTTP 200, `{"error": {"code": -32600, "message": "bad request
…"}}`) to a read is a provider failing, not an answer about the chain. Real processes: anvil
mining a block a second, PostgreSQL, and `keeper run` with two signers behind `RpcProxy`, on a
workload of fast streams that fall due every planning pass, so that the indexer, the planners
and the transaction manager all read through the proxy. Each read method in turn is answered
with errors for a while; the daemon must stay alive throughout, report the failure (log line,
`keeper_loop_failures_total`, `/status`), and afterwards catch up and go on settling, every
nonce used once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, rpc
from tests.support.daemon import Outboxes, wait_until
from tests.support.rpc_proxy import RpcProxy
from tests.support.world import (
    assert_exactly_once,
    confirmed,
    events,
    get,
    health_url,
    keeper_in,
)

# The reads `keeper run` makes, each answered with errors in turn, and the loops whose passes
# they fail: eth_getBlockByNumber (the head) every loop, the others one loop each.
READS = {
    "eth_getBlockByNumber": ("sync_failed", "plan_pass_failed", "tx_pass_failed"),
    "eth_getLogs": ("sync_failed",),
    "eth_getTransactionReceipt": ("tx_pass_failed",),
    "eth_getTransactionCount": ("tx_pass_failed",),
    "eth_getBalance": ("tx_pass_failed",),
}


def _loop_failures(base: str) -> float:
    total = 0.0
    for line in get(f"{base}/metrics")[1].splitlines():
        if line.startswith("keeper_loop_failures_total{"):
            total += float(line.split()[-1])
    return total


def _caught_up(outbox: Outboxes, node: Anvil) -> Callable[[], bool]:
    def check() -> bool:
        head = int(str(rpc(node.url, "eth_blockNumber", [])), 16)
        rows = outbox.fetch("SELECT indexed_block FROM ingest_cursor")
        return bool(rows) and int(rows[0]["indexed_block"]) >= head - 1

    return check


def test_error_answers_to_reads_are_waited_out(
    world: tuple[Anvil, Deployment],
    database_url: str,
    tmp_path: Path,
) -> None:
    node, d = world
    outbox = Outboxes(database_url)
    with RpcProxy(node.url) as proxy:
        keeper = keeper_in(tmp_path / "a", proxy.url, d, database_url)
        try:
            keeper.start()
            base = health_url(keeper)
            wait_until("a confirmed batch", lambda: confirmed(outbox) >= 1, keeper, timeout=90)
            seen_in_status = False
            for method, loops in READS.items():
                counts = {name: len(events(keeper, name)) for name in loops}
                proxy.error_next(None, -32600, "bad request to /v3/provider-path", methods=[method])

                def all_failed(counts: dict[str, int] = counts) -> bool:
                    return all(len(events(keeper, n)) > c for n, c in counts.items())

                wait_until(f"{loops} while {method} fails", all_failed, keeper, timeout=90)
                if method == "eth_getBlockByNumber":
                    status = json.loads(get(f"{base}/status")[1])
                    seen_in_status = "bad request" in str(status["process"]["last_error"])
                proxy.clear_faults()
                assert proxy.errors_served[method] >= 2
                assert keeper.alive(), keeper.tail()
            assert seen_in_status
            assert _loop_failures(base) >= 1
            assert all("bad request" in e["error"] for e in events(keeper, "sync_failed"))
            # Caught up, and settling again.
            wait_until("the index at the head", _caught_up(outbox, node), keeper, timeout=60)
            before = confirmed(outbox)
            wait_until("more batches", lambda: confirmed(outbox) > before, keeper, timeout=90)
            time.sleep(0.5)
            assert keeper.alive(), keeper.tail()
            status, _ = keeper.terminate(within=15)
            assert status == 0, keeper.tail()
        finally:
            keeper.stop()
    try:
        assert_exactly_once(node, outbox)
    finally:
        outbox.close()


def test_a_start_while_the_provider_answers_errors_waits_for_it(
    world: tuple[Anvil, Deployment],
    database_url: str,
    tmp_path: Path,
) -> None:
    """The start-up's chain checks (chain id, head, code, `token()`) wait for the provider like
    the loops do, instead of exiting for systemd to restart the process."""
    node, d = world
    with RpcProxy(node.url) as proxy:
        keeper = keeper_in(tmp_path / "a", proxy.url, d, database_url)
        proxy.error_next(
            None,
            -32600,
            "bad request",
            methods=["eth_chainId", "eth_getBlockByNumber", "eth_getCode", "eth_call"],
        )
        try:
            keeper.start()
            wait_until(
                "two chain_check_failed",
                lambda: len(events(keeper, "chain_check_failed")) >= 2,
                keeper,
                timeout=60,
            )
            assert not events(keeper, "keeper_started")
            proxy.clear_faults()
            wait_until("keeper_started", lambda: bool(events(keeper, "keeper_started")), keeper)
            status, _ = keeper.terminate(within=15)
            assert status == 0, keeper.tail()
        finally:
            keeper.stop()
