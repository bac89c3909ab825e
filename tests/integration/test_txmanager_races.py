"""Two transaction managers on one outbox (a second keeper process, a failover): a pass that
read an intent before the other moved it never undoes the other's work, and a lane's nonces are
handed out one assignment at a time across processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from keeper.db.outbox import IntentRequest, Outbox, Planned, lane_lock_key
from keeper.db.queries import load_queries
from keeper.tx.manager import TxManager
from tests.support.tx import Env

QUERIES = load_queries("outbox.sql")

pytestmark = pytest.mark.anyio

Hook = Callable[[str], Awaitable[None]]


class HookedConn:
    """A connection that runs `hook(query)` before each fetch (to interleave another pass)."""

    def __init__(self, conn: Any, hook: Hook) -> None:
        self._conn, self._hook = conn, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetch(self, query: str, *args: Any) -> Any:
        await self._hook(query)
        return await self._conn.fetch(query, *args)


class HookedPool:
    def __init__(self, pool: Any, hook: Hook) -> None:
        self._pool, self._hook = pool, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[HookedConn]:
        async with self._pool.acquire() as conn:
            yield HookedConn(conn, self._hook)


async def test_a_stale_pass_never_unmines_what_another_made_final(env: Env) -> None:
    first = env.manager
    intent = await env.plan("settle:race")
    await first.tick()
    env.mine()
    await first.tick()
    assert await env.state(intent) == "confirmed"
    env.mine(70)  # its block is now below the finalized fallback (head - 64)

    fired = False

    async def hook(query: str) -> None:
        nonlocal fired
        if query == QUERIES["all_attempt_hashes"] and not fired:
            fired = True
            await first.tick()  # the other manager makes it final between the two reads

    second = TxManager(
        first.client,
        HookedPool(env.pool, hook),  # type: ignore[arg-type]
        chain_id=first.chain_id,
        signers=env.signers,
        settings=first.settings,
    )
    with capture_logs() as logs:
        report = await second.tick()
    assert fired and report.unmined == 0
    assert "receipt_reorged_out" not in [e["event"] for e in logs]
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT i.state, a.state AS attempt FROM intents i "
            "JOIN attempts a ON a.intent_id = i.id WHERE i.id = $1",
            intent,
        )
    assert row is not None and (row["state"], row["attempt"]) == ("final", "mined")


async def test_a_lane_assigns_one_nonce_at_a_time_across_managers(env: Env) -> None:
    signer = env.signers[0]
    manager = env.manager_with(signers=[signer])
    mine = await env.plan("settle:mine", [1])
    outbox = Outbox(env.deployment.chain_id)
    async with env.pool.acquire() as other:
        # Another process is assigning on this lane: it holds the lane's lock.
        tx = other.transaction()
        await tx.start()
        await other.execute(
            QUERIES["lock_lane"], lane_lock_key(manager.chain_id, signer.address_bytes)
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.tick)
            await anyio.sleep(1.0)
            assert await env.state(mine) == "planned"  # waiting for the lane, not racing it
            req = IntentRequest(
                kind="settle",
                key="settle:theirs",
                target=env.deployment.stream_manager,
                calldata=env.settle_call([2]),
                items=[2],
            )
            theirs = await outbox.plan(other, req)
            assert isinstance(theirs, Planned)
            await other.execute(
                QUERIES["assign_intent"], theirs.intent_id, signer.address_bytes, 0, 100_000
            )
            await tx.commit()
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, nonce FROM intents WHERE id = $1", mine)
    # The other process took nonce 0 while this pass waited: this one got 1, no clash.
    assert row is not None and row["state"] in ("assigned", "mined") and row["nonce"] == 1
