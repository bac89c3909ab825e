"""Whatever a producer puts into `usage_inbox`, the planning pass ends with a verdict for every
row of its chain and goes on: hostile values in every column (the issue's observed_at rows that
crashed the pass, numbers in every spelling, unicode digits, huge and empty values), random text
from hypothesis, received_at values Python's datetime cannot hold, and files `keeper usage
import` reads line by line. Real PostgreSQL and a real chain (streams 1 and 2 open, 3 closed)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from keeper.db import Conn
from keeper.ops.usage_files import UsageReader
from keeper.ops.usage_import import import_usage
from keeper.ops.usage_lines import UsageImportError
from keeper.plan.inbox import EARLIEST_OBSERVED_AT, OBSERVED_AT_SKEW, whole_number
from keeper.plan.planner import Planner
from keeper.plan.usage import UsageOracle
from tests.support.tx import Env
from tests.support.usage import (
    COLUMNS,
    GOOD,
    HOSTILE,
    HOSTILE_RECEIVED,
    SETTINGS,
    UNIQUE,
    every_column_hostile,
    index,
    insert,
    world,
)

pytestmark = pytest.mark.anyio

OTHER_CHAIN = 999_999
HOUR = timedelta(hours=1)

# Every reason a row can be rejected with, at intake or on import.
REASONS = {
    *(f"missing_{c}" for c in ("stream_id", "units", "producer_key")),
    *(
        f"malformed_{c}"
        for c in ("stream_id", "units", "producer_key", "label", "observed_at", "endpoint")
    ),
    "stream_id_out_of_range",
    "units_not_positive",
    "units_out_of_range",
    "observed_at_out_of_range",
    "received_at_out_of_range",
    "unknown_stream",
    "stream_closed",
    "duplicate_producer_key",
    "sequence_exhausted",
    "unknown_endpoint",
    "endpoint_out_of_range",
    "malformed_line",
}


# Text PostgreSQL can store (no NUL, no lone surrogates), biased towards the grammar's edges.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
_NEAR = st.text(st.sampled_from("0123456789+-.:,TZtz _eE\t\n\u00a0\uff15\u0665"), max_size=30)


@st.composite
def _numbers(draw: st.DrawFn) -> str:
    space = st.text(st.sampled_from(" \t\n\r\v\f"), max_size=2)
    sign = draw(st.sampled_from(["", "", "+", "-"]))
    zeros = "0" * draw(st.sampled_from([0, 0, 1, 3, 95, 5_000]))
    digits = str(draw(st.one_of(st.integers(0, 4), st.integers(0, 2**300))))
    return draw(space) + sign + zeros + digits + draw(space)


@st.composite
def _times(draw: st.DrawFn) -> str:
    when = draw(st.datetimes(timezones=st.just(UTC)))
    offset = draw(st.sampled_from(["Z", "+00:00", "+05:00", "-05:00", "+23:59", "-0830", ""]))
    text = when.isoformat(sep=draw(st.sampled_from("T "))).replace("+00:00", "")
    return text + offset if draw(st.booleans()) else str(int(when.timestamp()))


VALUES = st.one_of(
    st.none(), _TEXT, _NEAR, st.sampled_from(HOSTILE), _numbers(), _times(), st.just("1")
)

# Fields that are often fine, so that rows are accepted too and the pass numbers and plans them.
LIKELY = {
    "stream_id": st.sampled_from(["1", "2", "3", " 02 ", "+1"]),
    "units": st.one_of(_numbers(), st.integers(1, 10**6).map(str)),
    "producer_key": st.one_of(st.just(UNIQUE), _TEXT),
    "label": st.one_of(st.none(), _TEXT),
    "observed_at": st.one_of(st.none(), _times(), st.just("2026-01-01T00:00:00+01:00")),
    "endpoint": st.one_of(st.none(), st.none(), st.just("chat"), _TEXT),
}


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, Any]:
    """A row of likely fields with any of its columns (often none, often all) made hostile."""
    row: dict[str, Any] = {c: draw(LIKELY[c]) for c in COLUMNS}
    for column in draw(st.sets(st.sampled_from(COLUMNS))):
        row[column] = draw(VALUES)
    if draw(st.integers(0, 9)) == 0:
        row["chain_id"] = draw(st.sampled_from([OTHER_CHAIN, -1, 2**63 - 1]))
    row["source"] = draw(st.one_of(st.none(), _TEXT))
    if draw(st.integers(0, 9)) == 0:
        row["received_at"] = draw(st.sampled_from(HOSTILE_RECEIVED))
    return row


ROWS = _rows()


def planner(env: Env) -> Planner:
    d = env.deployment
    return Planner(
        d.chain_id,
        stream_manager=d.stream_manager,
        escrow_vault=d.escrow_vault,
        settings=SETTINGS.model_copy(update={"unknown_stream_grace": 0}),
    )


async def assert_every_row_judged(conn: Conn, ids: list[int], chain: int) -> None:
    rows = await conn.fetch(
        # received_at only of accepted rows: a hostile one may be beyond what Python holds.
        "SELECT u.chain_id, u.stream_id, u.units, u.verdict, u.reason, u.detail, "
        "CASE WHEN u.verdict = 'accepted' THEN u.received_at END AS received_at, "
        "r.stream_id AS r_stream, r.units AS r_units, r.observed_at AS r_observed "
        "FROM usage_inbox u LEFT JOIN usage_reports r ON r.inbox_id = u.id "
        "WHERE u.id = ANY($1::bigint[])",
        ids,
    )
    assert len(rows) == len(ids)
    for r in rows:
        if r["chain_id"] not in (None, chain):
            assert r["verdict"] is None  # another chain's keeper judges it
            continue
        assert r["verdict"] in ("accepted", "rejected"), dict(r)
        if r["verdict"] == "rejected":
            assert r["reason"] in REASONS, dict(r)
            assert r["detail"], dict(r)
            assert r["r_stream"] is None
            continue
        # Accepted: its report holds exactly the numbers the grammar reads.
        assert int(r["r_stream"]) == whole_number(r["stream_id"]), dict(r)
        assert int(r["r_units"]) == whole_number(r["units"]), dict(r)
        assert EARLIEST_OBSERVED_AT <= r["r_observed"] <= r["received_at"] + OBSERVED_AT_SKEW


@pytest.fixture
async def chain(env: Env, database_url: str) -> Env:
    world(env)
    await index(env, database_url)
    async with env.pool.acquire() as conn:
        await planner(env).store_settings(conn)
    return env


async def test_every_hostile_value_in_every_column_gets_a_verdict_in_one_pass(
    chain: Env,
) -> None:
    cid = chain.deployment.chain_id
    p = planner(chain)
    async with chain.pool.acquire() as conn:
        # received_at has its own test below: this one is about what the columns hold.
        ids = await insert(conn, every_column_hostile(None, received_at=False))
        report = await p.plan_pass(conn)
        assert report.intake is not None
        assert report.intake.validated == len(ids) and report.intake.waiting == 0
        await assert_every_row_judged(conn, ids, cid)
        got = {
            r["producer_key"]: r["reason"]
            for r in await conn.fetch("SELECT producer_key, reason FROM usage_inbox")
        }
        # Nothing was stored as ±infinity, or outside what the range allows.
        assert not await conn.fetchval(
            "SELECT count(*) FROM usage_reports WHERE NOT isfinite(observed_at)"
        )
    key = "observed_at-{}".format
    # The rows: they crashed the pass, and year 1 in UTC was stored as -infinity.
    assert got[key(HOSTILE.index("0001-01-01T00:00:00+05:00"))] == "observed_at_out_of_range"
    assert got[key(HOSTILE.index("9999-12-31T23:59:59.999999-05:00"))] == "observed_at_out_of_range"
    assert got[key(HOSTILE.index("0001-01-01T00:00:00Z"))] == "observed_at_out_of_range"
    assert got[key(HOSTILE.index("infinity"))] == "malformed_observed_at"
    # One grammar in every number column, whatever the length of the zeros in front.
    for five in ("5", "0005", "+5", " 5 ", "5\n", "0" * 94 + "5", "0" * 5_000 + "5"):
        assert got[f"stream_id-{HOSTILE.index(five)}"] == "unknown_stream"  # 5 > highest (3)
        assert got[f"units-{HOSTILE.index(five)}"] is None  # 5 units of stream 1: accepted
    for other in ("\uff15", "\u0665", "1_000", "1e3", "\u00a0"):
        for column in ("stream_id", "units"):
            assert got[f"{column}-{HOSTILE.index(other)}"] == f"malformed_{column}"
    # Streams 1 and 2 bill at their own price: no endpoint, or one their payee listed (none).
    assert got[f"endpoint-{HOSTILE.index('')}"] is None
    assert got[f"endpoint-{HOSTILE.index(' ')}"] is None  # blank: none
    assert got[f"endpoint-{HOSTILE.index('5')}"] == "unknown_endpoint"
    assert got[f"endpoint-{HOSTILE.index('x' * 201)}"] == "malformed_endpoint"


@settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(ROWS, min_size=1, max_size=15))
async def test_random_rows_each_get_a_verdict_and_the_pass_goes_on(
    chain: Env, batch: list[dict[str, Any]]
) -> None:
    cid = chain.deployment.chain_id
    async with chain.pool.acquire() as conn:
        ids = await insert(conn, batch)
        report = await planner(chain).plan_pass(conn)
        await assert_every_row_judged(conn, ids, cid)
    assert report.intake is not None
    event("some accepted" if report.intake.accepted else "none accepted")
    for reason in report.intake.rejected:
        event(reason)


# --------------------------------------------------------------------------- the import path

FIXED_LINES = [
    b"1,5,k,,,",
    b'{"stream_id": 1, "units": 5, "producer_key": "j"}',
    b'{"stream_id": "\\u0000", "units": 5, "producer_key": "n"}',
    b'{"stream_id": "\\ud800", "units": 5, "producer_key": "s"}',
    b'{"label": ["\\ud800"], "units": 5, "producer_key": "s2"}',
    b"1,\xed\xa0\x80,k,,,",  # a surrogate encoded in UTF-8: not UTF-8
    b"1,5,k\x00,,,",
    b'"unclosed,5,k,,,',
    b"[" * 100_000,
    b"1," + b"9" * 5_000 + b",k,,,",
    b"1,5,k,,," + b"0" * 5_000 + b"7",
    b"1,5,k,,0001-01-01T00:00:00+05:00,",
]
REFUSED_LINES = [b"1,5,k,,,\xef\xbc\x95", b"1,5,k,,," + b"9" * 5_000]  # chain ids
_LINES = st.one_of(
    st.binary(max_size=60),
    _TEXT.map(str.encode),
    st.sampled_from(FIXED_LINES + REFUSED_LINES),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from([*COLUMNS, "chain_id"]),
            st.one_of(VALUES, st.integers(), st.floats(allow_nan=False), st.booleans()),
        ),
    ),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fmt=st.sampled_from(["csv", "jsonl"]), lines=st.lists(_LINES, max_size=8))
@example(fmt="csv", lines=FIXED_LINES)
@example(fmt="jsonl", lines=FIXED_LINES)
@example(fmt="csv", lines=REFUSED_LINES[:1])
@example(fmt="csv", lines=REFUSED_LINES[1:])
async def test_random_import_files_are_imported_or_refused_and_every_row_judged(
    db: asyncpg.Connection, fmt: str, lines: list[bytes]
) -> None:
    header = b"stream_id,units,producer_key,label,observed_at,chain_id\n" if fmt == "csv" else b""
    data = header + b"\n".join(lines) + b"\n"
    before = await db.fetchval("SELECT coalesce(max(id), 0) FROM usage_inbox")
    try:
        reader = UsageReader(io.BytesIO(data), fmt, source="f", chain_id=31337)
        summary = await import_usage(db, reader)
    except UsageImportError:
        # Refused as a whole (an unknown key, a chain_id that is not a bigint): nothing stored.
        assert await db.fetchval("SELECT coalesce(max(id), 0) FROM usage_inbox") == before
        event("refused")
        return
    event("imported")
    ids = [int(r["id"]) for r in await db.fetch("SELECT id FROM usage_inbox WHERE id > $1", before)]
    assert len(ids) == summary.rows_read
    async with db.transaction():
        await UsageOracle(31337, unknown_stream_grace=0).intake(db)
    await assert_every_row_judged(db, ids, 31337)


async def test_received_at_beyond_python_is_rejected_not_raised(db: asyncpg.Connection) -> None:
    ids = await insert(
        db,
        [
            {**GOOD, "producer_key": f"r{i}", "received_at": value}
            for i, value in enumerate(HOSTILE_RECEIVED)
        ]
        + [
            {**GOOD, "producer_key": "future", "received_at": str(datetime.now(UTC) + HOUR)},
            {**GOOD, "producer_key": "past", "received_at": "2020-01-01 00:00:00+00"},
        ],
    )
    async with db.transaction():
        report = await UsageOracle(31337, unknown_stream_grace=0).intake(db)
    assert report.rejected == {"received_at_out_of_range": len(ids) - 1, "unknown_stream": 1}
    detail = await db.fetchval("SELECT detail FROM usage_inbox WHERE producer_key = 'r0'")
    assert detail.startswith("received_at 'infinity' is not a time the row can have arrived at")
