"""The metrics the health port reads from the database when it is scraped.

`DatabaseCollector` is a prometheus_client custom collector: `/metrics` first awaits
`refresh()` (one read-only transaction, at most once per `PROBE_TTL`), then the exposition calls
`collect()`, which yields metric families from the last successful read. When the database does
not answer, the families are served as they were and `keeper_metrics_refresh_errors_total` counts
the miss.

The index gauges (head, indexed and finalized block, lag, indexed timestamp) are read from
the database at every scrape, in the leader too: the indexer writes its cursor and what it last
saw of the head there range by range, so a scrape during a long backfill or an RPC outage shows
what `/status` shows at that moment (the indexer's own gauges, set once per poll, would still
say what the poll began with). Before the first successful read, the indexer's gauges are
served. `keeper_index_wall_lag_seconds` (now minus the indexed block's timestamp) keeps growing
while the RPC is down, when the head the keeper last saw is frozen.

Per signer (labelled by checksummed address, as the transaction manager's gauges): the age of
the oldest intent signed and not confirmed yet (a stuck nonce), what its intents mined in the
last hour paid, and its gas runway, balance / that hourly spend in seconds (+Inf when it spent
nothing in the last hour).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import structlog
from eth_utils import to_checksum_address
from prometheus_client import Gauge, Metric
from prometheus_client.core import GaugeMetricFamily

from keeper import metrics
from keeper.db import to_int
from keeper.db.queries import Queries
from keeper.kinds import INTENT_KINDS
from keeper.service.status import OPEN_STATES

if TYPE_CHECKING:
    from keeper.service.health import HealthState

log = structlog.get_logger(__name__)

DB_TIMEOUT = 2.0
PROBE_TTL = 1.0

# What a database read may fail with: unreachable or refusing (OSError, asyncpg's connection
# and interface errors, a closed pool), a server error, or our own timeout.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

# (gauge of the indexer, column of `metrics_gauges`)
INDEX_GAUGES: tuple[tuple[Gauge, str], ...] = (
    (metrics.HEAD_BLOCK, "head_block"),
    (metrics.INDEXED_BLOCK, "indexed_block"),
    (metrics.FINALIZED_BLOCK, "finalized_block"),
    (metrics.LAG_SECONDS, "lag_seconds"),
    (metrics.INDEXED_TIMESTAMP, "indexed_timestamp"),
)
WALL_LAG_HELP = (
    "Wall-clock seconds since the indexed block's timestamp (from the database): grows while "
    "the RPC is down and the head the keeper last saw is frozen."
)
SIGNER_HELP = {
    "keeper_signer_oldest_unconfirmed_seconds": "Age of each signer's oldest intent signed and "
    "not confirmed yet (assigned or mined), seconds; 0 when none (from the database).",
    "keeper_signer_spent_last_hour_wei": "Gas paid by each signer's intents mined in the last "
    "hour: gas used x effective gas price plus any L1 fee, wei (from the database).",
    "keeper_signer_gas_runway_seconds": "Each signer's balance divided by its spend of the last "
    "hour, in seconds; +Inf when it spent nothing in the last hour (from the database).",
}
USAGE_BILLING_HELP = (
    "1 while the leader bills usage; 0 when usage billing is configured (plan.usage) but "
    "switched off because a signer lacks ORACLE_ROLE. Absent on a standby or with usage off by "
    "configuration."
)
SECONDS_PER_HOUR = 3600
# The `kind` label of keeper_pending_work, by column.
PENDING_COLUMNS = (
    ("settle", "settle_due"),
    ("refund", "refund_due"),
    ("usage", "usage_pending"),
    ("usage_received", "usage_received"),
)
# Token amounts in base units. A float in the exposition only: Prometheus has no other type.
AMOUNTS = (
    (
        "keeper_settled_amount_24h",
        "settled_amount",
        "Tokens settled from streams (fee included) in the last 24 h of chain time, base units "
        "(from the database).",
    ),
    (
        "keeper_usage_charged_24h",
        "usage_charged",
        "Tokens charged by usage reports in the last 24 h of chain time, base units "
        "(from the database).",
    ),
    (
        "keeper_refunded_amount_24h",
        "refunded_amount",
        "Tokens refunded from expired escrows in the last 24 h of chain time, base units "
        "(from the database).",
    ),
)
INTENTS_HELP = (
    "Intents not settled yet (planned, assigned, mined, confirmed), by kind and state "
    "(from the database)."
)
PENDING_HELP = (
    "Work waiting for the keeper (from the database): settle (streams due), refund (escrows "
    "refundable), usage (accepted reports not recorded), usage_received (rows not validated)."
)


def error_name(exc: BaseException) -> str:
    """What an answer may say of an error: its type only (messages can quote secrets)."""
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


class Cached:
    """The result of an async function that never raises, kept for `ttl` seconds; concurrent
    callers wait for one call instead of making their own."""

    def __init__(self, fn: Callable[[], Awaitable[dict[str, Any]]], ttl: float) -> None:
        self._fn = fn
        self._ttl = ttl
        self._lock = anyio.Lock()
        self._value: dict[str, Any] = {}
        self._at: float | None = None

    async def get(self) -> dict[str, Any]:
        """The cached result, calling the function when it is older than `ttl`."""
        async with self._lock:
            if self._at is None or time.monotonic() - self._at >= self._ttl:
                self._value = await self._fn()
                self._at = time.monotonic()
            return self._value


class DatabaseCollector:
    """The database-derived metrics of one health port (register it on `metrics.REGISTRY`
    while the port serves; one port per process)."""

    def __init__(
        self, state: HealthState, queries: Queries, db_slots: anyio.CapacityLimiter
    ) -> None:
        self.state = state
        self.q = queries
        self.db_slots = db_slots
        self.cached = Cached(self._read, PROBE_TTL)
        # The last values read; a value the database gave as NULL keeps the one before.
        self.index: dict[str, float] = {}
        self.amounts: dict[str, float] = {column: 0.0 for _, column, _ in AMOUNTS}
        self.pending: dict[str, float] = {}
        self.intents: dict[tuple[str, str], float] = {}
        self.wall_lag: float | None = None
        # signer -> (oldest unconfirmed seconds, spent last hour wei, runway seconds)
        self.signers: dict[str, tuple[float, int, float]] = {}

    async def refresh(self) -> None:
        """Read the database (at most once per `PROBE_TTL`); never raises."""
        try:
            await self.cached.get()
        # A bug in the refresh must not take the process's own metrics down with it.
        except Exception:
            metrics.METRICS_REFRESH_ERRORS.inc()
            log.exception("metrics_refresh_failed")

    async def _read(self) -> dict[str, Any]:
        pool = self.state.pool
        if pool is None:
            return {"ok": False}
        chain_id = self.state.chain_id
        try:
            with anyio.fail_after(DB_TIMEOUT):
                async with self.db_slots, pool.acquire() as conn, conn.transaction(readonly=True):
                    row = await conn.fetchrow(self.q["metrics_gauges"], chain_id)
                    intents = await conn.fetch(self.q["metrics_intents"], chain_id)
                    signers = await conn.fetch(self.q["metrics_signers"], chain_id)
        except DB_ERRORS as exc:
            metrics.METRICS_REFRESH_ERRORS.inc()
            log.warning("metrics_refresh_failed", error=error_name(exc))
            return {"ok": False}
        assert row is not None  # one row always (left joins)
        self.index.update({c: float(row[c]) for _, c in INDEX_GAUGES if row[c] is not None})
        self.amounts.update({c: float(row[c]) for _, c, _ in AMOUNTS if row[c] is not None})
        if row["wall_lag_seconds"] is not None:
            self.wall_lag = float(row["wall_lag_seconds"])
        self.pending = {kind: float(row[column]) for kind, column in PENDING_COLUMNS}
        self.signers = {to_checksum_address(bytes(r["signer"])): _signer(r) for r in signers}
        counts = {(r["kind"], r["state"]): int(r["n"]) for r in intents}
        self.intents = {
            (kind, state): float(counts.get((kind, state), 0))
            for kind in INTENT_KINDS
            for state in OPEN_STATES
        }
        return {"ok": True}

    def collect(self) -> Iterator[Metric]:
        """The families, from the last successful read (the index gauges: see the module)."""
        for gauge, column in INDEX_GAUGES:
            if column not in self.index:
                yield from gauge.collect()
            else:
                (family,) = gauge.collect()
                yield GaugeMetricFamily(family.name, family.documentation, self.index[column])
        # Families without a value yet are still described (HELP and TYPE, no sample).
        wall_lag = GaugeMetricFamily("keeper_index_wall_lag_seconds", WALL_LAG_HELP, labels=[])
        if self.wall_lag is not None:
            wall_lag.add_metric([], self.wall_lag)
        yield wall_lag
        for i, (name, documentation) in enumerate(SIGNER_HELP.items()):
            family = GaugeMetricFamily(name, documentation, labels=["signer"])
            for signer, values in self.signers.items():
                family.add_metric([signer], float(values[i]))
            yield family
        billing = self.state.usage_billing
        enabled = GaugeMetricFamily("keeper_usage_billing_enabled", USAGE_BILLING_HELP, labels=[])
        if billing is not None:
            enabled.add_metric([], 1.0 if billing["enabled"] else 0.0)
        yield enabled
        intents = GaugeMetricFamily("keeper_intents", INTENTS_HELP, labels=["kind", "state"])
        for (kind, state), value in self.intents.items():
            intents.add_metric([kind, state], value)
        yield intents
        pending = GaugeMetricFamily("keeper_pending_work", PENDING_HELP, labels=["kind"])
        for kind, value in self.pending.items():
            pending.add_metric([kind], value)
        yield pending
        for name, column, documentation in AMOUNTS:
            yield GaugeMetricFamily(name, documentation, self.amounts[column])


def _signer(row: Any) -> tuple[float, int, float]:
    """(oldest unconfirmed seconds, spent last hour in wei, runway seconds) of a signer row.
    The runway is whole seconds of integer arithmetic (no float on the way), +Inf without spend."""
    balance, spent = to_int(row["balance"]), to_int(row["spent_last_hour"])
    runway = float(balance * SECONDS_PER_HOUR // spent) if spent > 0 else float("inf")
    return float(row["oldest_unconfirmed_seconds"]), spent, runway
