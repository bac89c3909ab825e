"""The Grafana dashboard shipped in `dashboards/keeper.json` queries only metrics the keeper
exposes: every name in every panel's expression is checked against a real /metrics, served by
keeper.service.health with the registry as the daemon process has it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keeper.service.daemon  # noqa: F401 - registers the daemon's metrics, as in the real process
from keeper.service.health import HealthState
from tests.support.http import request, serving

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "keeper.json"
METRIC_NAME = re.compile(r"\bkeeper_[a-z0-9_]+\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# What the issue asks the dashboard to show, by the metric that shows it.
SHOWN = {
    "head/indexed/finalized blocks": (
        "keeper_head_block",
        "keeper_indexed_block",
        "keeper_finalized_block",
    ),
    "index lag": ("keeper_index_lag_seconds",),
    "events indexed": ("keeper_events_indexed_total",),
    "reorgs and their depth": ("keeper_reorgs_total", "keeper_reorg_depth_blocks_bucket"),
    "RPC requests, errors, latency by method": (
        "keeper_rpc_requests_total",
        "keeper_rpc_errors_total",
        "keeper_rpc_latency_seconds_bucket",
    ),
    "database latency": ("keeper_db_latency_seconds_bucket",),
    "intents by kind and state": ("keeper_intents", "keeper_tx_intents_total"),
    "attempts and bumps": ("keeper_tx_attempts_total",),
    "gas spent": ("keeper_tx_gas_spent_wei_total",),
    "settle/refund/usage amounts": (
        "keeper_settled_amount_24h",
        "keeper_usage_charged_24h",
        "keeper_refunded_amount_24h",
    ),
    "signer balances and nonces": ("keeper_signer_balance_wei", "keeper_signer_next_nonce"),
    "planning pass duration": ("keeper_plan_pass_seconds_bucket",),
    "leader status": ("keeper_leader",),
    "pending work": ("keeper_pending_work",),
    # The alerting signals (prometheus/keeper.rules.yml).
    "readiness": ("keeper_ready",),
    "loop failures": ("keeper_loop_failures_total",),
    "stuck intents": ("keeper_signer_oldest_unconfirmed_seconds",),
    "gas runway": ("keeper_signer_gas_runway_seconds",),
    "usage billing": ("keeper_usage_billing_enabled",),
    "contract reverts": ("keeper_rpc_reverts_total",),
    "wall-clock lag": ("keeper_index_wall_lag_seconds",),
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions(board: dict[str, Any]) -> dict[str, str]:
    """`panel title / refId` -> PromQL, for every target of every panel and the variables."""
    out = {
        f"{p['title']} / {t['refId']}": t["expr"]
        for p in panels(board["panels"])
        for t in p.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            out[f"${variable['name']}"] = variable["definition"]
    return out


def exposition(text: str) -> tuple[set[str], dict[str, str]]:
    """The names in a Prometheus exposition (from HELP/TYPE lines, which prometheus_client
    writes even for a labelled metric with no child yet, and from samples) and the types."""
    names: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            fields = line.split()
            names.add(fields[2])
            if fields[1] == "TYPE":
                types[fields[2]] = fields[3]
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, types


def exposed(name: str, names: set[str], types: dict[str, str]) -> bool:
    if name in names:
        return True
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return True
    return False


async def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    board = dashboard()
    async with serving(HealthState(chain_id=31337)) as port:
        reply = await request(port, "GET", "/metrics")
    assert reply.status == 200
    names, types = exposition(reply.body.decode())
    queried = {
        where: METRIC_NAME.findall(expr) for where, expr in expressions(board).items() if expr
    }
    assert all(queried.values()), [w for w, found in queried.items() if not found]
    unknown = {
        where: [n for n in found if not exposed(n, names, types)]
        for where, found in queried.items()
    }
    assert {w: n for w, n in unknown.items() if n} == {}


def test_the_dashboard_shows_what_the_issue_lists() -> None:
    queried = {n for expr in expressions(dashboard()).values() for n in METRIC_NAME.findall(expr)}
    missing = {subject: names for subject, names in SHOWN.items() if not set(names) <= queried}
    assert missing == {}


def test_the_dashboard_is_a_portable_grafana_dashboard() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    all_panels = list(panels(board["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert '{instance=~"$instance"' in target["expr"], target["expr"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
