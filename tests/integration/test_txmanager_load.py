"""Load: four signers send 1,000 intents, driven by two transaction managers at once on one
outbox (as two keeper processes would be if the leader lock failed), against a real anvil
(automine) and Postgres. No nonce may be reused or skipped, and every intent takes effect on
chain exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from eth_utils import to_checksum_address

from keeper import db as keeper_db
from keeper.chain.rpc import ChainClient
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.tx.manager import TickReport, TxManager
from tests.support.settle_load import open_streams, plan_settles, settled_ids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

INTENTS = 1_000
SIGNERS = 4
MANAGERS = 2
DEADLINE_S = 240  # a hang fails the test instead of stalling the suite
UP_FRONT = 800  # planned before the managers start; the rest while they run
PLAN_CHUNK = 20
BLOCK_EVERY_S = 0.25  # empty blocks while the managers run: the last intents reach depth 2


async def _chain_transactions(
    client: ChainClient, first: int, last: int, senders: set[str]
) -> list[dict[str, Any]]:
    """Every transaction from `senders` in blocks first..last (full blocks, batched)."""
    found: list[dict[str, Any]] = []
    for start in range(first, last + 1, 200):
        numbers = range(start, min(start + 200, last + 1))
        blocks = await client.batch([("eth_getBlockByNumber", [hex(n), True]) for n in numbers])
        for block in blocks:
            found += [tx for tx in block["transactions"] if tx["from"].lower() in senders]
    return found


async def test_four_signers_two_managers_1000_intents(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    node = anvil_factory()
    streams = open_streams(node.url, INTENTS)
    start_block = int(str(rpc(node.url, "eth_blockNumber")), 16)
    signers = [Signer(dev_key(5 + i)) for i in range(SIGNERS)]
    pool = await keeper_db.create_pool(database_url, min_size=2, max_size=8)
    clients = [ChainClient(node.url) for _ in range(MANAGERS + 1)]
    chain = clients[-1]
    try:
        chain_id = await chain.chain_id()
        await plan_settles(pool, chain_id, streams, "load", which=slice(0, UP_FRONT))
        managers = [
            TxManager(
                client,
                pool,
                chain_id=chain_id,
                signers=signers,
                settings=TxConfig(confirmations=2),
            )
            for client in clients[:MANAGERS]
        ]
        assigned = [0] * MANAGERS
        mined = [0] * MANAGERS
        passes = [0] * MANAGERS

        async def confirmed() -> int:
            async with pool.acquire() as conn:
                n = await conn.fetchval(
                    "SELECT count(*) FROM intents WHERE state IN ('confirmed', 'final')"
                )
            return int(n)

        async def drive(index: int) -> None:
            manager = managers[index]
            while await confirmed() < INTENTS:
                passes[index] += 1
                # Each lane assigns under its advisory lock: two managers never compute the
                # same next nonce, so a pass never ends on the live-nonce index.
                report: TickReport = await manager.tick()
                assigned[index] += report.assigned
                mined[index] += report.mined
                assert report.failed == 0, f"manager {index}: {report}"

        async def planner() -> None:
            # Planners add work while the managers send, every other chunk urgent (urgent
            # intents are taken first, so the managers' work lists change under them).
            for n, start in enumerate(range(UP_FRONT, INTENTS, PLAN_CHUNK)):
                await anyio.sleep(0.2)
                which = slice(start, min(start + PLAN_CHUNK, INTENTS))
                await plan_settles(pool, chain_id, streams, "load", which=which, urgent=n % 2 == 1)

        async def produce_blocks() -> None:
            while True:
                await anyio.sleep(BLOCK_EVERY_S)
                await chain.request("evm_mine")

        started = time.monotonic()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce_blocks)
                tg.start_soon(planner)
                async with anyio.create_task_group() as drivers:
                    for i in range(MANAGERS):
                        drivers.start_soon(drive, i)
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        print(
            f"\n{INTENTS} intents confirmed in {elapsed:.1f} s by {MANAGERS} managers: "
            f"assigned {assigned}, receipts recorded {mined}, passes {passes}"
        )
        # Each receipt is recorded by exactly one of the managers (the other's stale pass finds
        # the row moved and counts nothing), so the counts and gas metrics are not doubled.
        assert sum(mined) == INTENTS, mined

        # Both managers really worked the same outbox at once.
        assert all(n > 0 for n in assigned), assigned
        assert sum(assigned) == INTENTS  # no intent was assigned twice

        async with pool.acquire() as conn:
            intents = await conn.fetch(
                "SELECT id, kind, state, signer, nonce, tx_hash, receipt_status FROM intents"
            )
            attempts = await conn.fetch("SELECT intent_id, signer, nonce FROM attempts")

        # Every intent confirmed exactly once, and nothing else was ever created (no purge).
        assert Counter((r["kind"], r["state"]) for r in intents).keys() <= {
            ("settle", "confirmed"),
            ("settle", "final"),
        }
        assert len(intents) == INTENTS
        assert all(r["receipt_status"] == 1 for r in intents)
        pins = [(bytes(r["signer"]), int(r["nonce"])) for r in intents]
        assert len(set(pins)) == INTENTS  # no (signer, nonce) pinned twice
        # An attempt never carries another intent's nonce (bumps keep their intent's nonce).
        pin_of = {r["id"]: (bytes(r["signer"]), int(r["nonce"])) for r in intents}
        assert all(
            (bytes(a["signer"]), int(a["nonce"])) == pin_of[a["intent_id"]] for a in attempts
        )

        # Per signer: nonces 0..k-1 without a gap, k = its transaction count on chain, and
        # every signer took a fair part of the load.
        by_signer: dict[bytes, list[int]] = {}
        for signer, nonce in pins:
            by_signer.setdefault(signer, []).append(nonce)
        assert set(by_signer) == {s.address_bytes for s in signers}
        for signer, nonces in by_signer.items():
            assert sorted(nonces) == list(range(len(nonces)))
            on_chain = await chain.request(
                "eth_getTransactionCount", [to_checksum_address(signer), "latest"]
            )
            assert int(on_chain, 16) == len(nonces)
            assert len(nonces) >= INTENTS // (2 * SIGNERS), {
                to_checksum_address(s): len(n) for s, n in by_signer.items()
            }

        # On chain: exactly the intents' transactions were mined, each once, from the signers.
        head = int(await chain.request("eth_blockNumber"), 16)
        sent = await _chain_transactions(
            chain, start_block + 1, head, {s.address.lower() for s in signers}
        )
        assert len(sent) == INTENTS
        assert Counter(bytes.fromhex(tx["hash"][2:]) for tx in sent) == Counter(
            bytes(r["tx_hash"]) for r in intents
        )
        assert Counter((bytes.fromhex(tx["from"][2:]), int(tx["nonce"], 16)) for tx in sent) == (
            Counter(pins)
        )
        # ... and each intent's effect happened exactly once: its stream settled once.
        assert settled_ids(node.url, streams.manager, start_block) == Counter(streams.ids)
    finally:
        for client in clients:
            await client.close()
        await pool.close()
