"""The usage oracle's pure rules: field checks, verdicts and sequence numbers, runs, batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.plan.inbox import (
    EARLIEST_OBSERVED_AT,
    MAX_SEQ,
    MAX_USAGE_UNITS,
    OBSERVED_AT_SKEW,
    ParsedRow,
    Rejection,
    parse_row,
    received_at_out_of_range,
)
from keeper.plan.usage import DueRow, StreamState, contiguous_runs, judge, pack_runs

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
        ({"stream_id": "0"}, "stream_id_out_of_range"),
        ({"stream_id": "-3"}, "stream_id_out_of_range"),
        ({"stream_id": str(2**256)}, "stream_id_out_of_range"),
        ({"stream_id": str(2**64)}, "stream_id_out_of_range"),  # does not fit a report
        ({"units": None}, "missing_units"),
        ({"units": "abc"}, "malformed_units"),
        ({"units": "1.5"}, "malformed_units"),
        ({"units": "1e3"}, "malformed_units"),
        ({"units": "9" * 79}, "units_out_of_range"),
        ({"units": "0"}, "units_not_positive"),
        ({"units": "-5"}, "units_not_positive"),
        ({"units": str(MAX_USAGE_UNITS + 1)}, "units_out_of_range"),
        ({"key": None}, "missing_producer_key"),
        ({"key": ""}, "missing_producer_key"),
        ({"key": "k" * 201}, "malformed_producer_key"),
        ({"label": "x" * 201}, "malformed_label"),
        ({"observed_at": "yesterday"}, "malformed_observed_at"),
        ({"observed_at": "2026-11-21 10:00:00"}, "malformed_observed_at"),  # no offset
        ({"observed_at": "999999999999"}, "observed_at_out_of_range"),  # past year 9999
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


# --------------------------------------------------------------------------- the grammar

SAME_AS_FIVE = ["5", "0005", "+5", " 5 ", "5\n", "\t5\r\n", "\v\f5", "0" * 94 + "5"]
NOT_NUMBERS = [
    "\uff15",  # FULLWIDTH DIGIT FIVE: int() reads it as 5
    "\u0665",  # ARABIC-INDIC DIGIT FIVE: int() reads it as 5
    "\u00b2",  # SUPERSCRIPT TWO
    "1_000",  # int() reads it as 1000
    "\u00a05",  # NBSP around the digits: str.strip() takes it, ASCII whitespace does not
    "5\u3000",
    "\x1c5",  # str.strip() takes the ASCII separators \x1c-\x1f too
    "+ 5",
    "++5",
    "5-",
    "5.",
    "5.0",
    "1e3",
    "0x10",
    "0b1",
    "infinity",
    "NaN",
]


@pytest.mark.parametrize("text", SAME_AS_FIVE)
@pytest.mark.parametrize("column", ["stream_id", "units"])
def test_every_way_of_writing_five_is_five_in_every_number_column(column: str, text: str) -> None:
    row = parse(**{column: text})
    assert isinstance(row, ParsedRow)
    assert getattr(row, column) == 5


@pytest.mark.parametrize("text", NOT_NUMBERS)
@pytest.mark.parametrize("column", ["stream_id", "units"])
def test_what_is_not_a_whole_number_is_malformed_in_every_number_column(
    column: str, text: str
) -> None:
    result = parse(**{column: text})
    assert isinstance(result, Rejection)
    assert result.reason == f"malformed_{column}"
    assert "is not a whole number (ASCII digits" in result.detail


@pytest.mark.parametrize(
    ("column", "text", "reason"),
    [
        ("stream_id", "0" * 5_000 + "7", None),  # no length limit on zeros
        ("stream_id", "0" * 200, "stream_id_out_of_range"),
        ("stream_id", "9" * 95, "stream_id_out_of_range"),
        ("stream_id", "9" * 5_000, "stream_id_out_of_range"),  # past int()'s 4,300 digits
        ("stream_id", "-" + "9" * 5_000, "stream_id_out_of_range"),
        ("units", "0" * 5_000 + "7", None),
        ("units", "9" * 95, "units_out_of_range"),
        ("units", "9" * 5_000, "units_out_of_range"),
        ("units", "-" + "9" * 5_000, "units_not_positive"),
        ("units", "-0", "units_not_positive"),
        ("units", "+0", "units_not_positive"),
    ],
)
def test_length_is_never_the_reason(column: str, text: str, reason: str | None) -> None:
    result = parse(**{column: text})
    if reason is None:
        assert isinstance(result, ParsedRow) and getattr(result, column) == 7
    else:
        assert isinstance(result, Rejection) and result.reason == reason
        assert len(result.detail) < 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21t10:00:00z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21 10:00:00.25+00", datetime(2026, 11, 21, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-11-21T15:30+05:30", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T15:30:00+0530", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T00:00:00-00:00:15", datetime(2026, 11, 21, 0, 0, 15, tzinfo=UTC)),
        ("2026-11-21T10:00:00.123456789Z", datetime(2026, 11, 21, 10, 0, 0, 123_456, tzinfo=UTC)),
        (" 2026-11-21T10:00:00Z\n", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T12:05:00Z", NOW + timedelta(minutes=5)),  # the skew, to the microsecond
        ("2015-07-30T00:00:00Z", EARLIEST_OBSERVED_AT),
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("+01700000000.000001999", datetime(2023, 11, 14, 22, 13, 20, 1, tzinfo=UTC)),
        ("0" * 95 + "1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_observed_at_that_is_accepted(text: str, expected: datetime) -> None:
    row = parse(observed_at=text)
    assert isinstance(row, ParsedRow), row
    assert row.observed_at == expected
    assert row.observed_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # The rows: beyond Python's datetime once in UTC, or stored as -infinity.
        ("0001-01-01T00:00:00+05:00", "observed_at_out_of_range"),
        ("9999-12-31T23:59:59.999999-05:00", "observed_at_out_of_range"),
        ("0001-01-01T00:00:00Z", "observed_at_out_of_range"),
        ("9999-12-31T23:59:59.999999Z", "observed_at_out_of_range"),
        ("0000-01-01T00:00:00Z", "observed_at_out_of_range"),
        ("20000-01-01T00:00:00Z", "observed_at_out_of_range"),
        ("0" * 5_000 + "1-01-01T00:00:00Z", "observed_at_out_of_range"),
        ("9" * 5_000 + "-01-01T00:00:00Z", "observed_at_out_of_range"),
        ("2015-07-29T23:59:59.999999Z", "observed_at_out_of_range"),
        ("2026-11-21T12:05:00.000001Z", "observed_at_out_of_range"),  # skew + 1 µs
        ("0", "observed_at_out_of_range"),
        ("-1", "observed_at_out_of_range"),
        ("-1700000000.5", "observed_at_out_of_range"),
        ("99999999999", "observed_at_out_of_range"),
        ("9" * 5_000, "observed_at_out_of_range"),
        ("-" + "9" * 5_000 + ".9", "observed_at_out_of_range"),
        ("1" + "0" * 300 + ".5", "observed_at_out_of_range"),
        ("infinity", "malformed_observed_at"),
        ("-infinity", "malformed_observed_at"),
        ("NaN", "malformed_observed_at"),
        ("1e9", "malformed_observed_at"),
        ("1_700_000_000", "malformed_observed_at"),
        ("\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10", "malformed_observed_at"),
        ("1700000000.", "malformed_observed_at"),
        (".5", "malformed_observed_at"),
        ("2026-11-21", "malformed_observed_at"),
        ("2026-11-21T10:00:00", "malformed_observed_at"),  # no offset
        ("2026-02-30T10:00:00Z", "malformed_observed_at"),
        ("2026-11-21T24:00:00Z", "malformed_observed_at"),
        ("2026-11-21T10:00:60Z", "malformed_observed_at"),
        ("2026-11-21T10:00:00+24:00", "malformed_observed_at"),
        ("2026-11-21T10:00:00+05:60", "malformed_observed_at"),
        ("2026-11-21x10:00:00Z", "malformed_observed_at"),
        ("2026-11-21T10:00:00 +00:00", "malformed_observed_at"),
        ("20261121T100000Z", "malformed_observed_at"),
        ("2026-W47-6T10:00:00Z", "malformed_observed_at"),
        ("\u0662026-11-21T10:00:00Z", "malformed_observed_at"),
        ("\u00a02026-11-21T10:00:00Z", "malformed_observed_at"),
        ("2026-11-21 10:00:00+00 BC", "malformed_observed_at"),
        ("2026-11-21T10:00:00Z[UTC]", "malformed_observed_at"),
    ],
)
def test_observed_at_that_is_rejected(text: str, reason: str) -> None:
    result = parse(observed_at=text)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail.startswith("observed_at ")


def test_observed_at_rejections_say_why() -> None:
    early = parse(observed_at="0001-01-01T00:00:00+05:00")
    late = parse(observed_at="9999-12-31T23:59:59.999999-05:00")
    bare = parse(observed_at="2026-11-21T10:00:00")
    assert isinstance(early, Rejection) and "is before 2015-07-30" in early.detail
    assert isinstance(late, Rejection)
    assert "is more than 5 minutes after the row arrived" in late.detail
    assert isinstance(bare, Rejection) and "has no time zone offset" in bare.detail


def test_a_received_at_out_of_range_has_its_own_reason() -> None:
    rejection = received_at_out_of_range("infinity")
    assert rejection.reason == "received_at_out_of_range"
    assert "received_at 'infinity' is not a time the row can have arrived at" in rejection.detail


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.one_of(st.none(), st.text(), st.sampled_from(SAME_AS_FIVE + NOT_NUMBERS)),
        min_size=5,
        max_size=5,
    )
)
def test_no_field_makes_parse_row_raise(fields: list[str | None]) -> None:
    result = parse_row(fields[0], fields[1], fields[2], fields[3], fields[4], NOW)
    if isinstance(result, Rejection):
        assert result.reason and result.detail
    else:
        assert 0 < result.stream_id <= 2**64 - 1 and 0 < result.units <= MAX_USAGE_UNITS
        assert EARLIEST_OBSERVED_AT <= result.observed_at <= NOW + OBSERVED_AT_SKEW


# --------------------------------------------------------------------------- verdicts


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
    due: list[DueRow] = [
        (1, 3, 10, 2, PB, 7, 0, None),
        (1, 4, 11, 2, PB, 7, 0, None),
        (1, 6, 12, 2, PB, 7, 0, None),  # 5 missing: stops here
        (2, 5, 1, 3, PA, 1, 0, None),  # expects 4: a gap
        (3, 1, 1, 0, PA, 1, 2, None),
        (3, 2, 1, 0, PA, 1, 2, None),
        (3, 3, 1, 0, PA, 1, 2, None),
    ]
    runs, gaps = contiguous_runs(due, limit=2)
    assert [[(u.stream_id, u.seq) for u in run] for run in runs] == [
        [(1, 3), (1, 4)],
        [(3, 1), (3, 2)],
    ]
    assert gaps == [(2, 4, 5)]
    assert runs[0][0].item == [1, 10, 3, 0]
    assert runs[1][0].item == [3, 1, 1, 2]


def test_whole_runs_are_packed_by_payee() -> None:
    runs, _ = contiguous_runs(
        [
            (1, 1, 1, 0, PB, 1, 0, None),
            (1, 2, 1, 0, PB, 1, 0, None),
            (2, 1, 1, 0, PA, 1, 0, None),
            (3, 1, 1, 0, PA, 1, 0, None),
            (3, 2, 1, 0, PA, 1, 0, None),
        ],
        limit=3,
    )
    batches = pack_runs(runs, size=3)
    # Payee A's streams first; stream 1's run does not fit after them and is never split.
    assert [[(u.stream_id, u.seq) for u in b] for b in batches] == [
        [(2, 1), (3, 1), (3, 2)],
        [(1, 1), (1, 2)],
    ]
