"""`keeper usage import` against a real PostgreSQL: rows stored as the file wrote them, lines
that cannot be read kept as rejected, all or nothing, and the command's summary."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.cli import main
from keeper.ops.usage_files import UsageReader
from keeper.ops.usage_import import NEXT_STEP, import_usage
from keeper.ops.usage_lines import UsageImportError
from keeper.plan.usage import UsageOracle

HUGE = "115792089237316195423570985008687907853269984665640564039457584007913129639936"
STORED = (
    "SELECT chain_id, stream_id, units, producer_key, label, observed_at, source"
    " FROM usage_inbox ORDER BY id"
)

CSV = (
    "stream_id,units,producer_key,label,observed_at,chain_id\n"
    "7,100,k-1,api-calls,2024-06-01T00:00:00Z,31337\n"
    "abc,-5,k-2,,not a time,\n"
    '12,1e3,k-3," spaced ",,\n'
    "\n"
    f'{HUGE},00042,k-4,"comma, inside",1717200000,\n'
)
CSV_ROWS = [
    (31337, "7", "100", "k-1", "api-calls", "2024-06-01T00:00:00Z", "usage.csv:2"),
    (None, "abc", "-5", "k-2", None, "not a time", "usage.csv:3"),
    (None, "12", "1e3", "k-3", " spaced ", None, "usage.csv:4"),
    (None, HUGE, "00042", "k-4", "comma, inside", "1717200000", "usage.csv:6"),
]

JSONL = (
    '{"stream_id": 7, "units": 100, "producer_key": "k-1"}\n'
    '{"stream_id": "abc", "units": -5, "producer_key": "k-2", "label": null}\n'
    '{"stream_id": 12, "units": 1e3, "producer_key": "k-3", "observed_at": 1717200000}\n'
    f'{{"stream_id": {HUGE}, "units": 1.50, "producer_key": "k-4", "chain_id": 5}}\n'
    '{"stream_id": "1", "units": true, "producer_key": "k-5", "label": {"a": [1, 2.0]}}\n'
)
JSONL_ROWS = [
    (1, "7", "100", "k-1", None, None, "usage.jsonl:1"),
    (1, "abc", "-5", "k-2", None, None, "usage.jsonl:2"),
    (1, "12", "1e3", "k-3", None, "1717200000", "usage.jsonl:3"),
    (5, HUGE, "1.50", "k-4", None, None, "usage.jsonl:4"),
    (1, "1", "true", "k-5", '{"a":[1,2.0]}', None, "usage.jsonl:5"),
]

MALFORMED = (
    b'{"stream_id": 1, "units": 2, "producer_key": "ok-1"}\n'
    b'{"stream_id": 1, "units": 2, "producer_key": \n'
    b"[1, 2, 3]\n"
    b"\n"
    b"\xff\xfe not utf-8\n"
    b'{"stream_id": "a\\u0000b", "units": 1, "producer_key": "nul"}\n'
    b'{"stream_id": 1, "units": 3, "producer_key": "ok-2"}\n'
)


def reader(data: bytes | str, fmt: str, source: str, chain_id: int | None = None) -> UsageReader:
    raw = data.encode() if isinstance(data, str) else data
    return UsageReader(io.BytesIO(raw), fmt, source=source, chain_id=chain_id)


async def stored(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(STORED)
    return [tuple(r) for r in rows]


def query(url: str, sql: str) -> list[asyncpg.Record]:
    """Run one query from a sync test (the CLI tests run `main`, which has its own loop)."""

    async def run() -> list[asyncpg.Record]:
        conn = await keeper_db.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return anyio.run(run)


def count(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM usage_inbox")[0][0])


# --------------------------------------------------------------------------- the library


@pytest.mark.anyio
async def test_csv_rows_are_stored_as_written_for_validation(db: asyncpg.Connection) -> None:
    summary = await import_usage(db, reader(CSV, "csv", "usage.csv"))
    assert await stored(db) == CSV_ROWS
    assert (summary.rows_read, summary.queued, summary.malformed, summary.blank_lines) == (
        4,
        4,
        0,
        1,
    )
    waiting = await db.fetch("SELECT verdict, reason, detail, validated_at FROM usage_inbox")
    assert {tuple(r) for r in waiting} == {(None, None, None, None)}
    pending = await db.fetch("SELECT status FROM keeper.usage_pending")
    assert [r["status"] for r in pending] == ["received"] * 4


@pytest.mark.anyio
async def test_jsonl_rows_are_stored_as_written(db: asyncpg.Connection) -> None:
    summary = await import_usage(db, reader(JSONL, "jsonl", "usage.jsonl", chain_id=1))
    assert await stored(db) == JSONL_ROWS
    assert summary.queued == 5


@pytest.mark.anyio
async def test_the_endpoint_column_is_stored_as_written_and_old_files_still_import(
    db: asyncpg.Connection,
) -> None:
    """Rows name the endpoint they are billed at (CSV column or JSON key `endpoint`); files
    written before price lists had no such column and import as before."""
    await import_usage(
        db,
        reader(
            "endpoint,stream_id,units,producer_key\nchat/completions,1,3,e-1\n,1,3,e-2\n",
            "csv",
            "new.csv",
        ),
    )
    await import_usage(
        db,
        reader(
            '{"stream_id": 1, "units": 3, "producer_key": "e-3", "endpoint": " embed"}\n',
            "jsonl",
            "new.jsonl",
        ),
    )
    await import_usage(db, reader(CSV, "csv", "old.csv"))
    rows = await db.fetch("SELECT producer_key, endpoint FROM usage_inbox ORDER BY id")
    assert [(r["producer_key"], r["endpoint"]) for r in rows] == [
        ("e-1", "chat/completions"),
        ("e-2", None),
        ("e-3", " embed"),
        ("k-1", None),
        ("k-2", None),
        ("k-3", None),
        ("k-4", None),
    ]


@pytest.mark.anyio
async def test_unreadable_lines_are_kept_as_rejected(db: asyncpg.Connection) -> None:
    summary = await import_usage(db, reader(MALFORMED, "jsonl", "in.jsonl"))
    assert (summary.rows_read, summary.queued, summary.malformed, summary.blank_lines) == (
        6,
        2,
        4,
        1,
    )
    rows = await db.fetch(
        "SELECT source, producer_key, verdict, reason, detail, validated_at = received_at AS same"
        " FROM usage_inbox ORDER BY id"
    )
    assert [(r["source"], r["producer_key"], r["verdict"], r["reason"]) for r in rows] == [
        ("in.jsonl:1", "ok-1", None, None),
        ("in.jsonl:2", None, "rejected", "malformed_line"),
        ("in.jsonl:3", None, "rejected", "malformed_line"),
        ("in.jsonl:5", None, "rejected", "malformed_line"),
        ("in.jsonl:6", None, "rejected", "malformed_line"),
        ("in.jsonl:7", "ok-2", None, None),
    ]
    details = [r["detail"] for r in rows if r["verdict"]]
    assert details[0].startswith("not valid JSON (Expecting value at column 46); the line starts: ")
    assert details[0].endswith('"producer_key": ')
    assert details[1] == "a JSON array, not an object; the line starts: [1, 2, 3]"
    assert details[2] == "not UTF-8 (byte 0xff at byte 1); the line starts: \\xff\\xfe not utf-8"
    assert details[3].startswith("a NUL character (\\u0000)")
    # Rejected on arrival: validated in the transaction that received them.
    assert all(r["same"] for r in rows if r["verdict"])
    rejected = await db.fetch("SELECT source, reason FROM keeper.usage_rejected ORDER BY inbox_id")
    assert [r["source"] for r in rejected] == [
        "in.jsonl:2",
        "in.jsonl:3",
        "in.jsonl:5",
        "in.jsonl:6",
    ]


@pytest.mark.anyio
async def test_malformed_csv_lines_are_kept_as_rejected(db: asyncpg.Connection) -> None:
    data = 'stream_id,units,producer_key\n1,2,ok\n1,2\n1,"2,x\n1,2,3,4\n1,2,a\x00b\n'
    summary = await import_usage(db, reader(data, "csv", "u.csv", chain_id=9))
    assert (summary.queued, summary.malformed) == (1, 4)
    rows = await db.fetch("SELECT chain_id, source, reason, detail FROM usage_inbox ORDER BY id")
    assert [(r["chain_id"], r["source"], r["reason"]) for r in rows] == [
        (9, "u.csv:2", None),
        (9, "u.csv:3", "malformed_line"),
        (9, "u.csv:4", "malformed_line"),
        (9, "u.csv:5", "malformed_line"),
        (9, "u.csv:6", "malformed_line"),
    ]
    assert [r["detail"] for r in rows][1:] == [
        "2 fields where the header has 3; the line starts: 1,2",
        'not valid CSV (unexpected end of data); the line starts: 1,"2,x',
        "4 fields where the header has 3; the line starts: 1,2,3,4",
        "a NUL character, which PostgreSQL text cannot hold; the line starts: 1,2,a\\x00b",
    ]


@pytest.mark.anyio
async def test_a_bad_chain_id_part_way_writes_nothing(db: asyncpg.Connection) -> None:
    lines = [f"{i},1,k-{i},31337" for i in range(1, 8)] + ["8,1,k-8,abc", "9,1,k-9,1"]
    data = "stream_id,units,producer_key,chain_id\n" + "\n".join(lines) + "\n"
    # Chunks of 2: three COPYs have gone through when line 9 is read.
    with pytest.raises(UsageImportError) as caught:
        await import_usage(db, reader(data, "csv", "u.csv"), chunk_size=2)
    assert "u.csv:9: chain_id 'abc' is not an integer" in str(caught.value)
    assert "nothing was imported" in str(caught.value)
    assert await db.fetchval("SELECT count(*) FROM usage_inbox") == 0


@pytest.mark.anyio
async def test_a_row_the_database_refuses_part_way_writes_nothing(
    db: asyncpg.Connection,
) -> None:
    # A constraint of this test's own stands for anything the server may refuse mid-COPY.
    await db.execute(
        "ALTER TABLE usage_inbox ADD CONSTRAINT test_no_boom CHECK (label IS DISTINCT FROM 'boom')"
    )
    lines = [f'{{"stream_id": {i}, "units": 1, "producer_key": "k-{i}"}}' for i in range(1, 6)]
    lines.append('{"stream_id": 6, "units": 1, "producer_key": "k-6", "label": "boom"}')
    lines.append('{"stream_id": 7, "units": 1, "producer_key": "k-7"}')
    with pytest.raises(UsageImportError) as caught:
        await import_usage(db, reader("\n".join(lines), "jsonl", "b.jsonl"), chunk_size=4)
    message = str(caught.value)
    assert message.startswith("b.jsonl:6: the import into usage_inbox failed: ")
    assert "test_no_boom" in message
    assert "nothing was imported (the transaction was rolled back)" in message
    assert isinstance(caught.value.__cause__, asyncpg.CheckViolationError)
    assert await db.fetchval("SELECT count(*) FROM usage_inbox") == 0


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_million_rows_stream_through_in_bounded_memory(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("stream_id,units,producer_key,observed_at\n")
        for i in range(1_000_000):
            f.write(f"{i % 977},{i * 7919},producer-{i:08d},2024-06-01T00:00:{i % 60:02d}Z\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    with path.open("rb") as stream:
        summary = await import_usage(db, UsageReader(stream, "csv", source="big.csv"))
    elapsed = time.monotonic() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert summary.queued == 1_000_000
    assert await db.fetchval("SELECT count(*) FROM usage_inbox") == 1_000_000
    last = await db.fetchrow("SELECT units, source FROM usage_inbox ORDER BY id DESC LIMIT 1")
    assert last is not None
    assert tuple(last) == (str(999_999 * 7919), "big.csv:1000001")
    # A million rows held at once would take several hundred MiB.
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB"
    print(f"1,000,000 rows in {elapsed:.1f} s, peak memory +{grown_mib:.0f} MiB")


# --------------------------------------------------------------------------- the command


def test_cli_imports_a_csv_and_prints_a_summary(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "usage.csv").write_text(CSV)
    monkeypatch.chdir(tmp_path)  # source is the file as given: usage.csv:<line>
    status = main(["usage", "import", "usage.csv", "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("imported usage.csv in ")
    assert lines[1:5] == [
        "  rows read                         4",
        "  rows queued for validation        4",
        "  malformed lines kept as rejected  0",
        "  blank lines skipped               1",
    ]
    assert lines[5] == NEXT_STEP
    assert "\r" not in err  # no progress bar off a terminal
    assert [tuple(r) for r in query(database_url, STORED)] == CSV_ROWS


def test_cli_json_summary_chain_id_and_source(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.ndjson"
    path.write_bytes(MALFORMED)
    args = ["usage", "import", str(path), "--json", "--chain-id", "31337", "--source", "batch-7"]
    status = main([*args, "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 0, err
    summary = json.loads(out)
    assert isinstance(summary.pop("elapsed_seconds"), float)
    assert summary == {
        "source": "batch-7",
        "rows_read": 6,
        "rows_queued": 2,
        "malformed_rejected": 4,
        "blank_lines_skipped": 1,
        "next": NEXT_STEP,
    }
    rows = query(database_url, "SELECT chain_id, source FROM usage_inbox ORDER BY id")
    assert {r["chain_id"] for r in rows} == {31337}
    assert rows[-1]["source"] == "batch-7:7"


def test_cli_reads_stdin(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(JSONL.encode())))
    args = ["usage", "import", "-", "--format", "jsonl", "--json", "--chain-id", "1"]
    status = main([*args, "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert json.loads(out)["rows_queued"] == 5
    rows = [tuple(r) for r in query(database_url, STORED)]
    assert rows == [(*r[:6], r[6].replace("usage.jsonl", "stdin")) for r in JSONL_ROWS]


def test_cli_stdin_through_a_pipe_with_the_database_url_from_the_environment(
    database_url: str,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keeper", "usage", "import", "-", "--format", "csv"],
        input=CSV,
        capture_output=True,
        text=True,
        env={**os.environ, "KEEPER_DATABASE_URL": database_url},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rows queued for validation        4" in result.stdout
    assert result.stderr == ""
    assert count(database_url) == 4


def test_cli_refuses_unknown_csv_columns_before_writing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.csv"
    path.write_text("stream_id,unit,producer_key,amount\n1,2,k,3\n")
    status = main(["usage", "import", str(path), "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.startswith("keeper usage: error: ")
    assert "unknown columns 'unit', 'amount'" in err
    assert "the columns are stream_id, units, producer_key and optionally" in err
    assert count(database_url) == 0


def test_cli_failure_part_way_exits_1_and_writes_nothing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.csv"
    path.write_text("stream_id,units,producer_key,chain_id\n1,2,k1,1\n1,2,k2,one\n")
    status = main(["usage", "import", str(path), "--database-url", database_url])
    _, err = capsys.readouterr()
    assert status == 1
    assert f"{path}:3: chain_id 'one' is not an integer" in err
    assert "nothing was imported" in err
    assert count(database_url) == 0


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff\r\n"])
def test_cli_refuses_a_csv_file_without_a_header_row(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "usage.csv"
    path.write_text(content, encoding="utf-8")
    status = main(["usage", "import", str(path), "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""  # no "rows read 0" summary
    assert f"{path}: no header row" in err
    assert "a CSV file starts with a header row naming its columns" in err
    assert count(database_url) == 0


def test_cli_imports_an_empty_jsonl_file_as_nothing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text("")
    status = main(["usage", "import", str(path), "--json", "--database-url", database_url])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert json.loads(out)["rows_read"] == 0  # no header to miss: JSON lines have none


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["usage.txt"], "cannot tell the format of usage.txt"),
        (["-"], "cannot tell the format of standard input"),
        (["missing.csv"], "cannot read missing.csv: No such file or directory"),
    ],
)
def test_cli_input_errors(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usage.txt").write_text("")
    status = main(["usage", "import", *args, "--database-url", database_url])
    _, err = capsys.readouterr()
    assert status == 1
    assert says in err


def test_cli_needs_a_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KEEPER_DATABASE_URL", raising=False)
    (tmp_path / "usage.csv").write_text(CSV)
    status = main(["usage", "import", str(tmp_path / "usage.csv")])
    assert status == 1
    assert "no database URL" in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_keepers_validation_judges_imported_rows(db: asyncpg.Connection) -> None:
    data = CSV.replace("31337", "") + '"unclosed\n'  # every row for the validating chain
    summary = await import_usage(db, reader(data, "csv", "usage.csv"))
    assert (summary.queued, summary.malformed) == (4, 1)
    async with db.transaction():
        await UsageOracle(31337, unknown_stream_grace=0).intake(db)
    rows = await db.fetch("SELECT source, verdict, reason FROM usage_inbox ORDER BY id")
    outcome = {r["source"]: (r["verdict"], r["reason"]) for r in rows}
    assert outcome["usage.csv:3"] == ("rejected", "malformed_stream_id")  # abc
    assert outcome["usage.csv:4"] == ("rejected", "malformed_units")  # 1e3
    assert outcome["usage.csv:7"] == ("rejected", "malformed_line")  # kept as imported
    assert all(verdict is not None for verdict, _ in outcome.values())
