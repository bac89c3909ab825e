"""The alerting rules shipped in `prometheus/keeper.rules.yml`, checked by Prometheus's own
promtool (Debian's `prometheus` package; `.ci/run` installs it): `promtool check rules`, the
rules' unit tests `promtool test rules prometheus/keeper.rules.test.yml`, and every metric a rule
queries served by a real /metrics with the registry as the daemon process has it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import keeper.service.daemon  # noqa: F401 - registers the daemon's metrics, as in the real process
from keeper.service.health import HealthState
from tests.support.http import request, serving
from tests.unit.test_dashboard import METRIC_NAME, exposed, exposition

PROMETHEUS = Path(__file__).resolve().parents[2] / "prometheus"
RULES = PROMETHEUS / "keeper.rules.yml"
RULE_TESTS = PROMETHEUS / "keeper.rules.test.yml"
# What the issue asks the rules to alert on, by alert.
ALERTS = {
    "keeper down": "KeeperDown",
    "not ready": "KeeperNotReady",
    "index lag": "KeeperIndexLagging",
    "stuck intent": "KeeperIntentStuck",
    "signer balance low": "KeeperSignerBalanceLow",
    "signer runway low": "KeeperSignerRunwayLow",
    "failed intents": "KeeperIntentsFailing",
    "deep reorgs": "KeeperReorgDeep",
    "frequent reorgs": "KeeperReorgsFrequent",
    "usage rejected rate": "KeeperUsageRejected",
    "usage disabled": "KeeperUsageBillingDisabled",
    "loop failures": "KeeperLoopFailing",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS` from the prometheus directory (the test file names the rules relatively)."""
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed: apt-get install prometheus (as .ci/run does)"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=120, check=False
    )


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.M)


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_and_the_issue_list_is_covered() -> None:
    names = alert_names()
    assert len(names) == len(set(names))
    assert set(ALERTS.values()) <= set(names)
    tests = RULE_TESTS.read_text(encoding="utf-8")
    untested = [n for n in names if f"alertname: {n}\n" not in tests]
    assert untested == []


@pytest.mark.anyio
async def test_every_metric_a_rule_queries_is_exposed() -> None:
    exprs = re.findall(r"expr: (.+(?:\n {12}.+)*)", RULES.read_text(encoding="utf-8"))
    queried = {n for expr in exprs for n in METRIC_NAME.findall(expr)}
    assert "keeper_ready" in queried and "keeper_signer_gas_runway_seconds" in queried
    async with serving(HealthState(chain_id=31337)) as port:
        reply = await request(port, "GET", "/metrics")
    assert reply.status == 200
    names, types = exposition(reply.body.decode())
    assert sorted(n for n in queried if not exposed(n, names, types)) == []
