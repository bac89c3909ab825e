"""Pure parts of the operator commands: the backfill's progress line and verify's comparison."""

from __future__ import annotations

import io

import pytest

from keeper.ingest.backfill import format_progress, show_progress
from keeper.ingest.indexer import BackfillProgress
from keeper.ops.verify import Difference, State, compare
from keeper.progress import ProgressLine

A, B, C = (bytes([n]) * 20 for n in (1, 2, 3))


def test_the_progress_line_says_blocks_percent_rate_events_and_eta() -> None:
    p = BackfillProgress(first=101, target=1_100, block=350, events=12_345, elapsed=5.0)
    assert format_progress("indexing", p) == (
        "indexing 250/1,000 blocks (25.0%)  50 blocks/s  12,345 events  ETA 0:00:15"
    )
    assert "ETA -" in format_progress("indexing", BackfillProgress(1, 10, 1, 0, 0.0))


def test_on_a_terminal_one_line_is_rewritten_then_ended() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=True)
    show_progress(line, "indexing", BackfillProgress(1, 100, 10, 5, 1.0))
    # within 0.2 s: not drawn
    show_progress(line, "indexing", BackfillProgress(1, 100, 20, 9, 2.0))
    # the end is always drawn
    show_progress(line, "indexing", BackfillProgress(1, 100, 100, 50, 3.0))
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "10/100 blocks (10.0%)" in text and "100/100 blocks (100.0%)" in text
    line.close()  # already ended: nothing more
    assert out.getvalue() == text


def test_elsewhere_plain_lines_at_an_interval() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=False, interval=3600)
    for block in range(1, 101):
        show_progress(line, "checking", BackfillProgress(1, 100, block, block, 1.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first, then nothing for an hour, then the last
    assert lines[-1].startswith("checking 100/100 blocks (100.0%)")
    assert "\r" not in out.getvalue()


def stream(balance: int, status: str = "open") -> tuple[object, ...]:
    return (A, B, balance, 10, 1_000, 3, 2, status)


def params() -> dict[str, object]:
    return {"fee_bps": 250, "fee_recipient": C, "manager_paused": False, "vault_paused": False}


def test_equal_states_have_no_differences() -> None:
    state = State(
        streams={1: stream(500)},
        escrows={1: (A, B, 70, 9_999, "open")},
        credited={B: 40},
        vault={A: (1_000, 70)},
        params=params(),
    )
    assert compare(state, state) == []


def test_each_difference_names_kind_id_field_and_both_values() -> None:
    index = State(
        streams={1: stream(500), 2: stream(5)},
        escrows={1: (A, B, 70, 9_999, "open")},
        credited={B: 40},
        vault={A: (1_000, 70)},
        params=params(),
    )
    chain = State(
        streams={1: stream(490), 3: stream(7)},
        escrows={1: (A, B, 70, 9_999, "released")},
        credited={B: 41},
        vault={A: (1_000, 70)},
        params={**params(), "vault_paused": True},
    )
    found = {d.text() for d in compare(index, chain)}
    assert found == {
        "stream 1 balance: database 500, chain 490",
        "stream 2 exists: database true, chain false",
        "stream 3 exists: database false, chain true",
        "escrow 1 status: database open, chain released",
        f"credited 0x{B.hex()} credited: database 40, chain 41",
        "contract EscrowVault vault_paused: database false, chain true",
    }


def test_a_refunded_escrow_is_compared_on_what_the_contract_keeps() -> None:
    # getEscrow clears payer and amount of a refunded escrow; the index keeps them.
    index = State(escrows={4: (A, B, 70, 9_999, "refunded")}, params=params())
    chain = State(escrows={4: (bytes(20), B, 0, 9_999, "refunded")}, params=params())
    assert compare(index, chain) == []
    chain.escrows[4] = (bytes(20), C, 0, 9_999, "refunded")
    assert compare(index, chain) == [
        Difference("escrow", "4", "payee", "0x" + B.hex(), "0x" + C.hex())
    ]


@pytest.mark.parametrize("missing_side", ["index", "chain"])
def test_an_account_missing_on_one_side_counts_as_zero(missing_side: str) -> None:
    full = State(credited={B: 0}, vault={B: (0, 0)}, params=params())
    empty = State(params=params())
    pair = (empty, full) if missing_side == "index" else (full, empty)
    assert compare(*pair) == []
