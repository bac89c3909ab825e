"""Usage billed per endpoint (price lists) and the limits of a packed report: the field check
of a row's endpoint, the verdicts that resolve it to the payee's endpoint id, the sequence
numbers a report word can carry, and the urgency of runs with a deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keeper.config import PlanConfig
from keeper.plan.accrual import MAX_USAGE_SEQ
from keeper.plan.batches import MAX_REPORT_SEQ
from keeper.plan.inbox import MAX_SEQ, ParsedRow, Rejection, parse_row
from keeper.plan.planner import Planner
from keeper.plan.usage import StreamState, UsageItem, contiguous_runs, judge, run_urgency

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PA, PB = b"\xaa" * 20, b"\xbb" * 20
GRACE = timedelta(minutes=5)
LISTED = {(PA, "chat"): 1, (PA, "embed"): 2, (PB, "chat"): 1}


def row(stream: int, key: str, endpoint: str | None = None) -> ParsedRow:
    return ParsedRow(stream, 5, key, None, NOW, endpoint)


def decide(
    *parsed: ParsedRow,
    streams: dict[int, StreamState],
    received: datetime = NOW - timedelta(hours=1),
    chain_time: int | None = None,
) -> tuple[dict[int, tuple[int | None, int, str | None]], int]:
    verdicts, waiting = judge(
        [(i + 1, p, received) for i, p in enumerate(parsed)],
        streams,
        {},
        highest_stream=max(streams),
        now=NOW,
        grace=GRACE,
        endpoints=LISTED,
        chain_time=chain_time,
    )
    return {
        v.inbox_id: (v.seq, v.endpoint, v.rejection.reason if v.rejection else None)
        for v in verdicts
    }, waiting


def test_an_endpoint_is_read_as_its_name_and_blank_is_none() -> None:
    named = parse_row("1", "5", "k", None, None, NOW, "chat/completions")
    assert isinstance(named, ParsedRow) and named.endpoint == "chat/completions"
    for blank in (None, "", "  \t"):
        none = parse_row("1", "5", "k", None, None, NOW, blank)
        assert isinstance(none, ParsedRow) and none.endpoint is None
    # Old callers and rows without the column: no endpoint.
    old = parse_row("1", "5", "k", None, None, NOW)
    assert isinstance(old, ParsedRow) and old.endpoint is None


def test_an_endpoint_name_longer_than_bytes32_is_malformed() -> None:
    assert isinstance(parse_row("1", "5", "k", None, None, NOW, "x" * 32), ParsedRow)
    long = parse_row("1", "5", "k", None, None, NOW, "é" * 17)  # 34 bytes in UTF-8
    assert isinstance(long, Rejection) and long.reason == "malformed_endpoint"
    assert "34 bytes" in long.detail and "at most 32" in long.detail


def test_a_listed_endpoint_is_resolved_to_its_id_per_payee() -> None:
    streams = {
        1: StreamState("open", 1, payee=PA, price_list=True),
        2: StreamState("open", 7, payee=PB, price_list=True),
        3: StreamState("open", 1, payee=PA, price_list=False),
    }
    got, waiting = decide(
        row(1, "a", "embed"),
        row(1, "b", "chat"),
        row(2, "c", "chat"),
        row(3, "d", "embed"),  # an own-price stream may name a listed endpoint
        row(3, "e"),  # ... or none: its own price
        streams=streams,
    )
    assert waiting == 0
    assert got == {
        1: (1, 2, None),
        2: (2, 1, None),
        3: (7, 1, None),
        4: (1, 2, None),
        5: (2, 0, None),
    }


def test_an_unknown_endpoint_is_rejected_naming_the_endpoint_and_the_payee() -> None:
    streams = {
        1: StreamState("open", 1, payee=PA, price_list=True),
        2: StreamState("open", 1, payee=PB, price_list=False),
    }
    verdicts, waiting = judge(
        [
            (1, row(1, "a", "images"), NOW - timedelta(hours=1)),  # not listed by A
            (2, row(1, "b"), NOW),  # a list stream names none
            (3, row(2, "c", "embed"), NOW - timedelta(hours=1)),  # B lists no "embed"
            (4, row(1, "d", "chat"), NOW),  # the next one still gets sequence 1
        ],
        streams,
        {},
        highest_stream=2,
        now=NOW,
        grace=GRACE,
        endpoints=LISTED,
    )
    assert waiting == 0
    by_id = {v.inbox_id: v for v in verdicts}
    assert [by_id[i].rejection.reason for i in (1, 2, 3)] == ["unknown_endpoint"] * 3  # type: ignore[union-attr]
    first, second, third = (by_id[i].rejection.detail for i in (1, 2, 3))  # type: ignore[union-attr]
    assert "'images'" in first and "0x" + PA.hex() in first and "stream 1" in first
    assert "names no endpoint" in second and "0x" + PA.hex() in second
    assert "'embed'" in third and "0x" + PB.hex() in third
    assert (by_id[4].seq, by_id[4].endpoint, by_id[4].rejection) == (1, 1, None)


def test_a_fresh_row_naming_an_endpoint_not_indexed_yet_waits() -> None:
    """An endpoint added in a block the indexer has not reached: the row waits as a row for a
    new stream does, and is rejected past the grace period."""
    streams = {1: StreamState("open", 1, payee=PA, price_list=True)}
    got, waiting = decide(row(1, "a", "images"), streams=streams, received=NOW)
    assert got == {} and waiting == 1
    got, waiting = decide(row(1, "a", "images"), streams=streams)
    assert got == {1: (None, 0, "unknown_endpoint")} and waiting == 0


def test_a_closing_stream_takes_usage_until_its_close_at() -> None:
    def closing() -> dict[int, StreamState]:
        return {1: StreamState("closing", 3, payee=PA, close_at=1_000)}

    assert decide(row(1, "a"), streams=closing(), chain_time=999)[0] == {1: (3, 0, None)}
    late = decide(row(1, "a"), streams=closing(), chain_time=1_000)[0]
    assert late == {1: (None, 0, "stream_closed")}
    assert decide(row(1, "a"), streams={1: StreamState("closed", 3)})[0] == {
        1: (None, 0, "stream_closed")
    }


def test_sequence_numbers_stop_where_a_report_word_does() -> None:
    """32 bits of sequence in the contract and in the report word: 2^32-1 is the last."""
    assert MAX_SEQ == min(MAX_USAGE_SEQ, MAX_REPORT_SEQ) == 2**32 - 1
    last = decide(row(1, "a"), streams={1: StreamState("open", MAX_SEQ, payee=PA)})[0]
    assert last == {1: (MAX_SEQ, 0, None)}
    over = decide(row(1, "a"), streams={1: StreamState("open", MAX_SEQ + 1, payee=PA)})[0]
    assert over == {1: (None, 0, "sequence_exhausted")}


@pytest.mark.parametrize(
    ("stream_id", "ok"), [(str(2**64 - 1), True), (str(2**64), False), (str(2**70), False)]
)
def test_a_stream_id_a_report_cannot_carry_is_rejected(stream_id: str, ok: bool) -> None:
    result = parse_row(stream_id, "5", "k", None, None, NOW)
    if ok:
        assert isinstance(result, ParsedRow)
    else:
        assert isinstance(result, Rejection) and result.reason == "stream_id_out_of_range"
        assert "2^64-1" in result.detail


# --------------------------------------------------------------------------- urgency


def item(stream: int, seq: int, payee: bytes, urgent: str | None = None) -> UsageItem:
    return UsageItem(stream, 10, seq, payee, 3, 0, urgent)


def test_a_run_is_urgent_when_any_of_its_reports_is() -> None:
    runs, _ = contiguous_runs(
        [
            (1, 1, 10, 0, PA, 3, 1, None),
            (1, 2, 10, 0, PA, 3, 2, "endpoint_price_change"),
            (2, 1, 10, 0, PB, 3, 0, None),
        ],
        limit=10,
    )
    assert [run_urgency(r) for r in runs] == ["endpoint_price_change", None]


def planner(ceiling: int | None = 100) -> Planner:
    return Planner(
        1,
        stream_manager="0x" + "11" * 20,
        escrow_vault="0x" + "22" * 20,
        settings=PlanConfig(base_fee_ceiling_wei=ceiling),
    )


def test_urgent_runs_go_in_batches_of_their_own_and_alone_above_the_ceiling() -> None:
    runs = [
        [item(1, 1, PA), item(1, 2, PA, "stream_closing")],
        [item(2, 1, PB)],
        [item(3, 4, PB, "price_change")],
    ]
    p = planner()
    batches = p.usage_batches(7, runs)
    assert [(b.urgent, b.items) for b in batches] == [
        (True, [[1, 10, 1, 0], [1, 10, 2, 0], [3, 10, 4, 0]]),
        (False, [[2, 10, 1, 0]]),
    ]
    assert batches[0].reasons == {"1:1": "usage", "1:2": "stream_closing", "3:4": "price_change"}
    assert batches[0].amount == 3 * 30
    held = p.usage_batches(7, runs, urgent_only=p.urgent_only(101))
    assert [(b.urgent, len(b.items)) for b in held] == [(True, 3)]
