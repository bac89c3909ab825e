"""Reading usage files (pure: no database): formats, headers, values kept as text, malformed
lines, the progress line and the summary."""

from __future__ import annotations

import io
import json
import re
import sys
from datetime import UTC, datetime

import pytest

from keeper.ops.usage_files import COLUMNS, Record, UsageReader, file_format
from keeper.ops.usage_import import NEXT_STEP, ImportSummary, draw_progress, progress_bar
from keeper.ops.usage_lines import (
    MalformedLine,
    UsageImportError,
    parse_csv_header,
    parse_csv_line,
    parse_json_line,
    snippet,
)
from keeper.plan.inbox import HUGE_DIGITS, parse_chain_id, whole_number
from keeper.progress import ProgressLine

NOW = datetime(2024, 6, 1, tzinfo=UTC)
HUGE = "115792089237316195423570985008687907853269984665640564039457584007913129639936"
HEADER = ("stream_id", "units", "producer_key")


def read(data: bytes, fmt: str, chain_id: int | None = None) -> tuple[UsageReader, list[Record]]:
    reader = UsageReader(io.BytesIO(data), fmt, source="f", chain_id=chain_id)
    return reader, list(reader.records(NOW))


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("file", "fmt"),
    [("usage.csv", "csv"), ("u.CSV", "csv"), ("a/b.jsonl", "jsonl"), ("x.ndjson", "jsonl")],
)
def test_format_comes_from_the_extension(file: str, fmt: str) -> None:
    assert file_format(file) == fmt


def test_an_explicit_format_wins() -> None:
    assert file_format("usage.txt", "jsonl") == "jsonl"
    assert file_format("-", "csv") == "csv"


@pytest.mark.parametrize(("file", "says"), [("usage.txt", "usage.txt"), ("-", "standard input")])
def test_an_unknown_format_is_refused_with_help(file: str, says: str) -> None:
    with pytest.raises(UsageImportError, match=f"cannot tell the format of {says}") as caught:
        file_format(file)
    assert "--format" in str(caught.value)


# --------------------------------------------------------------------------- CSV


def test_csv_header_names_in_any_order_spaces_around_them_ignored() -> None:
    names = parse_csv_header(" units ,producer_key,chain_id, stream_id,label,observed_at")
    assert names == ("units", "producer_key", "chain_id", "stream_id", "label", "observed_at")


def test_unknown_csv_columns_are_all_named() -> None:
    with pytest.raises(UsageImportError) as caught:
        parse_csv_header("stream_id,unit,producer_key,amount", "usage.csv")
    message = str(caught.value)
    assert "usage.csv: unknown columns 'unit', 'amount'" in message
    assert (
        "stream_id, units, producer_key and optionally label, observed_at, chain_id, endpoint"
        in message
    )


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("stream_id,units,producer_key,units", "'units' appears twice"),
        ("stream_id,producer_key", "lacks 'units'"),
        ('stream_id,"units', "not valid CSV"),
    ],
)
def test_bad_csv_headers_are_refused(header: str, says: str) -> None:
    with pytest.raises(UsageImportError, match=says):
        parse_csv_header(header)


def test_csv_values_are_kept_as_written_and_empty_is_none() -> None:
    row = parse_csv_line(f' 7 ,-5,"a, b",{HUGE},,1e3,""', 7)
    assert row == [" 7 ", "-5", "a, b", HUGE, None, "1e3", None]
    assert parse_csv_line(f"  7,1.50,{HUGE},", 4) == ["  7", "1.50", HUGE, None]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("1,2", "2 fields where the header has 3"),
        ("1,2,3,4", "4 fields where the header has 3"),
        ('1,"2,3', "not valid CSV (unexpected end of data)"),
        ('1,"2"x,3', "not valid CSV"),
        ("1,2\r3", "not valid CSV (new-line character seen in unquoted field"),
    ],
)
def test_unreadable_csv_lines(line: str, says: str) -> None:
    with pytest.raises(MalformedLine, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_csv_line(line, 3)


# --------------------------------------------------------------------------- JSON lines


def test_json_numbers_keep_their_text() -> None:
    row = parse_json_line(
        f'{{"stream_id": {HUGE}, "units": 1e3, "producer_key": -5, "label": 1.50, '
        '"observed_at": 0.1}'
    )
    assert row == {
        "stream_id": HUGE,
        "units": "1e3",
        "producer_key": "-5",
        "label": "1.50",
        "observed_at": "0.1",
    }
    assert all(type(v) is str for v in row.values())


def test_json_null_true_and_nested_values() -> None:
    row = parse_json_line(
        '{"stream_id": null, "units": true, "producer_key": false, '
        '"label": {"a": [1, 2.50, "x", null]}, "observed_at": ""}'
    )
    assert row == {
        "stream_id": None,
        "units": "true",
        "producer_key": "false",
        "label": '{"a":[1,2.50,"x",null]}',
        "observed_at": "",
    }


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"stream_id": 1, "units": ', "not valid JSON (Expecting value at column 27)"),
        ("[1, 2]", "a JSON array, not an object"),
        ('"text"', "a JSON string, not an object"),
        ("12", "a JSON number, not an object"),
        ("null", "a JSON null, not an object"),
        ('{"units": NaN}', "NaN is not a JSON value"),
        ('{"units": 1, "units": 2}', "key 'units' appears twice"),
        ('{"units": "a\\u0000b"}', "NUL character"),
        ('{"units": "\\ud800"}', "lone surrogate"),
        ("[" * 100_000, "JSON nested deeper than 20 levels"),
        ('{"label": ' + "[" * 21 + "]" * 21 + "}", "JSON nested deeper than 20 levels"),
    ],
)
def test_unreadable_json_lines(line: str, says: str) -> None:
    with pytest.raises(MalformedLine) as caught:
        parse_json_line(line)
    assert says in str(caught.value)


def test_brackets_inside_strings_are_not_nesting() -> None:
    label = '[{\\"' * 30
    assert parse_json_line(json.dumps({"label": label, "units": [[[1]]]})) == {
        "label": label,
        "units": "[[[1]]]",
    }


def test_a_deep_line_is_refused_even_with_a_raised_recursion_limit() -> None:
    # py_ecc (imported with web3) raises the limit to 100,000: json's C scanner would then
    # overflow the C stack on this line rather than raise RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(MalformedLine, match="nested deeper"):
            parse_json_line('{"units": ' + "[" * 200_000 + "}")
    finally:
        sys.setrecursionlimit(limit)


def test_a_proper_escaped_character_is_fine() -> None:
    assert parse_json_line('{"label": "caf\\u00e9 \\ud83d\\ude00"}') == {"label": "café 😀"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("31337", 31337),
        (" 5 ", 5),
        ("+7", 7),
        ("-1", -1),
        ("5\n", 5),
        ("\t0005\r", 5),
        ("0" * 94 + "5", 5),  # length is never the reason: zeros are zeros
        ("0" * 5_000 + "31337", 31337),
        (str(2**63 - 1), 2**63 - 1),
        (str(-(2**63)), -(2**63)),
    ],
)
def test_chain_ids_that_read_as_bigints(text: str, value: int) -> None:
    assert parse_chain_id(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "1.0",
        "1e3",
        "0x1",
        "1_000",
        str(2**63),
        str(-(2**63) - 1),
        "9" * 5_000,  # beyond int()'s 4,300 digits: out of range, not a crash
        "",
        "+",
        "- 1",
        "\u0663",  # ARABIC-INDIC DIGIT THREE
        "\uff15",  # FULLWIDTH DIGIT FIVE
        "\u00a05",  # NBSP is not ASCII whitespace
        "5\x1c",  # nor is a file separator, which str.strip() would take
    ],
)
def test_chain_ids_that_do_not(text: str) -> None:
    assert parse_chain_id(text) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("0005", 5),
        ("+5", 5),
        (" 5 ", 5),
        ("5\n", 5),
        ("\v\f5\t\r", 5),
        ("0" * 94 + "5", 5),
        ("-0", 0),
        ("-" + "0" * 200 + "7", -7),
        ("9" * 80, int("9" * 80)),
        ("9" * 81, 10**HUGE_DIGITS),
        ("-" + "1" * 5_000, -(10**HUGE_DIGITS)),
    ],
)
def test_the_whole_number_grammar(text: str, value: int) -> None:
    assert whole_number(text) == value


@pytest.mark.parametrize(
    "text", ["", " ", "+", "1 2", "1.5", "1e3", "0x10", "1_000", "\uff15", "\u0665", "\u00a05"]
)
def test_what_is_not_a_whole_number(text: str) -> None:
    assert whole_number(text) is None


def test_a_blank_chain_id_takes_the_default_like_an_empty_one() -> None:
    data = b"stream_id,units,producer_key,chain_id\n1,2,a, \n1,2,b,\t007\n"
    _, records = read(data, "csv", chain_id=9)
    assert [r[0] for r in records] == [9, 7]


def test_snippet_escapes_control_characters_and_cuts_long_lines() -> None:
    assert snippet("a\tb\x00c é") == "a\\tb\\x00c é"
    assert snippet("x" * 200) == "x" * 80 + "…"


# --------------------------------------------------------------------------- the reader


def test_csv_rows_with_sources_counts_and_default_chain() -> None:
    data = (
        b"\xef\xbb\xbfstream_id,units,producer_key,chain_id\r\n"
        b"1,10,k1,\r\n"
        b"\r\n"
        b"   \n"
        b"2,20,k2,5\n"
        b"3,30\n"
        b"4,40,k4,"
    )
    reader, records = read(data, "csv", chain_id=31337)
    assert records == [
        (31337, "1", "10", "k1", None, None, "f:2", None, None, None, None, None),
        (5, "2", "20", "k2", None, None, "f:5", None, None, None, None, None),
        (
            31337,
            None,
            None,
            None,
            None,
            None,
            "f:6",
            "rejected",
            "malformed_line",
            "2 fields where the header has 4; the line starts: 3,30",
            NOW,
            None,
        ),
        (31337, "4", "40", "k4", None, None, "f:7", None, None, None, None, None),
    ]
    assert (reader.rows_read, reader.queued, reader.malformed, reader.blank_lines) == (4, 3, 1, 2)
    assert reader.line == 7
    assert reader.bytes_read == len(data)


def test_the_endpoint_column_is_optional_and_kept_as_written() -> None:
    """Files name the endpoint a row is billed at since price lists came; older files have no
    such column or key and import as before (no endpoint)."""
    _, csv_rows = read(
        b"stream_id,units,producer_key,endpoint\n1,10,k1,chat/completions\n2,5,k2,\n", "csv"
    )
    assert [(r[1], r[-1]) for r in csv_rows] == [("1", "chat/completions"), ("2", None)]
    _, json_rows = read(
        b'{"stream_id": 1, "units": 2, "producer_key": "a", "endpoint": " embed "}\n'
        b'{"stream_id": 1, "units": 2, "producer_key": "b", "endpoint": null}\n'
        b'{"stream_id": 1, "units": 2, "producer_key": "c"}\n',
        "jsonl",
    )
    assert [r[-1] for r in json_rows] == [" embed ", None, None]
    _, old = read(b"stream_id,units,producer_key,label\n1,10,k1,GET /a\n", "csv")
    assert old == [(None, "1", "10", "k1", "GET /a", None, "f:2", None, None, None, None, None)]
    assert COLUMNS[-1] == "endpoint" and len(COLUMNS) == len(old[0])


def test_blank_lines_before_the_header_are_skipped() -> None:
    reader, records = read(b"\n\nstream_id,units,producer_key\n1,2,3\n", "csv")
    assert reader.header == HEADER
    assert [r[6] for r in records] == ["f:4"]
    assert reader.blank_lines == 2


def test_the_csv_header_is_checked_when_the_reader_is_made() -> None:
    with pytest.raises(UsageImportError, match="f: unknown column 'amount'"):
        UsageReader(io.BytesIO(b"stream_id,units,producer_key,amount\n"), "csv", source="f")
    with pytest.raises(UsageImportError, match=r"f:1: the header row is not UTF-8"):
        UsageReader(io.BytesIO(b"stream_id,units\xff\n"), "csv", source="f")


def test_an_empty_jsonl_file_has_no_rows() -> None:
    reader, records = read(b"", "jsonl")
    assert records == []
    assert reader.rows_read == 0


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "f: no header row (the file is empty)"),
        (b"\xef\xbb\xbf", "f: no header row (the file holds only blank lines)"),
        (b"\n  \r\n\t\n", "f: no header row (the file holds only blank lines)"),
    ],
)
def test_a_csv_file_without_a_header_row_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(UsageImportError, match=re.escape(says)) as caught:
        UsageReader(io.BytesIO(data), "csv", source="f")
    assert "a CSV file starts with a header row naming its columns" in str(caught.value)
    assert "nothing was imported" in str(caught.value)


def test_undecodable_and_nul_lines_are_kept_as_malformed() -> None:
    data = b'{"units": "1"}\n\xff\xfebad\n{"units": "a\x00b"}\n'
    _, records = read(data, "jsonl")
    details = [(r[6], r[7], r[8], r[9]) for r in records]
    assert details == [
        ("f:1", None, None, None),
        (
            "f:2",
            "rejected",
            "malformed_line",
            "not UTF-8 (byte 0xff at byte 1); the line starts: \\xff\\xfebad",
        ),
        (
            "f:3",
            "rejected",
            "malformed_line",
            "a NUL character, which PostgreSQL text cannot hold; the line starts: "
            '{"units": "a\\x00b"}',
        ),
    ]


def test_an_unknown_json_key_stops_the_import() -> None:
    data = b'{"units": "1"}\n{"units": "1", "amount": 2, "x": 3}\n'
    with pytest.raises(UsageImportError, match=r"f:2: unknown keys 'amount', 'x'") as caught:
        read(data, "jsonl")
    assert caught.value.line == 2


def test_a_chain_id_that_is_not_an_integer_stops_the_import() -> None:
    data = b"stream_id,units,producer_key,chain_id\n1,2,3,31337\n1,2,3,abc\n"
    with pytest.raises(UsageImportError, match=r"f:3: chain_id 'abc' is not an integer"):
        read(data, "csv")


def test_a_chain_id_out_of_range_stops_the_import_whatever_its_length() -> None:
    for value in (str(2**63), "9" * 5_000):
        data = f"stream_id,units,producer_key,chain_id\n1,2,3,{value}\n".encode()
        with pytest.raises(UsageImportError, match=r"f:2: chain_id '9.*' is out of range"):
            read(data, "csv")


def test_records_stream_one_line_at_a_time() -> None:
    lines_served = 0

    def lines() -> object:
        nonlocal lines_served
        yield b"stream_id,units,producer_key\n"
        while True:
            lines_served += 1
            yield b"1,2,3\n"

    reader = UsageReader(lines(), "csv", source="f")  # type: ignore[arg-type]
    records = reader.records(NOW)
    for _ in range(5):
        next(records)
    assert lines_served == 5


# --------------------------------------------------------------------------- progress, summary


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_redraws_in_place_at_most_ten_times_a_second() -> None:
    out, clock = FakeTerminal(), Clock()
    bar = progress_bar(out, clock=clock)
    assert bar is not None
    for rows in range(1, 1001):
        clock.now += 0.001  # 1,000 rows/s for 1 s
        draw_progress(bar, rows, rows, 1000)
    draw_progress(bar, 1000, 1000, 1000, final=True)
    frames = out.getvalue().split("\r")[1:]
    assert 9 <= len(frames) <= 11
    assert frames[-1].endswith("\n")
    assert frames[-1].strip() == "100%  1,000 rows  1,000 rows/s  1.0 s"


def test_progress_pads_a_shorter_frame_over_a_longer_one() -> None:
    out, clock = FakeTerminal(), Clock()
    bar = progress_bar(out, clock=clock)
    assert bar is not None
    clock.now += 0.5
    draw_progress(bar, 100_000, 0, None)
    clock.now += 100
    draw_progress(bar, 100_001, 0, None)
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) >= len(first)


def test_no_progress_bar_off_a_terminal() -> None:
    assert progress_bar(io.StringIO()) is None
    assert isinstance(progress_bar(FakeTerminal()), ProgressLine)


def test_summary_text_and_json() -> None:
    summary = ImportSummary(
        source="usage.csv",
        rows_read=1_000_002,
        queued=1_000_000,
        malformed=2,
        blank_lines=3,
        elapsed_seconds=4.25,
    )
    assert summary.text().splitlines() == [
        "imported usage.csv in 4.2 s",
        "  rows read                         1,000,002",
        "  rows queued for validation        1,000,000",
        "  malformed lines kept as rejected          2",
        "  blank lines skipped                       3",
        NEXT_STEP,
    ]
    assert summary.as_dict() == {
        "source": "usage.csv",
        "rows_read": 1_000_002,
        "rows_queued": 1_000_000,
        "malformed_rejected": 2,
        "blank_lines_skipped": 3,
        "elapsed_seconds": 4.25,
        "next": NEXT_STEP,
    }
