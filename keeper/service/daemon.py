"""The daemon: one root task group running the keeper's loops until a signal stops it.

Start-up: the health port, migrations, the database pool and the RPC client, the first head
(then systemd hears READY=1), and the leader election. Of the keepers sharing a database and
chain, the one holding the leader lock (keeper.service.leader) runs the indexer, the transaction
manager and the planners; the others wait as standbys, serving the health port.

SIGTERM or SIGINT: systemd hears STOPPING=1, the indexer stops at once (its open transaction
rolls back), the transaction and planning loops finish the pass they are in, and the process
exits 0; whatever still runs after `daemon.shutdown_grace` seconds is cancelled (its
transactions roll back too: every write is crash-safe). A loop that dies takes the process down
with a non-zero status so systemd restarts it; a reorg below the finalized block exits with
`EXIT_FATAL_REORG` (3), which the unit file does not restart; a leader that loses its lock
exits 1 and comes back as a standby. A configuration error found at start (a key, the wrong
chain, a taken health port) is raised as a `PermanentError`: exit 78, not restarted either.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import asyncpg
import structlog
from anyio import CancelScope
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import Counter, Gauge, Histogram

from keeper import db, metrics, secrets
from keeper.chain import preflight
from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import signers_without_oracle_role
from keeper.chain.rpc import BlockHeader, ChainClient, RpcResponseError
from keeper.chain.signers import Signer, load_signers
from keeper.config import KeeperConfig
from keeper.db.migrations import migrate
from keeper.db.retention import Retention
from keeper.errors import unwrap_group
from keeper.ingest.indexer import FatalReorg, Indexer
from keeper.loops import OUTAGES, LoopGuard
from keeper.plan.planner import PassReport, Planner
from keeper.service import health, sdnotify
from keeper.service.health import HealthState
from keeper.service.leader import Leadership, LeadershipLost
from keeper.service.retention import retention_loop
from keeper.tx.manager import TxManager

log = structlog.get_logger(__name__)

T = TypeVar("T")
USAGE_DISABLED_REASON = "signers without ORACLE_ROLE on StreamManager"
USAGE_DISABLED_HELP = "grant every signer ORACLE_ROLE, or set plan.usage = false"
# What the start-up's chain checks wait out (a node answering them with an error included).
_WAITED_OUT_AT_START: tuple[type[Exception], ...] = (*OUTAGES, RpcResponseError)

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
USAGE_ROWS.labels("accepted")
for _outcome in ("recorded", "rejected", "undone"):
    USAGE_RECONCILED.labels(_outcome)
LEADER = Gauge(
    "keeper_leader",
    "1 while this process holds the chain's leader lock (indexes, plans and sends), else 0.",
    registry=metrics.REGISTRY,
)
PLAN_PASS_SECONDS = Histogram(
    "keeper_plan_pass_seconds",
    "Duration of one planning pass (settle, refund and usage).",
    registry=metrics.REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Heartbeat:
    """The loops' passes in progress: the watchdog stops pinging systemd when one of them has
    been running for longer than `stall_after` seconds (a hung call, not a slow chain)."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._since: dict[str, float] = {}

    @contextmanager
    def busy(self, loop: str) -> Iterator[None]:
        self._since[loop] = time.monotonic()
        try:
            yield
        finally:
            self._since.pop(loop, None)

    def stuck(self) -> list[str]:
        now = time.monotonic()
        return sorted(name for name, t in self._since.items() if now - t > self.stall_after)


@dataclass
class _Run:
    """What one `keeper run` works with."""

    config: KeeperConfig
    deployment: Deployment
    chain_id: int
    signers: list[Signer]
    state: HealthState
    heartbeat: Heartbeat
    shutdown: anyio.Event = field(default_factory=anyio.Event)
    # Closers of what was opened, called in reverse order at exit.
    resources: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def _stop_on_signal(
    shutdown: anyio.Event,
    already: Callable[[], bool],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        if already():
            # A stop request that came before this receiver existed (see keeper.cli).
            log.info("stopping", signal="SIGTERM")
            shutdown.set()
            return
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            shutdown.set()
            return


async def _shutdown_deadline(
    shutdown: anyio.Event, state: HealthState, scope: CancelScope, grace: float
) -> None:
    """Once a stop is requested: tell systemd, then cancel whatever still runs after `grace`."""
    await shutdown.wait()
    state.role = "stopping"
    LEADER.set(0)
    sdnotify.stopping("stopping")
    await anyio.sleep(grace)
    log.warning("shutdown_grace_exceeded", grace_s=grace, help="unfinished passes were cancelled")
    scope.cancel()


async def _pause(shutdown: anyio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when a stop is requested."""
    with anyio.move_on_after(seconds):
        await shutdown.wait()


async def _until(
    shutdown: anyio.Event,
    func: Callable[..., Coroutine[Any, Any, None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run `func` (started with task_status) until it returns or a stop is requested."""
    async with anyio.create_task_group() as tg:
        await tg.start(func)
        task_status.started()
        await shutdown.wait()
        tg.cancel_scope.cancel()


def _guard(loop: str, interval: float, run: _Run, event: str | None = None) -> LoopGuard:
    """The failure accounting of one of `run`'s loops; its errors show in /status."""

    def report(text: str) -> None:
        run.state.last_error = secrets.scrub(text)

    return LoopGuard(loop, interval, on_error=report, event=event)


async def _tx_loop(manager: TxManager, run: _Run) -> None:
    """Drive the outbox until a stop is requested; a failed pass (an outage or any other
    error) is reported and retried after a growing pause, never fatal. A pass in progress when
    the stop comes is finished."""
    interval, shutdown = run.config.tx.poll_interval, run.shutdown
    guard = _guard("tx", interval, run)
    while not shutdown.is_set():
        try:
            with run.heartbeat.busy("tx"):
                report = await manager.tick()
        except Exception as exc:  # contained: see keeper.loops
            await _pause(shutdown, guard.failed(exc))
            continue
        guard.succeeded()
        if any(vars(report).values()):
            log.info("tx_pass", **vars(report))
        await _pause(shutdown, interval)


async def _waiting_out_the_rpc(run: _Run, what: str, func: Callable[[], Awaitable[T]]) -> T | None:
    """`func()`, asked again while the RPC is unreachable or answers with an error (logged as
    `<what>_failed`, counted under loop="start"); None if a stop is requested meanwhile. A
    configuration mistake it finds (`ConfigError`) is raised: waiting would not mend it."""
    guard = _guard("start", 1.0, run, event=f"{what}_failed")
    while not run.shutdown.is_set():
        try:
            return await func()
        except _WAITED_OUT_AT_START as exc:
            await _pause(run.shutdown, guard.failed(exc))
    return None


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


async def _plan_loop(planner: Planner, client: ChainClient, pool: asyncpg.Pool, run: _Run) -> None:
    """Plan due work every `plan.interval` once the backfill is done, until a stop is
    requested; one summary line per pass that found something. A pass in progress is finished."""
    interval, shutdown = run.config.plan.interval, run.shutdown
    guard = _guard("plan", interval, run)
    usage_guard = _guard("usage", interval, run)
    stored = False
    while not shutdown.is_set():
        try:
            with run.heartbeat.busy("plan"):
                async with pool.acquire() as conn:
                    if not stored:
                        await planner.store_settings(conn)
                        stored = True
                    if await planner.backfill_done(conn):
                        head = await client.head()
                        started = time.perf_counter()
                        async with AsyncExitStack() as spares:
                            spare = await db.spare_connections(
                                pool, spares, run.config.plan.pass_connections - 1
                            )
                            report = await planner.plan_pass(
                                conn, base_fee=head.base_fee, spare=spare
                            )
                        PLAN_PASS_SECONDS.observe(time.perf_counter() - started)
                        _report_pass(report)
                        if report.usage_error is not None:
                            usage_guard.failed(report.usage_error)
                        else:
                            usage_guard.succeeded()
        except Exception as exc:  # contained: see keeper.loops
            await _pause(shutdown, guard.failed(exc))
            continue
        guard.succeeded()
        await _pause(shutdown, interval)


def _status_line(state: HealthState) -> str:
    """The one-line STATUS= systemd shows in `systemctl status`."""
    indexed = metrics.REGISTRY.get_sample_value("keeper_indexed_block")
    head = metrics.REGISTRY.get_sample_value("keeper_head_block")
    parts = [state.role]
    if state.role == "leader" and indexed:
        parts.append(f"indexed block {int(indexed)}")
        if head:
            parts.append(f"head {int(head)}")
    return ", ".join(parts)


async def _watchdog(state: HealthState, heartbeat: Heartbeat) -> None:
    """WATCHDOG=1 to systemd at half its WatchdogSec= while no loop is stuck, and a STATUS=
    line; without a watchdog, only the STATUS= line every 10 s."""
    interval = sdnotify.watchdog_interval()
    withheld = False
    while True:
        stuck = heartbeat.stuck()
        if interval is not None:
            if stuck:
                if not withheld:
                    log.error("watchdog_withheld", stuck=stuck, stall_after_s=heartbeat.stall_after)
                withheld = True
            else:
                sdnotify.watchdog()
                withheld = False
        sdnotify.status(_status_line(state))
        await anyio.sleep(interval or 10.0)


async def run(config: KeeperConfig, stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run until signalled; return the process exit status.

    The signal receiver is in place before anything else starts, so a SIGTERM during
    migrations or connection set-up stops the daemon cleanly too. `stop_requested` reports a
    signal that arrived even earlier, before the event loop ran.
    """
    deployment = config.deployment()  # refuses a chain.chain_id other than the file's
    chain_id = deployment.chain_id
    # Keys first: a bad key file stops the start-up before anything is opened.
    signers = load_signers([s.source() for s in config.signers])
    for signer in signers:  # keys decrypted from keystores: scrubbed from all output too
        secrets.register_key(signer.key.reveal_hex())
    structlog.contextvars.bind_contextvars(chain_id=chain_id)
    state = HealthState(chain_id=chain_id, max_lag_seconds=config.health.max_lag_seconds)
    # A pass is stuck (and the watchdog withheld) once it outlasts every retry of one request
    # twice over, plus a minute for the database.
    stall = 2 * config.chain.rpc_timeout * config.chain.rpc_attempts + 60
    run = _Run(config, deployment, chain_id, signers, state, Heartbeat(stall))
    grace = config.daemon.shutdown_grace
    try:
        with unwrap_group():
            async with anyio.create_task_group() as tg:
                await tg.start(_stop_on_signal, run.shutdown, stop_requested)
                tg.start_soon(_shutdown_deadline, run.shutdown, state, tg.cancel_scope, grace)
                await _main(run, tg)
                tg.cancel_scope.cancel()  # the health port and the watchdog stop with the rest
    except FatalReorg as exc:
        log.critical("fatal_reorg", error=exc.message, help=exc.help)
        return FatalReorg.exit_code
    except LeadershipLost as exc:
        log.error("leadership_lost", error=exc.message, help=exc.help)
        raise
    finally:
        LEADER.set(0)
        with anyio.move_on_after(5, shield=True):
            for close in reversed(run.resources):
                await close()
    log.info("keeper_stopped")
    return 0


async def _main(run: _Run, tg: TaskGroup) -> None:
    """Start up, wait to lead, then lead until a stop is requested."""
    config, state = run.config, run.state
    dsn = config.database.url.get_secret_value()
    if config.health.enabled:
        # Bound first: a port taken by another keeper stops this one before it does any work
        # (keeper.ports); until the pool and the client exist, the port says so.
        port = await tg.start(health.serve, config.health.host, config.health.port, state)
        log.info("health_listening", url=f"http://{config.health.host}:{port}")
    # Migrations finish even if a stop is requested meanwhile: each runs in its own transaction
    # under an advisory lock, and an interrupted one would only be rolled back and redone.
    with anyio.CancelScope(shield=True):
        await migrate(dsn)
    if run.shutdown.is_set():
        return
    pool = await db.create_pool(
        dsn, min_size=config.database.pool_min, max_size=config.database.pool_max
    )
    run.resources.append(pool.close)
    client = config.chain.client()
    run.resources.append(client.close)
    state.pool, state.client = pool, client
    # With several providers, each is probed in the background (chain id, head, finality):
    # a lagging or failing one is demoted, one on another chain excluded.
    client.pool.expected_chain_id = run.chain_id
    tg.start_soon(client.probe_forever)

    async def chain_checked() -> BlockHeader:
        head = await client.head()
        await preflight.check_chain(config, run.deployment, client)
        return head

    head = await _waiting_out_the_rpc(run, "chain_check", chain_checked)
    if head is None:
        return
    state.role = "standby"
    sdnotify.ready(f"standby, head {head.number}")
    tg.start_soon(_watchdog, state, run.heartbeat)
    leadership = Leadership(dsn, run.chain_id, config.daemon.leader_lease)
    run.resources.append(leadership.close)
    if not await leadership.acquire(run.shutdown):
        return
    state.role = "leader"
    LEADER.set(1)
    sdnotify.status(_status_line(state))
    await _lead(run, pool, client, leadership)


async def _lead(run: _Run, pool: asyncpg.Pool, client: ChainClient, leadership: Leadership) -> None:
    """Index, plan and send until a stop is requested (or the leader lock is lost)."""
    config, deployment, chain_id, signers = run.config, run.deployment, run.chain_id, run.signers
    indexer = Indexer(
        client,
        pool,
        chain_id=chain_id,
        addresses={
            "StreamManager": deployment.stream_manager,
            "EscrowVault": deployment.escrow_vault,
        },
        start_block=deployment.deployment_block,
        settings=config.ingest,
        ws_url=config.chain.ws_url.get_secret_value() if config.chain.ws_url else None,
        on_error=lambda text: setattr(run.state, "last_error", secrets.scrub(text)),
    )
    async with anyio.create_task_group() as work:
        await work.start(_until, run.shutdown, leadership.hold)
        await work.start(_until, run.shutdown, indexer.run)
        if config.retention.enabled:
            work.start_soon(
                partial(
                    retention_loop,
                    Retention(chain_id, config.retention),
                    pool,
                    shutdown=run.shutdown,
                    heartbeat=run.heartbeat,
                    guard=_guard("retention", config.retention.interval, run),
                )
            )
        if signers:
            # The same finality depth as the indexer's, so "final" means one thing, and one
            # batch gas cap for the planner and the manager.
            manager = TxManager(
                client,
                pool,
                chain_id=chain_id,
                signers=signers,
                settings=config.tx,
                finality_depth=config.ingest.finality_depth,
                max_batch_gas=config.plan.max_batch_gas,
            )
            work.start_soon(_tx_loop, manager, run)
            usage = config.plan.usage
            if usage:
                lacking = await _waiting_out_the_rpc(
                    run,
                    "oracle_role_check",
                    lambda: signers_without_oracle_role(
                        client, deployment.stream_manager, [s.address for s in signers]
                    ),
                )
                if lacking is None:
                    return  # stopped while waiting
                if lacking:
                    usage = False
                    log.error(
                        "usage_disabled",
                        reason=USAGE_DISABLED_REASON,
                        signers=lacking,
                        help=USAGE_DISABLED_HELP,
                    )
                run.state.usage_billing = {
                    "enabled": usage,
                    "reason": None if usage else USAGE_DISABLED_REASON,
                    "signers_without_role": lacking,
                }
            planner = Planner(
                chain_id,
                stream_manager=deployment.stream_manager,
                escrow_vault=deployment.escrow_vault,
                settings=config.plan,
                usage=usage,
            )
            work.start_soon(_plan_loop, planner, client, pool, run)
        log.info(
            "keeper_started",
            start_block=deployment.deployment_block,
            signers=[s.address for s in signers],
        )
