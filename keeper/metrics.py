"""Prometheus metrics of the keeper (one registry, bounded label sets).

Names follow the house convention: `keeper_<thing>_total` counters, `_seconds` histograms,
`_timestamp` gauges. The health port (keeper.service.health) serves `REGISTRY`, on which it
registers a collector of what it reads from the database at each scrape (keeper.service.scrape).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from keeper import __version__, urls

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux /proc).
ProcessCollector(registry=REGISTRY)
BUILD_INFO = Gauge(
    "keeper_build_info",
    "Always 1; the keeper's version in its label.",
    ["version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__).set(1)

# Seconds of a JSON-RPC round trip (all requests, and per provider).
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RPC_REQUESTS = Counter(
    "keeper_rpc_requests_total", "JSON-RPC requests sent, by method.", ["method"], registry=REGISTRY
)
RPC_ERRORS = Counter(
    "keeper_rpc_errors_total",
    "JSON-RPC requests that failed, by method and error kind.",
    ["method", "kind"],
    registry=REGISTRY,
)
# A call that reverted is the contract answering (a paused contract, a missing role, an item it
# refuses), not the node failing: counted here, never in keeper_rpc_errors_total, so an alert on
# RPC errors means the node.
RPC_REVERTS = Counter(
    "keeper_rpc_reverts_total",
    "eth_call / eth_estimateGas answers that were the call reverting, by method.",
    ["method"],
    registry=REGISTRY,
)
for _method in ("eth_call", "eth_estimateGas"):
    RPC_REVERTS.labels(method=_method)
RPC_LATENCY = Histogram(
    "keeper_rpc_latency_seconds",
    "JSON-RPC round-trip time, by method.",
    ["method"],
    registry=REGISTRY,
    buckets=RPC_BUCKETS,
)
# Per provider (label: scheme://host:port, made unique; never a path or key). With one provider
# these repeat the totals above under its label.
RPC_PROVIDER_REQUESTS = Counter(
    "keeper_rpc_provider_requests_total",
    "HTTP requests sent to each RPC provider (a batch counts once).",
    ["provider"],
    registry=REGISTRY,
)
RPC_PROVIDER_ERRORS = Counter(
    "keeper_rpc_provider_errors_total",
    "Failed requests per RPC provider, by kind (transport, timeout, http_<status>, bad_body, "
    "bad_reply, an error class, incomplete_logs).",
    ["provider", "kind"],
    registry=REGISTRY,
)
RPC_PROVIDER_LATENCY = Histogram(
    "keeper_rpc_provider_latency_seconds",
    "Round-trip time of the requests each RPC provider answered.",
    ["provider"],
    registry=REGISTRY,
    buckets=RPC_BUCKETS,
)
RPC_PROVIDER_HEAD_LAG = Gauge(
    "keeper_rpc_provider_head_lag_blocks",
    "How far each provider's head is behind the best provider's.",
    ["provider"],
    registry=REGISTRY,
)
RPC_PROVIDER_SELECTED = Gauge(
    "keeper_rpc_provider_selected",
    "1 for the provider reads go to, 0 for the others.",
    ["provider"],
    registry=REGISTRY,
)
RPC_PROVIDER_HEALTHY = Gauge(
    "keeper_rpc_provider_healthy",
    "1 while a provider may be chosen (right chain, not demoted after a failure, not lagging).",
    ["provider"],
    registry=REGISTRY,
)
DB_LATENCY = Histogram(
    "keeper_db_latency_seconds",
    "Time of the indexer's database transactions, by kind.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_INDEXED = Counter(
    "keeper_events_indexed_total", "Contract events written to the database.", registry=REGISTRY
)
BLOCKS_INDEXED = Counter(
    "keeper_blocks_indexed_total", "Blocks covered by the indexer.", registry=REGISTRY
)
REORGS = Counter("keeper_reorgs_total", "Chain reorganisations handled.", registry=REGISTRY)
REORG_DEPTH = Histogram(
    "keeper_reorg_depth_blocks",
    "Depth of handled reorganisations, in blocks.",
    registry=REGISTRY,
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
)
# The index gauges: set by the leader's indexer as it goes, exposed by the health port's
# collector (keeper.service.scrape), which reads them from the database elsewhere. Hence no
# registry here: the collector is their one exposition.
HEAD_BLOCK = Gauge("keeper_head_block", "The node's latest block number.", registry=None)
INDEXED_BLOCK = Gauge("keeper_indexed_block", "Last block fully indexed.", registry=None)
FINALIZED_BLOCK = Gauge("keeper_finalized_block", "The node's finalized block.", registry=None)
LAG_SECONDS = Gauge(
    "keeper_index_lag_seconds",
    "Head block timestamp minus the indexed block's timestamp.",
    registry=None,
)
INDEXED_TIMESTAMP = Gauge(
    "keeper_indexed_block_timestamp", "Timestamp of the last indexed block.", registry=None
)
BACKFILL_RANGE = Gauge(
    "keeper_backfill_range_blocks", "Current eth_getLogs range of the backfill.", registry=REGISTRY
)

READY = Gauge(
    "keeper_ready",
    "1 while /readyz would answer 200 (by role: see README), else 0; set at each /readyz and "
    "each scrape.",
    registry=REGISTRY,
)

# The health port's own (what it reads from the database: keeper.service.scrape).
HTTP_REQUESTS = Counter(
    "keeper_http_requests_total",
    "Requests to the health port, by path (other for unknown ones) and status code.",
    ["path", "code"],
    registry=REGISTRY,
)
METRICS_REFRESH_ERRORS = Counter(
    "keeper_metrics_refresh_errors_total",
    "Scrapes whose gauges could not be refreshed from the database (served as they were).",
    registry=REGISTRY,
)


def redact_url(url: str) -> str:
    """An RPC or database URL safe to log: scheme, host and port only (paths and query strings
    of hosted RPCs carry API keys). Never raises, whatever `url` is (see keeper.urls)."""
    return urls.redact_url(url)
