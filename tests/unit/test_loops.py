"""LoopGuard: a failed pass is counted, reported and paced; nothing it is given stops a loop."""

from __future__ import annotations

from structlog.testing import capture_logs

from keeper import metrics
from keeper.chain.rpc import RpcUnavailable
from keeper.loops import LoopGuard, describe


def _failures(loop: str, kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "keeper_loop_failures_total", {"loop": loop, "kind": kind}
    )
    return value or 0.0


def _bug() -> Exception:
    try:
        raise KeyError("no such column")
    except KeyError as exc:
        return exc


def test_a_fault_is_logged_with_its_traceback_once_counted_and_paced() -> None:
    seen: list[str] = []
    guard = LoopGuard("tx", 1.0, on_error=seen.append, max_delay=5.0)
    before = _failures("tx", "fault")
    with capture_logs() as logs:
        delays = [guard.failed(_bug()) for _ in range(4)]
    assert delays == [2.0, 4.0, 5.0, 5.0]  # doubling, capped
    assert _failures("tx", "fault") == before + 4
    lines = [e for e in logs if e["event"] == "tx_pass_failed"]
    assert len(lines) == 4 and all(e["unexpected"] for e in lines)
    assert lines[0]["exc_info"] is not None  # the traceback, the first time only
    assert [e["exc_info"] for e in lines[1:]] == [None, None, None]
    assert seen == ["tx pass failed: KeyError: 'no such column'"] * 4


def test_another_fault_gets_its_traceback_and_a_success_starts_afresh() -> None:
    guard = LoopGuard("plan", 1.0)
    with capture_logs() as logs:
        guard.failed(_bug())
        guard.failed(ValueError("other"))  # a different error: its traceback too
        guard.succeeded()
        assert guard.failed(_bug()) == 2.0  # the pacing starts again
    tracebacks = [e["exc_info"] is not None for e in logs if e["event"] == "plan_pass_failed"]
    assert tracebacks == [True, True, True]


def test_an_outage_is_one_line_without_a_traceback() -> None:
    guard = LoopGuard("sync", 0.5)
    before = _failures("sync", "outage")
    with capture_logs() as logs:
        assert guard.failed(RpcUnavailable("node down", method="eth_blockNumber")) == 1.0
    assert _failures("sync", "outage") == before + 1
    [line] = [e for e in logs if e["event"] == "sync_failed"]
    assert "exc_info" not in line and "unexpected" not in line


def test_describe_names_an_error_in_one_line() -> None:
    assert describe(ValueError("first\nsecond")) == "ValueError: first"
    assert describe(RuntimeError()) == "RuntimeError"
