"""newHeads over a websocket wakes the indexer; without a working socket, polling carries on."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from structlog.testing import capture_logs

from keeper import db as keeper_db
from keeper.chain.heads import HeadWatcher
from keeper.chain.rpc import ChainClient
from keeper.config import IngestConfig
from keeper.dev.anvil import Anvil, free_port, rpc
from keeper.ingest.indexer import Indexer
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0

pytestmark = pytest.mark.anyio


async def test_new_heads_wake_the_watcher(anvil_factory: Callable[..., Anvil]) -> None:
    node = anvil_factory()
    woken = anyio.Event()
    count = 0

    def wake() -> None:
        nonlocal count
        count += 1
        if count >= 2:
            woken.set()

    async with anyio.create_task_group() as tg:
        await tg.start(HeadWatcher(node.ws_url, wake).run)
        with anyio.fail_after(10):
            while not woken.is_set():
                rpc(node.url, "evm_mine", [])
                await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert count >= 2


async def test_a_dead_socket_is_reported_and_retried() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(HeadWatcher(url, lambda: None, max_backoff=0.2).run)
            await anyio.sleep(1.5)
            tg.cancel_scope.cancel()
    failures = [e for e in logs if e["event"] == "ws_disconnected"]
    assert len(failures) >= 2  # reconnected after the first failure
    assert all(e["url"].startswith("ws://127.0.0.1:") for e in failures)


@pytest.mark.parametrize(
    "answers",
    [
        ['"just a string"'],
        ["42"],
        ['{"jsonrpc": "2.0", "id": 1, "result": "0x1"}', "[1, 2, 3]"],
        ['{"jsonrpc": "2.0", "id": 1, "result": "0x1"}', "not json at all"],
    ],
    ids=["string-reply", "number-reply", "list-notification", "garbage-notification"],
)
async def test_a_socket_answering_nonsense_is_reported_and_retried(answers: list[str]) -> None:
    """Whatever a websocket provider sends, the watcher logs it and reconnects: it never ends
    (it runs in the indexer's task group, which it would take down with it)."""
    from aiohttp import web

    connections = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the eth_subscribe request
        for text in answers:
            await ws.send_str(text)
        await anyio.sleep(0.2)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                watcher = HeadWatcher(f"ws://127.0.0.1:{port}/", lambda: None, max_backoff=0.2)
                await tg.start(watcher.run)
                await anyio.sleep(2.0)
                tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
    # The watcher was still running when cancelled (had it raised, the task group would have
    # raised it here), and it came back after the nonsense.
    assert connections >= 2
    assert not [e for e in logs if e["log_level"] == "error"]


async def test_indexer_follows_by_polling_when_the_socket_is_dead(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    node = anvil_factory()
    dep = deploy_all(node.url, DEV_KEY0)
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=2)
    client = ChainClient(node.url)
    indexer = Indexer(
        client,
        pool,
        chain_id=dep.chain_id,
        addresses={"StreamManager": dep.stream_manager, "EscrowVault": dep.escrow_vault},
        start_block=dep.deployment_block,
        settings=IngestConfig(poll_interval=0.1),
        ws_url=f"ws://127.0.0.1:{free_port()}",
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(indexer.run)
            for _ in range(3):
                rpc(node.url, "evm_mine", [])
            target = int(str(rpc(node.url, "eth_blockNumber")), 16)
            with anyio.fail_after(15):
                while True:
                    async with pool.acquire() as conn:
                        indexed = await conn.fetchval("SELECT indexed_block FROM ingest_cursor")
                    if indexed is not None and indexed >= target:
                        break
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    finally:
        await client.close()
        await pool.close()
