"""The transaction manager: planned intents become mined, confirmed, final transactions.

One pass (`tick`) runs these steps in order, each a module of `keeper.tx`:
1. **send** what was signed but never sent (a crash between storing and broadcasting), and again
   what had an unsure answer (`send`);
2. **assign** planned intents: simulate (`eth_call`, then `eth_estimateGas`), pick the
   least-loaded signer under its in-flight cap, take its next nonce, sign, and store the
   attempt's raw bytes and the assignment in one transaction, then broadcast them (`assign`,
   `simulate`);
3. **replace** what a node refused for what it is, by a purge of its nonce (`repair`);
4. **receipts** across every attempt of every open intent: mined, confirmed at the configured
   depth, final at the finalized block; a receipt whose block left the chain sends the intent
   back to `assigned` to be rebroadcast (its calls are idempotent on-chain) (`receipts`);
5. **effects** of confirmed batches, item by item, from the indexed events (`receipts`);
6. **purge** the lowest nonce of a lane stuck `purge_after_blocks` without a receipt (`repair`);
7. **bump** attempts not mined after `bump_after_blocks` (`repair`).

Every database read and write goes through the outbox (`keeper.db.outbox`); an unexpected error
while handling one intent stays with that intent (`keeper.tx.faults`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from keeper.chain.rpc import ChainClient
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.db.outbox import Outbox, OutboxStore
from keeper.tx.assign import Assigner
from keeper.tx.context import TickReport, TxContext
from keeper.tx.counters import TX_PASS_SECONDS
from keeper.tx.receipts import Receipts
from keeper.tx.repair import Repair
from keeper.tx.send import Sender
from keeper.tx.simulate import Simulator

__all__ = ["TickReport", "TxManager"]


class TxManager:
    """Drives the outbox of one chain with a pool of signers."""

    def __init__(
        self,
        client: ChainClient,
        pool: asyncpg.Pool | None,
        *,
        chain_id: int,
        signers: Sequence[Signer],
        settings: TxConfig | None = None,
        finality_depth: int = 64,
        max_batch_gas: int | None = None,
        outbox: OutboxStore | None = None,
    ) -> None:
        """`settings` is the `[tx]` section; `finality_depth` comes from `[ingest]` (intents are
        final at the effective finalized block) and `max_batch_gas` from `[plan]` (no gas
        limit above it; None: no cap but the node's)."""
        if outbox is None:
            if pool is None:
                raise ValueError("the transaction manager needs a pool or an outbox")
            outbox = Outbox(chain_id, pool)
        self.ctx = TxContext(
            client,
            outbox,
            chain_id=chain_id,
            signers=signers,
            settings=settings or TxConfig(),
            finality_depth=finality_depth,
            max_batch_gas=max_batch_gas,
        )
        self.sender = Sender(self.ctx)
        self.simulator = Simulator(self.ctx, self.sender)
        self.assigner = Assigner(self.ctx, self.sender, self.simulator)
        self.receipts = Receipts(self.ctx)
        self.repair = Repair(self.ctx, self.sender)

    @property
    def client(self) -> ChainClient:
        return self.ctx.client

    @property
    def chain_id(self) -> int:
        return self.ctx.chain_id

    @property
    def settings(self) -> TxConfig:
        return self.ctx.settings

    @settings.setter
    def settings(self, settings: TxConfig) -> None:
        self.ctx.settings = settings

    @property
    def outbox(self) -> OutboxStore:
        return self.ctx.outbox

    def steps(self) -> list[Callable[[], Awaitable[None]]]:
        """The steps of a pass, in order."""
        return [
            self.sender.send_unsent,
            self.assigner.assign,
            self.repair.replace_refused,
            self.receipts.receipts,
            self.receipts.check_effects,
            self.repair.purge,
            self.repair.bump,
        ]

    async def tick(self) -> TickReport:
        """One pass over the outbox."""
        started = time.perf_counter()
        head = await self.ctx.client.head()
        finalized = await self.ctx.client.finalized(head, self.ctx.finality_depth)
        report = self.ctx.begin(head, finalized)
        self.sender.new_pass()
        for step in self.steps():
            await step()
        TX_PASS_SECONDS.observe(time.perf_counter() - started)
        return report
