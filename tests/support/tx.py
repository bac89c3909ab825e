"""Shared set-up of the transaction-manager tests: a deployed chain, two signers, a manager.

`env` runs on anvil. A case a node answers in its own words runs on both development nodes
(anvil and Hardhat's EDR, `tests.support.dev_nodes`) with `@on_both_nodes`, which parametrizes the
`node_kind` fixture `env` is built on; such a test drives the node through `Env.node` (a
`DevNode`) and `Env`'s helpers only, never through anvil-only RPC methods.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from eth_utils import to_checksum_address
from web3 import Web3

from keeper import db as keeper_db
from keeper.chain.deployment import Deployment
from keeper.chain.rpc import ChainClient
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.db import Conn
from keeper.db.outbox import IntentRequest, Outbox, Planned
from keeper.dev.anvil import dev_key, rpc, start_anvil
from keeper.ops.deploy import contract, deploy_all
from keeper.tx.manager import TxManager
from tests.support.chain import DEV_KEY0
from tests.support.dev_nodes import NODE_KINDS, AnvilNode, DevNode, NodeKind, start_hardhat

#: Run the test once on anvil and once on Hardhat's node (it must use `env` only).
on_both_nodes = pytest.mark.parametrize("node_kind", NODE_KINDS)


@dataclass
class Env:
    """What a transaction-manager test works with: the node (anvil or Hardhat's), web3 on it,
    the deployed contracts, a manager, the outbox's pool and the manager's signers."""

    node: DevNode
    w3: Web3
    deployment: Deployment
    manager: TxManager
    pool: asyncpg.Pool
    signers: list[Signer]

    def mine(self, n: int = 1) -> None:
        self.node.mine(n)

    def automine(self, on: bool) -> None:
        self.node.set_automine(on)

    def settle_call(self, ids: list[int]) -> bytes:
        c = contract(self.w3, "StreamManager", self.deployment.stream_manager)
        data = c.encode_abi("settleStreams", [ids])
        return bytes.fromhex(data[2:])

    def set_balance(self, signer: Signer, wei: int) -> None:
        self.node.set_balance(signer.address, wei)

    def manager_with(
        self,
        signers: list[Signer] | None = None,
        *,
        max_batch_gas: int | None = None,
        **settings: Any,
    ) -> TxManager:
        """Another manager on the same chain and outbox, with changed `[tx]` settings (field
        names checked; values may pass the configuration's bounds, e.g. bump_after_blocks 0) and
        `[plan]`'s max_batch_gas."""
        return TxManager(
            self.manager.client,
            self.pool,
            chain_id=self.deployment.chain_id,
            signers=signers or self.signers,
            settings=tx_settings(self.manager.settings, **settings),
            max_batch_gas=max_batch_gas,
        )

    async def plan(self, key: str, ids: list[int] | None = None, *, urgent: bool = False) -> int:
        req = IntentRequest(
            kind="settle",
            key=key,
            target=self.deployment.stream_manager,
            calldata=self.settle_call(ids or [1]),
            items=ids or [1],
            urgent=urgent,
        )
        async with self.pool.acquire() as conn:
            planned = await Outbox(self.deployment.chain_id).plan(conn, req)
        assert isinstance(planned, Planned)
        return planned.intent_id

    async def state(self, intent_id: int) -> str:
        async with self.pool.acquire() as conn:
            return str(await conn.fetchval("SELECT state FROM intents WHERE id = $1", intent_id))

    async def signer_of(self, intent_id: int) -> bytes | None:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT signer FROM intents WHERE id = $1", intent_id)
        return None if value is None else bytes(value)

    async def attempts(self, intent_id: int) -> int:
        async with self.pool.acquire() as conn:
            return int(
                await conn.fetchval("SELECT count(*) FROM attempts WHERE intent_id = $1", intent_id)
            )


# Every checked or reverted batch item, named as the keeper logs it (`id`, or `id:seq` for a
# usage report), with its intent and kind.
ITEM_OUTCOMES = """
SELECT b.intent_id, b.kind,
       b.entity::text || COALESCE(':' || b.seq::text, '') AS item, b.outcome, b.detail
FROM batch_items b
WHERE b.outcome IS NOT NULL AND ($1::bigint IS NULL OR b.intent_id = $1)
ORDER BY b.intent_id, b.position
"""


async def item_outcomes(
    conn: Conn | asyncpg.Pool, intent_id: int | None = None
) -> list[asyncpg.Record]:
    """The checked or reverted batch items (of `intent_id`, or of every intent)."""
    return list(await conn.fetch(ITEM_OUTCOMES, intent_id))


def tx_settings(base: TxConfig, **changes: Any) -> TxConfig:
    """`base` with `changes`: field names checked, values not (tests go past the bounds)."""
    unknown = set(changes) - set(TxConfig.model_fields)
    assert not unknown, f"not [tx] fields: {sorted(unknown)}"
    return base.model_copy(update=changes)


@pytest.fixture
def node_kind() -> NodeKind:
    """The node `env` runs on: anvil, unless the test is marked `on_both_nodes`."""
    return "anvil"


@pytest.fixture
def anvil_args() -> tuple[str, ...]:
    """Extra command-line arguments of `env`'s anvil (a test parametrizes it to change them)."""
    return ()


@pytest.fixture
async def env(
    node_kind: NodeKind, anvil_args: tuple[str, ...], database_url: str
) -> AsyncIterator[Env]:
    """A fresh node with the contracts deployed, two signers, a manager over a fresh outbox."""
    node: DevNode = (
        AnvilNode(start_anvil(extra_args=list(anvil_args)))
        if node_kind == "anvil"
        else start_hardhat()
    )
    try:
        # Without a notice period: tests on this chain close streams as their payer and
        # expect them closed at once.
        deployment = deploy_all(node.url, DEV_KEY0, notice_period=0)
        signers = [Signer(dev_key(i)) for i in (5, 6)]
        pool = await keeper_db.create_pool(database_url, min_size=1, max_size=4)
        client = ChainClient(node.url)
        manager = TxManager(
            client,
            pool,
            chain_id=deployment.chain_id,
            signers=signers,
            settings=TxConfig(confirmations=2, bump_after_blocks=2),
        )
        try:
            yield Env(node, Web3(Web3.HTTPProvider(node.url)), deployment, manager, pool, signers)
        finally:
            await client.close()
            await pool.close()
    finally:
        node.stop()


PROBE_SOURCE = Path(__file__).resolve().parents[1] / "integration" / "fixtures" / "BatchProbe.sol"
PROBE_ADDRESS = "0x" + "b7" * 20

_COMPILE = """
const solc = require("solc");
let src = "";
process.stdin.on("data", (d) => (src += d));
process.stdin.on("end", () => {
  const input = {language: "Solidity", sources: {"BatchProbe.sol": {content: src}},
    settings: {outputSelection: {"*": {"*": ["evm.deployedBytecode.object"]}}}};
  const out = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (out.errors || []).filter((e) => e.severity === "error");
  if (errors.length) { console.error(JSON.stringify(errors)); process.exit(1); }
  process.stdout.write(out.contracts["BatchProbe.sol"].BatchProbe.evm.deployedBytecode.object);
});
"""


@cache
def probe_runtime_code() -> str:
    """BatchProbe's runtime bytecode, compiled with the project's solc-js."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["node", "-e", _COMPILE],
        input=PROBE_SOURCE.read_text(),
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
        timeout=120,
    )
    return "0x" + done.stdout.strip()


def install_probe(url: str) -> str:
    """Put BatchProbe's code at PROBE_ADDRESS on the node; its checksummed address."""
    rpc(url, "anvil_setCode", [PROBE_ADDRESS, probe_runtime_code()])
    return to_checksum_address(PROBE_ADDRESS)
