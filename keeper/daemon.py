"""The daemon: one root task group running the keeper's loops until a signal stops it.

The loops are the indexer's and, when signers are configured, the planners' and the
transaction manager's. SIGTERM and SIGINT cancel the group and the process exits 0; a loop
that dies takes the process down with a non-zero status so systemd restarts it; a reorg below
the finalized block exits with `EXIT_FATAL_REORG` (3), which the unit file does not restart.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import anyio
import asyncpg
import structlog
from anyio import CancelScope
from anyio.abc import TaskGroup, TaskStatus
from asyncpg import PostgresConnectionError
from prometheus_client import Counter, Histogram

from keeper import db, metrics
from keeper.config import KeeperConfig
from keeper.db import DatabaseUnavailable
from keeper.deploy import Deployment
from keeper.errors import KeeperError, unwrap_group
from keeper.ingest import FatalReorg, Indexer
from keeper.migrations import migrate
from keeper.planner import PassReport, Planner
from keeper.rpc import ChainClient, RpcUnavailable
from keeper.signers import Signer, load_signers
from keeper.txmanager import TxManager
from keeper.usage import signers_without_oracle_role

log = structlog.get_logger(__name__)

USAGE_ROWS = Counter(
    "keeper_usage_rows_total",
    "Usage inbox rows validated, by verdict (accepted, or the rejection reason).",
    ["verdict"],
    registry=metrics.REGISTRY,
)
USAGE_RECONCILED = Counter(
    "keeper_usage_reconciled_total",
    "Usage reports reconciled from the indexed events: recorded, rejected, or undone by a reorg.",
    ["outcome"],
    registry=metrics.REGISTRY,
)
PLAN_PASS_SECONDS = Histogram(
    "keeper_plan_pass_seconds",
    "Duration of one planning pass (settle, refund and usage).",
    registry=metrics.REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


async def _stop_on_signal(
    scope: CancelScope,
    already: Callable[[], bool],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        if already():
            # A stop request that came before this receiver existed (see keeper.cli).
            log.info("stopping", signal="SIGTERM")
            scope.cancel()
            return
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def _tx_loop(manager: TxManager, interval: float) -> None:
    """Drive the outbox forever; outages are reported and waited out like the indexer's."""
    failures = 0
    while True:
        try:
            report = await manager.tick()
        except (RpcUnavailable, DatabaseUnavailable, OSError, PostgresConnectionError) as exc:
            failures += 1
            delay = min(interval * 2**failures, 60.0)
            log.error("tx_pass_failed", error=str(exc), retry_in_s=delay, failures=failures)
            await anyio.sleep(delay)
            continue
        failures = 0
        if any(vars(report).values()):
            log.info("tx_pass", **vars(report))
        await anyio.sleep(interval)


def _report_pass(report: PassReport) -> None:
    """Metrics and summary lines of one planning pass (lines only for what it did)."""
    intake = report.intake
    if intake is not None:
        USAGE_ROWS.labels("accepted").inc(intake.accepted)
        for reason, n in intake.rejected.items():
            USAGE_ROWS.labels(reason).inc(n)
    for outcome, n in report.reconciled.items():
        USAGE_RECONCILED.labels(outcome).inc(n)
    if intake is not None and (intake.validated or intake.waiting):
        log.info(
            "usage_intake",
            accepted=intake.accepted,
            rejected=intake.rejected,
            waiting_for_stream=intake.waiting,
        )
    if any(report.reconciled.values()):
        log.info("usage_reconciled", **report.reconciled)
    if report.planned or report.held_by_base_fee:
        log.info(
            "plan_pass",
            block=report.block,
            due=report.due,
            batches=len(report.planned),
            urgent=sum(1 for b in report.planned if b.urgent),
            items=sum(len(b.items) for b in report.planned),
            held_by_base_fee=report.held_by_base_fee,
            already_planned=report.already_planned,
        )


async def _plan_loop(
    planner: Planner, client: ChainClient, pool: asyncpg.Pool, interval: float
) -> None:
    """Plan due work every `interval` once the backfill is done; one summary line per pass
    that found something."""
    failures = 0
    async with pool.acquire() as conn:
        await planner.store_settings(conn)
    while True:
        try:
            async with pool.acquire() as conn:
                if await planner.backfill_done(conn):
                    head = await client.head()
                    started = time.perf_counter()
                    report = await planner.plan_pass(conn, base_fee=head.base_fee)
                    PLAN_PASS_SECONDS.observe(time.perf_counter() - started)
                    _report_pass(report)
        except (RpcUnavailable, DatabaseUnavailable, OSError, PostgresConnectionError) as exc:
            failures += 1
            delay = min(interval * 2**failures, 60.0)
            log.error("plan_pass_failed", error=str(exc), retry_in_s=delay, failures=failures)
            await anyio.sleep(delay)
            continue
        failures = 0
        await anyio.sleep(interval)


async def run(config: KeeperConfig, stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run until signalled; return the process exit status.

    The signal receiver is in place before anything else starts, so a SIGTERM during
    migrations or connection set-up stops the daemon cleanly too. `stop_requested` reports a
    signal that arrived even earlier, before the event loop ran.
    """
    deployment = config.deployment()
    chain_id = config.chain.chain_id or deployment.chain_id
    if chain_id != deployment.chain_id:
        raise KeeperError(
            f"chain.chain_id is {chain_id} but the deployment file is for {deployment.chain_id}",
            help="point chain.deployment_file at this chain's deployment",
        )
    # Keys first: a bad key file stops the start-up before anything is opened.
    signers = load_signers([s.source() for s in config.signers])
    structlog.contextvars.bind_contextvars(chain_id=chain_id)
    resources: list[Callable[[], Awaitable[None]]] = []
    try:
        with unwrap_group():
            async with anyio.create_task_group() as tg:
                await tg.start(_stop_on_signal, tg.cancel_scope, stop_requested)
                await _start(config, deployment, chain_id, signers, tg, resources)
    except FatalReorg as exc:
        log.critical("fatal_reorg", error=exc.message, help=exc.help)
        return FatalReorg.exit_code
    finally:
        with anyio.move_on_after(5, shield=True):
            for close in reversed(resources):
                await close()
    log.info("keeper_stopped")
    return 0


async def _start(
    config: KeeperConfig,
    deployment: Deployment,
    chain_id: int,
    signers: list[Signer],
    tg: TaskGroup,
    resources: list[Callable[[], Awaitable[None]]],
) -> None:
    """Migrate, connect, and start the loops in `tg` (closers are appended to `resources`)."""
    dsn = config.database.url.get_secret_value()
    # Migrations finish even if a stop is requested meanwhile: each runs in its own transaction
    # under an advisory lock, and an interrupted one would only be rolled back and redone.
    with anyio.CancelScope(shield=True):
        await migrate(dsn)
    pool = await db.create_pool(
        dsn, min_size=config.database.pool_min, max_size=config.database.pool_max
    )
    resources.append(pool.close)
    client = ChainClient(
        config.chain.rpc_url.get_secret_value(),
        timeout=config.chain.rpc_timeout,
        attempts=config.chain.rpc_attempts,
    )
    resources.append(client.close)
    indexer = Indexer(
        client,
        pool,
        chain_id=chain_id,
        addresses={
            "StreamManager": deployment.stream_manager,
            "EscrowVault": deployment.escrow_vault,
        },
        start_block=deployment.deployment_block,
        settings=config.ingest.settings(),
        ws_url=config.chain.ws_url.get_secret_value() if config.chain.ws_url else None,
    )
    await tg.start(indexer.run)
    if signers:
        # The same finality fallback as the indexer's, so "final" means one thing.
        settings = replace(config.tx.settings(), finality_depth=config.ingest.finality_depth)
        manager = TxManager(client, pool, chain_id=chain_id, signers=signers, settings=settings)
        tg.start_soon(_tx_loop, manager, config.tx.poll_interval)
        usage = config.plan.usage
        if usage:
            lacking = await signers_without_oracle_role(
                client, deployment.stream_manager, [s.address for s in signers]
            )
            if lacking:
                usage = False
                log.error(
                    "usage_disabled",
                    reason="signers without ORACLE_ROLE on StreamManager",
                    signers=lacking,
                    help="grant every signer ORACLE_ROLE, or set plan.usage = false",
                )
        planner = Planner(
            chain_id,
            stream_manager=deployment.stream_manager,
            escrow_vault=deployment.escrow_vault,
            settings=config.plan.settings(),
            usage=usage,
        )
        tg.start_soon(_plan_loop, planner, client, pool, config.plan.interval)
    log.info(
        "keeper_started",
        start_block=deployment.deployment_block,
        signers=[s.address for s in signers],
    )
