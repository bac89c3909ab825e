"""The usage tests' world: streams with usage prices and the oracle role, rows sent into the
inbox, the index brought up to date, `keeper plan` run as the operator would, and the hostile
values every inbox column must survive."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.config import PlanConfig
from keeper.db import Conn
from keeper.ops.deploy import contract
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.tx import Env

PAYEE_A = to_checksum_address("0x" + "a1" * 20)
PAYEE_B = to_checksum_address("0x" + "b2" * 20)
# Settling stays out of the way: nothing here is ever due for settlement.
SETTINGS = PlanConfig(
    settle_min_amount=10**30, settle_max_interval=10**9, settle_horizon=0, backoff_seconds=60
)


def keeper_plan(env: Env, database_url: str, tmp_path: Path, *extra: str) -> str:
    deployment_file = tmp_path / "deployment.json"
    env.deployment.write(deployment_file)
    config = tmp_path / "keeper.toml"
    config.write_text(
        f'[chain]\nrpc_url = "{env.node.url}"\ndeployment_file = "deployment.json"\n'
        f'[database]\nurl = "{database_url}"\n'
        "[plan]\nsettle_min_amount = 100000\nsettle_max_interval = 3600\n"
        "settle_horizon = 600\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "keeper", "plan", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(fn: Any, sender: str) -> Any:
    params: Any = {"from": sender}
    return fn.transact(params)


def world(env: Env, *, grant: bool = True) -> Any:
    """Stream 1 (payee B, price 3, large balance), stream 2 (payee A, price 1000, balance
    5000), stream 3 (closed). The signers hold ORACLE_ROLE unless `grant` is false."""
    w3, d = env.w3, env.deployment
    admin = d.deployer
    token = contract(w3, "TestToken", d.token)
    manager = contract(w3, "StreamManager", d.stream_manager)
    send(token.functions.mint(admin, 10**15), admin)
    send(token.functions.approve(d.stream_manager, 2**256 - 1), admin)
    send(manager.functions.openStream(PAYEE_B, 0, 10**12), admin)  # 1
    send(manager.functions.openStream(PAYEE_A, 0, 5_000), admin)  # 2
    send(manager.functions.openStream(PAYEE_A, 0, 10**6), admin)  # 3
    send(manager.functions.setUsagePrice(1, 3), admin)
    send(manager.functions.setUsagePrice(2, 1_000), admin)
    send(manager.functions.closeStream(3), admin)
    if grant:
        for s in env.signers:
            send(manager.functions.grantRole(ORACLE_ROLE, s.address), admin)
    return manager


async def index(env: Env, database_url: str) -> None:
    d = env.deployment
    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)


async def statuses(env: Env) -> dict[str, tuple[Any, ...]]:
    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT producer_key, status, seq, charged, shortfall, reason FROM keeper.usage "
            "ORDER BY inbox_id DESC"
        )
    # The first row of each producer key (a later duplicate does not hide it).
    return {
        r["producer_key"]: (
            r["status"],
            None if r["seq"] is None else int(r["seq"]),
            None if r["charged"] is None else int(r["charged"]),
            None if r["shortfall"] is None else int(r["shortfall"]),
            r["reason"],
        )
        for r in rows
    }


GOOD = {
    "stream_id": "1",
    "units": "5",
    "producer_key": None,
    "label": None,
    "observed_at": None,
    "endpoint": None,
}


async def insert(conn: Conn, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows as a producer may: any text in the text columns, received_at as text."""
    ids = []
    for row in rows:
        if row.get("producer_key") == UNIQUE:
            row = {**row, "producer_key": uuid.uuid4().hex}
        ids.append(
            await conn.fetchval(
                "INSERT INTO usage_inbox (chain_id, stream_id, units, producer_key, label, "
                "observed_at, endpoint, source, received_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9::text::timestamptz, now())) "
                "RETURNING id",
                row.get("chain_id"),
                *(row.get(c) for c in COLUMNS),
                row.get("source"),
                row.get("received_at"),
            )
        )
    return ids


def every_column_hostile(chain_id: int | None, *, received_at: bool = True) -> list[dict[str, Any]]:
    """Each hostile value in each column of an otherwise good row, then in all of them, then
    (unless `received_at` is false) each hostile received_at."""
    rows: list[dict[str, Any]] = []
    for column in COLUMNS:
        for i, value in enumerate(HOSTILE):
            rows.append({**GOOD, "producer_key": f"{column}-{i}", column: value})
    rows += [dict.fromkeys(COLUMNS, value) for value in HOSTILE]
    if received_at:
        rows += [
            {**GOOD, "producer_key": f"received-{i}", "received_at": value}
            for i, value in enumerate(HOSTILE_RECEIVED)
        ]
    return [{**row, "chain_id": chain_id} for row in rows]


COLUMNS = ("stream_id", "units", "producer_key", "label", "observed_at", "endpoint")


# Values a producer might write into any text column, and what the issue lists.
HOSTILE = [
    "",
    " ",
    "\t\r\n\v\f",
    "\u00a0",
    "\u3000",
    "0",
    "-0",
    "+0",
    "5",
    "0005",
    "+5",
    " 5 ",
    "5\n",
    "0" * 94 + "5",
    "0" * 5_000 + "5",
    "9" * 95,
    "9" * 5_000,
    "-" + "9" * 5_000,
    str(2**64),
    str(2**256),
    str(2**256 - 1),
    "1_000",
    "1e3",
    "1.5",
    "0x10",
    "\uff15",  # FULLWIDTH DIGIT FIVE
    "\u0665",  # ARABIC-INDIC DIGIT FIVE
    "\u00b2",
    "infinity",
    "-infinity",
    "Infinity",
    "NaN",
    "nan",
    "null",
    "true",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59.999999-05:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "0000-01-01T00:00:00Z",
    "20000-01-01T00:00:00Z",
    "294277-01-01 00:00:00+00",
    "4713-01-01 00:00:00+00 BC",
    "2026-02-30T00:00:00Z",
    "2026-11-21T10:00:00",
    "2026-11-21T10:00:00+24:00",
    "-1",
    "-62135596801",
    "253402300800",
    "99999999999999999999",
    "1700000000.123456789",
    "\U0001f600",
    "\ud7ff\ue000\uffff",
    "\U0010ffff",
    "'; DROP TABLE usage_inbox; --",
    "x" * 201,
    "x" * 100_000,
]


HOSTILE_RECEIVED = [
    "infinity",
    "-infinity",
    "294276-12-31 23:59:59.999999+00",
    "4713-01-01 00:00:00+00 BC",
    "0001-01-01 00:00:00+00",
    "1900-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "10000-01-01 00:00:00+00",
]


# A producer key the test makes unique when it inserts the row (hypothesis draws the same
# keys in many examples, and each example's rows stay in the database).
UNIQUE = "<unique>"
