"""An unexpected error while the transaction manager handles one intent stays with that intent.

Real anvil and Postgres. An error nothing expected (here: a bug injected into one intent's
simulation, or into one intent's receipt handling) must not fail the pass for the other
intents: the intent is backed off, the error is logged once with its traceback, counted, kept in
`keeper.tx_faults` and shown by `keeper status`; once the backoff is over and the intent goes
through, the record is cleared.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from keeper import metrics
from keeper.service.status import collect_status, render_status
from tests.support.tx import Env

pytestmark = pytest.mark.anyio


def _faults(stage: str) -> float:
    value = metrics.REGISTRY.get_sample_value("keeper_tx_intent_faults_total", {"stage": stage})
    return value or 0.0


def _break(step: object, method: str, key: str) -> dict[str, int]:
    """Make `step.<method>` raise for the intent with `key`; returns the call counts."""
    calls = {"broken": 0, "other": 0}
    original = getattr(step, method)

    async def broken(intent: Any, *args: Any, **kwargs: Any) -> Any:
        if intent.key == key:
            calls["broken"] += 1
            raise RuntimeError(f"injected bug for {key}")
        calls["other"] += 1
        return await original(intent, *args, **kwargs)

    setattr(step, method, broken)
    return calls


async def _fault_rows(env: Env) -> list[Any]:
    async with env.pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM keeper.tx_faults ORDER BY intent_id"))


async def test_a_bug_in_one_assignment_leaves_the_others_alone(env: Env) -> None:
    manager = env.manager_with(fault_backoff=1.0)
    broken_id = await env.plan("broken", [1])
    fine_id = await env.plan("fine", [2])
    calls = _break(manager.simulator, "simulate_or_split", "broken")
    before = _faults("assign")

    with capture_logs() as logs:
        await manager.tick()
        await manager.tick()  # backed off: not tried again yet, and not logged again
    assert await env.state(fine_id) in ("assigned", "mined")
    assert await env.state(broken_id) == "planned"
    assert calls["broken"] == 1
    assert _faults("assign") == before + 1
    faults = [e for e in logs if e["event"] == "intent_fault"]
    assert len(faults) == 1 and faults[0]["log_level"] == "error"
    assert faults[0]["intent"] == "broken" and faults[0]["stage"] == "assign"
    assert faults[0]["exc_info"] is not None  # the traceback, once
    rows = await _fault_rows(env)
    assert [(r["intent_id"], r["stage"], r["failures"]) for r in rows] == [(broken_id, "assign", 1)]
    assert "RuntimeError: injected bug for broken" in rows[0]["error"]

    # keeper status (and /status, which serves the same object) shows it.
    async with env.pool.acquire() as conn:
        status = await collect_status(conn, env.deployment.chain_id)
    assert status["tx_faults"]["intents"] == 1
    assert status["tx_faults"]["latest"]["key"] == "broken"
    assert "backed off  1 intent(s)" in render_status(status)
    assert "injected bug for broken" in render_status(status)

    # The same error again after the backoff: counted, one line at debug, the backoff doubles.
    await anyio.sleep(1.1)
    with capture_logs() as logs:
        await manager.tick()
    assert calls["broken"] == 2
    again = [e for e in logs if e["event"] == "intent_fault"]
    assert len(again) == 1 and again[0]["log_level"] == "debug"
    assert again[0]["retry_in_s"] == 2.0
    assert (await _fault_rows(env))[0]["failures"] == 2

    # The bug is fixed: once the backoff is over the intent goes out and the record is cleared.
    del manager.simulator.simulate_or_split  # the instance attribute: the class's method again
    await anyio.sleep(2.1)
    with capture_logs() as logs:
        await manager.tick()
    assert await env.state(broken_id) in ("assigned", "mined")
    assert any(e["event"] == "intent_fault_cleared" for e in logs)
    assert await _fault_rows(env) == []
    async with env.pool.acquire() as conn:
        assert (await collect_status(conn, env.deployment.chain_id))["tx_faults"] is None


async def test_a_bug_in_one_receipt_leaves_the_others_alone(env: Env) -> None:
    manager = env.manager_with(fault_backoff=60.0)
    env.automine(True)
    broken_id = await env.plan("broken-receipt", [1])
    fine_id = await env.plan("fine-receipt", [2])
    await manager.tick()  # both assigned and sent; automine mines them
    stuck_at = await env.state(broken_id)
    calls = _break(manager.receipts, "advance", "broken-receipt")
    started = time.monotonic()
    while await env.state(fine_id) != "confirmed" and time.monotonic() - started < 30:
        env.mine()
        await manager.tick()
    assert await env.state(fine_id) == "confirmed"
    assert await env.state(broken_id) == stuck_at != "confirmed"
    assert calls["broken"] == 1  # backed off for a minute after the first failure
    rows = await _fault_rows(env)
    assert [(r["intent_id"], r["stage"]) for r in rows] == [(broken_id, "receipts")]
