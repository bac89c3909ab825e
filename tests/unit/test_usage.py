"""The usage oracle's pure rules: field checks, verdicts and sequence numbers, runs, batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keeper.usage import (
    MAX_SEQ,
    MAX_USAGE_UNITS,
    ParsedRow,
    Rejection,
    StreamState,
    contiguous_runs,
    judge,
    pack_runs,
    parse_row,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def parse(
    stream_id: str | None = "1",
    units: str | None = "10",
    key: str | None = "k",
    label: str | None = None,
    observed_at: str | None = None,
) -> ParsedRow | Rejection:
    return parse_row(stream_id, units, key, label, observed_at, NOW)


def test_a_good_row_parses_to_integers_and_a_time() -> None:
    row = parse(" 7 ", "+250", "req-1", "GET /v1/chat", "2026-11-21 10:00:00+00")
    assert row == ParsedRow(
        7, 250, "req-1", "GET /v1/chat", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    )
    assert isinstance(row, ParsedRow) and type(row.units) is int


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"stream_id": None}, "missing_stream_id"),
        ({"stream_id": "  "}, "missing_stream_id"),
        ({"stream_id": "0x10"}, "malformed_stream_id"),
        ({"stream_id": "0"}, "malformed_stream_id"),
        ({"stream_id": "-3"}, "malformed_stream_id"),
        ({"stream_id": str(2**256)}, "malformed_stream_id"),
        ({"units": None}, "missing_units"),
        ({"units": "abc"}, "malformed_units"),
        ({"units": "1.5"}, "malformed_units"),
        ({"units": "1e3"}, "malformed_units"),
        ({"units": "9" * 79}, "malformed_units"),
        ({"units": "0"}, "units_not_positive"),
        ({"units": "-5"}, "units_not_positive"),
        ({"units": str(MAX_USAGE_UNITS + 1)}, "units_out_of_range"),
        ({"key": None}, "missing_producer_key"),
        ({"key": ""}, "missing_producer_key"),
        ({"key": "k" * 201}, "malformed_producer_key"),
        ({"label": "x" * 201}, "malformed_label"),
        ({"observed_at": "yesterday"}, "malformed_observed_at"),
        ({"observed_at": "2026-11-21 10:00:00"}, "malformed_observed_at"),  # no offset
        ({"observed_at": "999999999999"}, "malformed_observed_at"),  # past year 9999
    ],
)
def test_a_bad_field_is_rejected_with_its_reason(fields: dict[str, str], reason: str) -> None:
    result = parse(**fields)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail  # always a readable explanation


def test_units_at_the_contract_maximum_are_accepted() -> None:
    row = parse(units=str(MAX_USAGE_UNITS))
    assert isinstance(row, ParsedRow) and row.units == MAX_USAGE_UNITS


def test_observed_at_defaults_to_received_and_takes_unix_seconds() -> None:
    assert isinstance(row := parse(), ParsedRow) and row.observed_at == NOW
    row2 = parse(observed_at="1700000000.5")
    assert isinstance(row2, ParsedRow)
    assert row2.observed_at == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)


def rows(
    *parsed: ParsedRow | Rejection, received: datetime = NOW
) -> list[tuple[int, ParsedRow | Rejection, datetime]]:
    return [(i + 1, p, received) for i, p in enumerate(parsed)]


def good(stream: int, key: str, units: int = 5) -> ParsedRow:
    return ParsedRow(stream, units, key, None, NOW)


def test_verdicts_hand_out_consecutive_sequence_numbers_per_stream() -> None:
    streams = {1: StreamState("open", 4), 2: StreamState("open", 1)}
    verdicts, waiting = judge(
        rows(good(1, "a"), good(2, "b"), good(1, "c"), good(1, "d")),
        streams,
        {},
        highest_stream=2,
        now=NOW,
        grace=timedelta(minutes=5),
    )
    assert waiting == 0
    assert [(v.inbox_id, v.seq, v.rejection) for v in verdicts] == [
        (1, 4, None),
        (2, 1, None),
        (3, 5, None),
        (4, 6, None),
    ]
    assert streams[1].next_seq == 7 and streams[2].next_seq == 2


def test_duplicates_closed_and_unknown_streams_are_rejected_but_new_ids_wait() -> None:
    streams = {1: StreamState("open", 1), 2: StreamState("closed", 1)}
    accepted = {"old": 99}
    old = NOW - timedelta(hours=1)
    verdicts, waiting = judge(
        [
            (1, good(1, "old"), NOW),  # key accepted before
            (2, good(1, "x"), NOW),
            (3, good(1, "x"), NOW),  # same key again in this pass
            (4, good(2, "y"), NOW),  # closed
            (5, good(3, "z"), NOW),  # above the highest id, fresh: waits
            (6, good(3, "w"), old),  # above the highest id, past the grace: unknown
            (7, good(2, "v"), NOW),
            (8, Rejection("malformed_units", "bad"), NOW),
        ],
        streams,
        accepted,
        highest_stream=2,
        now=NOW,
        grace=timedelta(minutes=5),
    )
    assert waiting == 1
    got = {v.inbox_id: (v.seq, v.rejection.reason if v.rejection else None) for v in verdicts}
    assert got == {
        1: (None, "duplicate_producer_key"),
        2: (1, None),
        3: (None, "duplicate_producer_key"),
        4: (None, "stream_closed"),
        6: (None, "unknown_stream"),
        7: (None, "stream_closed"),
        8: (None, "malformed_units"),
    }
    assert "inbox row 99" in next(v for v in verdicts if v.inbox_id == 1).rejection.detail  # type: ignore[union-attr]


def test_an_unknown_id_at_or_below_the_highest_is_rejected_at_once() -> None:
    verdicts, waiting = judge(
        rows(good(5, "a")), {}, {}, highest_stream=9, now=NOW, grace=timedelta(hours=1)
    )
    assert waiting == 0 and verdicts[0].rejection is not None
    assert verdicts[0].rejection.reason == "unknown_stream"


def test_an_exhausted_sequence_is_rejected() -> None:
    verdicts, _ = judge(
        rows(good(1, "a")),
        {1: StreamState("open", MAX_SEQ + 1)},
        {},
        highest_stream=1,
        now=NOW,
        grace=timedelta(0),
    )
    assert verdicts[0].rejection is not None
    assert verdicts[0].rejection.reason == "sequence_exhausted"


PA, PB = b"\xaa" * 20, b"\xbb" * 20


def test_runs_continue_the_contract_sequence_and_stop_at_a_hole_or_the_limit() -> None:
    due = [
        (1, 3, 10, 2, PB, 7),
        (1, 4, 11, 2, PB, 7),
        (1, 6, 12, 2, PB, 7),  # 5 missing: stops here
        (2, 5, 1, 3, PA, 1),  # expects 4: a gap
        (3, 1, 1, 0, PA, 1),
        (3, 2, 1, 0, PA, 1),
        (3, 3, 1, 0, PA, 1),
    ]
    runs, gaps = contiguous_runs(due, limit=2)
    assert [[(u.stream_id, u.seq) for u in run] for run in runs] == [
        [(1, 3), (1, 4)],
        [(3, 1), (3, 2)],
    ]
    assert gaps == [(2, 4, 5)]
    assert runs[0][0].item == [1, 10, 3]


def test_whole_runs_are_packed_by_payee() -> None:
    runs, _ = contiguous_runs(
        [
            (1, 1, 1, 0, PB, 1),
            (1, 2, 1, 0, PB, 1),
            (2, 1, 1, 0, PA, 1),
            (3, 1, 1, 0, PA, 1),
            (3, 2, 1, 0, PA, 1),
        ],
        limit=3,
    )
    batches = pack_runs(runs, size=3)
    # Payee A's streams first; stream 1's run does not fit after them and is never split.
    assert [[(u.stream_id, u.seq) for u in b] for b in batches] == [
        [(2, 1), (3, 1), (3, 2)],
        [(1, 1), (1, 2)],
    ]
