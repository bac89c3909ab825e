"""What an operator's Prometheus sees of a real `keeper run`, compared with /status.

Real processes throughout: anvil mining a block a second, PostgreSQL, `keeper run` as a
subprocess, and the test suite's RPC proxy (tests/support/rpc_proxy.py) between them.

- During a long backfill (eth_getLogs slowed by the proxy, small ranges) and during an RPC
  outage (the proxy answering 502 to everything), the head, indexed and finalized blocks and
  the lag on /metrics are what /status says at that moment: never a stale 0. During the outage
  the wall-clock lag grows, `keeper_ready` is 0 and the sync loop's outages are counted.
- A paused StreamManager: its reverts are counted in keeper_rpc_reverts_total, not as RPC
  errors. Signers without ORACLE_ROLE: usage billing off shows in /readyz (degraded, still
  200), /status, `keeper status`, `keeper check-config` and keeper_usage_billing_enabled.
- `promtool check metrics` finds nothing wrong in a real /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.service.scrape import SECONDS_PER_HOUR
from tests.support.chain import send_and_mine, tx
from tests.support.daemon import Keeper, Outboxes, keeper, wait_until
from tests.support.rpc_proxy import RpcProxy
from tests.support.world import SIGNER_KEYS, confirmed, events, get, health_url, keeper_in, logged

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
INDEX_METRICS = {
    "keeper_head_block": "head_block",
    "keeper_indexed_block": "indexed_block",
    "keeper_finalized_block": "finalized_block",
    "keeper_index_lag_seconds": "lag_seconds",
}


def scrape(base: str) -> tuple[dict[str, float], str]:
    """The samples of /metrics by `name{labels}` (as written), and the text."""
    code, text = get(f"{base}/metrics")
    assert code == 200, text
    samples = {}
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found:
            samples[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return samples, text


def status(base: str) -> dict[str, Any]:
    code, body = get(f"{base}/status")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def between(value: float, a: float | None, b: float | None) -> bool:
    assert a is not None and b is not None
    return min(a, b) <= value <= max(a, b)


def compared(base: str) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """/status, /metrics, /status, with the metrics read from the database between the two
    (its cache lasts a second: the previous scrape is more than a second old)."""
    time.sleep(1.1)
    before = status(base)
    samples, _ = scrape(base)
    after = status(base)
    return before, samples, after


def with_ingest(keeper: Keeper, extra: str) -> None:
    text = keeper.config.read_text(encoding="utf-8")
    keeper.config.write_text(text.replace("[ingest]\n", f"[ingest]\n{extra}\n"), encoding="utf-8")


def promtool_check_metrics(text: str) -> None:
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed: apt-get install prometheus (as .ci/run does)"
    checked = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def test_the_index_gauges_tell_the_truth_during_a_backfill_and_an_rpc_outage(
    world: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    node, d = world
    # 1,500 blocks 12 s apart behind the head: a backfill of 60 ranges of 25 blocks, each
    # eth_getLogs held 0.25 s by the proxy.
    rpc(node.url, "anvil_mine", [hex(1500), hex(12)])
    outbox = Outboxes(database_url)
    with RpcProxy(node.url) as proxy:
        proxy.delay_next(None, 0.25, methods=["eth_getLogs"])
        run = keeper_in(tmp_path / "a", proxy.url, d, database_url)
        with_ingest(run, "initial_range = 25\nmax_range = 25")
        try:
            run.start()
            base = health_url(run)
            during: list[tuple[dict[str, Any], dict[str, float], dict[str, Any]]] = []
            while len(during) < 3:
                before, samples, after = compared(base)
                if before["index"] is None or after["index"] is None:
                    continue
                assert not after["index"]["backfill_done"], "the backfill ended too soon"
                if before["index"]["head_block"] != after["index"]["head_block"]:
                    continue  # a new poll observed a new head in between
                during.append((before, samples, after))
            for before, samples, after in during:
                for metric, column in INDEX_METRICS.items():
                    assert between(samples[metric], before["index"][column], after["index"][column])
                # The index lags by hours of chain time, and /metrics says so.
                assert samples["keeper_index_lag_seconds"] > 3600
                assert samples["keeper_ready"] == 0
            lags = [s["keeper_index_lag_seconds"] for _, s, _ in during]
            assert lags == sorted(lags, reverse=True) and lags[0] > lags[-1]

            proxy.clear_faults()
            wait_until("caught up", lambda: get(f"{base}/readyz")[0] == 200, run, timeout=120)
            wait_until("settlements mined", lambda: confirmed(outbox) >= 1, run, timeout=90)

            # The outage: every request answered 502, while the chain goes on.
            proxy.fail_next(None, 502)
            wait_until(
                "the sync loop's outage counted",
                lambda: (
                    scrape(base)[0]['keeper_loop_failures_total{kind="outage",loop="sync"}'] >= 1
                ),
                run,
                timeout=60,
            )
            first, samples, second = compared(base)
            for metric, column in INDEX_METRICS.items():
                assert samples[metric] == first["index"][column] == second["index"][column]
            wall = samples["keeper_index_wall_lag_seconds"]
            assert between(
                wall, first["index"]["wall_lag_seconds"], second["index"]["wall_lag_seconds"]
            )
            assert samples["keeper_ready"] == 0
            assert "rpc unreachable" in get(f"{base}/readyz")[1]
            time.sleep(2)
            later, _ = scrape(base)
            assert later["keeper_index_wall_lag_seconds"] >= wall + 2  # the wall clock runs on
            assert later["keeper_head_block"] == samples["keeper_head_block"]  # last seen head
            proxy.clear_faults()
            wait_until("ready again", lambda: get(f"{base}/readyz")[0] == 200, run, timeout=120)

            # Each signer's runway: its balance over what its intents mined in the last hour
            # paid, as the database has them.
            rows = outbox.fetch(
                "SELECT s.signer, s.balance, COALESCE(sum(i.gas_used::numeric * "
                "i.effective_gas_price + COALESCE(i.l1_fee, 0)), 0) AS spent "
                "FROM signer_state s LEFT JOIN intents i ON i.signer = s.signer "
                "AND i.mined_at >= now() - interval '1 hour' AND i.gas_used IS NOT NULL "
                "GROUP BY s.signer, s.balance"
            )
            samples, text = scrape(base)
            spent_any = False
            for row in rows:
                signer = "0x" + bytes(row["signer"]).hex()
                label = next(
                    k
                    for k in samples
                    if k.startswith("keeper_signer_gas_runway_seconds") and signer in k.lower()
                )
                spent = int(row["spent"])
                runway = samples[label]
                if spent:
                    spent_any = True
                    expected = int(row["balance"]) * SECONDS_PER_HOUR // spent
                    assert abs(runway - expected) <= expected * 0.01  # moved by a later pass
                else:
                    assert runway == float("inf")
            assert spent_any
            promtool_check_metrics(text)
            assert run.terminate(within=15)[0] == 0
        finally:
            run.stop()
            outbox.close()


def test_a_paused_contract_and_signers_without_oracle_role(
    world: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    node, d = world
    admin, manager = d.deployer, d.stream_manager
    send_and_mine(node.url, admin, [tx(admin, manager, "pause()")])
    run = keeper_in(tmp_path / "a", node.url, d, database_url)
    config = run.config
    config.write_text(
        config.read_text(encoding="utf-8").replace("usage = false", "usage = true"),
        encoding="utf-8",
    )
    signers = sorted(dev_key(i).address for i in SIGNER_KEYS)
    try:
        run.start()
        base = health_url(run)
        wait_until("usage_disabled", logged(run, "usage_disabled"), run)
        assert sorted(events(run, "usage_disabled")[0]["signers"]) == signers

        def reverts() -> float:
            samples, _ = scrape(base)
            return sum(v for k, v in samples.items() if k.startswith("keeper_rpc_reverts_total"))

        wait_until("the paused contract's reverts counted", lambda: reverts() >= 1, run)
        samples, text = scrape(base)
        # A revert is the contract answering, not the node failing.
        assert not [
            k
            for k, v in samples.items()
            if k.startswith("keeper_rpc_errors_total") and "RpcResponseError" in k and v > 0
        ]
        assert samples["keeper_usage_billing_enabled"] == 0

        code, body = get(f"{base}/readyz")
        assert code == 200, body  # settlement and refunds go on: ready, degraded
        ready = json.loads(body)
        assert ready["role"] == "leader"
        (degraded,) = ready["degraded"]
        assert degraded.startswith("usage billing disabled: signers without ORACLE_ROLE")
        assert all(s in degraded for s in signers)

        process = status(base)["process"]
        assert process["usage_billing"]["enabled"] is False
        assert sorted(process["usage_billing"]["signers_without_role"]) == signers
        assert process["degraded"] == [degraded]

        # `keeper status` reads the database alone: the signers' roles as indexed.
        wait_until(
            "the signers recorded",
            lambda: len(status(base)["signers"]) == len(signers),
            run,
        )
        shown = keeper("status", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith("usage ")]
        assert "billing OFF" in line and "ORACLE_ROLE" in line
        assert all(s.lower() in line for s in signers), line
        as_json = json.loads(keeper("status", "--config", str(config), "--json").stdout)
        assert as_json["signers_without_oracle_role"] == sorted(s.lower() for s in signers)

        checked = keeper("check-config", "--config", str(config))
        assert checked.returncode == 1
        assert "FAIL  usage" in checked.stderr and all(s in checked.stderr for s in signers)

        promtool_check_metrics(text)
        assert run.terminate(within=15)[0] == 0
    finally:
        run.stop()
