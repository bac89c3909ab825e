"""The operator views served from a PostgreSQL hot standby to a member of `keeper_reader`.

The test runs a server pair of its own: a primary made with `initdb`, and a streaming replica
of it made with `pg_basebackup -R` before anything is in the primary, so that the schema and
every row reach the standby through WAL replay. The primary is migrated and filled by the real
indexer from anvil (streams, settlements, usage, escrows), then a planning pass and usage rows
put intents and usage into it. Once the standby has replayed up to the primary's WAL position,
a login role that is only a member of keeper_reader reads every view of schema `keeper` there
(enumerated from the catalog, so a later view is covered too), and the answers equal the
primary's.

The server binaries are Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`;
.ci/run installs it when missing). PostgreSQL refuses to run as root: as root, the servers run
as the `postgres` system user that package creates, in a temporary directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.config import PlanConfig
from keeper.db.migrations import migrate
from keeper.dev.anvil import free_port, start_anvil
from keeper.plan.planner import Planner
from keeper.service.leader import leader_lock_key
from keeper.service.status import collect_status
from tests.support.activity import DevChain, deploy_chain, make_activity
from tests.support.ingest import Target, index_until_caught_up, open_indexer

pytestmark = pytest.mark.anyio

T = TypeVar("T")

SERVER_ROOT = Path("/usr/lib/postgresql")
TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
# Written into the primary's postgresql.conf before the base backup, so the standby has them
# too. TCP on loopback only; no Unix socket (its default directory belongs to the system's
# cluster); no fsync: the data dies with the test. synchronous_commit stays on: the wait for
# replay compares with pg_current_wal_lsn(), which an asynchronous commit may not have reached.
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
full_page_writes = off
"""
DATABASE = "keeper"
READER = "replica_reader"
REPLAY_TIMEOUT = 30.0
REPLAY_POLL = 0.05
# Computed from the wall clock (now()), so two reads a moment apart may differ by a second.
WALL_CLOCK_COLUMNS = frozenset({"wall_lag_seconds"})
PLAN = PlanConfig(
    settle_min_amount=1_000, settle_max_interval=3_600, settle_horizon=600, backoff_seconds=60
)


def server_bindir() -> Path:
    """The newest PostgreSQL under /usr/lib/postgresql with every tool the test runs."""
    found = [d for d in SERVER_ROOT.glob("*/bin") if all((d / t).is_file() for t in TOOLS)]
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server binaries ({', '.join(TOOLS)}) under {SERVER_ROOT}/*/bin: "
            "install Debian's postgresql package (apt-get install postgresql)"
        )
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def server_account() -> dict[str, Any]:
    """subprocess.run arguments that drop root to the `postgres` system user (PostgreSQL
    refuses to run as root); none for anyone else."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no `postgres` system user to run PostgreSQL as: "
            "install Debian's postgresql package, which creates it"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class Server:
    """One PostgreSQL server of the pair: its data directory, log and loopback port."""

    bindir: Path
    datadir: Path
    port: int
    account: dict[str, Any]

    @property
    def log(self) -> Path:
        return self.datadir.with_suffix(".log")

    def tool(self, name: str, *args: str) -> None:
        try:
            subprocess.run(
                [str(self.bindir / name), *args],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
                **self.account,
            )
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text() if self.log.is_file() else ""
            raise RuntimeError(f"{name} failed: {exc.stderr}{exc.stdout}\n{log}") from exc

    def start(self) -> None:
        self.tool(
            "pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "30",
            "-o", f"-p {self.port}",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once (nothing here needs a clean shutdown); never raises."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate"],
                capture_output=True,
                timeout=60,
                check=False,
                **self.account,
            )

    def url(self, user: str = "postgres", database: str = DATABASE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


@dataclass
class Pair:
    primary: Server
    standby: Server
    chain_id: int


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    """A primary and its hot standby (streaming replication, started empty); both stopped and
    their directory removed afterwards, also when the set-up fails half-way."""
    bindir, account = server_bindir(), server_account()
    # Not under pytest's tmp_path: its parents are private to root, and the server user must
    # reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="keeper-replica-"))
    started: list[Server] = []
    try:
        if account:
            os.chown(root, account["user"], account["group"])
        primary = Server(bindir, root / "primary", free_port(), account)
        standby = Server(bindir, root / "standby", free_port(), account)
        primary.tool(
            "initdb", "-D", str(primary.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        with (primary.datadir / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS)
        started.append(primary)
        primary.start()
        # -R writes standby.signal and primary_conninfo: the copy starts as a hot standby
        # streaming from the primary.
        primary.tool(
            "pg_basebackup", "-D", str(standby.datadir), "-h", "127.0.0.1",
            "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast",
            "--no-sync",
        )  # fmt: skip
        started.append(standby)
        standby.start()
        yield primary, standby
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run async set-up from a module fixture, in a thread with its own event loop (clear of
    the loop of the anyio test runner)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, func, *args).result()


@pytest.fixture(scope="module")
def pair(servers: tuple[Server, Server]) -> Pair:
    """The pair with the primary migrated and filled, and the standby caught up with it."""
    primary, standby = servers
    node = start_anvil()
    try:
        chain = deploy_chain(node)
        make_activity(chain, 3, random.Random(17), max_gap=5)
        _run(fill, primary, chain)
    finally:
        node.stop()
    _run(wait_for_replay, primary, standby)
    return Pair(primary, standby, chain.deployment.chain_id)


async def admin(server: Server, *statements: str, database: str = DATABASE) -> None:
    conn = await keeper_db.connect(server.url(database=database))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fill(primary: Server, chain: DevChain) -> None:
    """Migrate the primary and fill it as a running keeper would: index the chain, take usage
    rows in, plan a pass (intents), then more chain activity that is due and not planned."""
    await admin(primary, f"CREATE DATABASE {DATABASE}", database="postgres")
    url = primary.url()
    await migrate(url)
    await admin(primary, f"CREATE ROLE {READER} LOGIN IN ROLE keeper_reader")
    d = chain.deployment
    target = Target(chain_id=d.chain_id, addresses=chain.addresses, start_block=d.deployment_block)
    planner = Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=PLAN
    )
    async with open_indexer(chain.url, url, target) as indexer:
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            # Streams 3 and 5 are open and priced, 1 is closed, 99999 does not exist.
            await conn.executemany(
                "INSERT INTO usage_inbox (stream_id, units, producer_key, label) "
                "VALUES ($1, $2, $3, 'api')",
                [("3", "5", "req-1"), ("5", "2", "req-2"), ("1", "1", "req-3"),
                 ("3", "-4", "req-4"), ("99999", "1", "req-5")],
            )  # fmt: skip
            await planner.store_settings(conn)
            report = await planner.plan_pass(conn)
        assert report.usage_error is None, report.usage_error
        assert {b.kind for b in report.planned} == {"settle", "usage"}, report.planned
        # After the pass: a new stream and an escrow that both come due, unplanned.
        payer, payee = chain.accounts[3], chain.accounts[6]
        chain.block(
            (payer, chain.manager, "openStream", [payee, 7, 10**8]),
            (payer, chain.vault, "createEscrow", [payee, 500, 60]),
        )
        chain.wait(4_000)
        chain.skip(1)
        await index_until_caught_up(indexer)


async def wait_for_replay(primary: Server, standby: Server) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    conn = await keeper_db.connect(primary.url())
    try:
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    finally:
        await conn.close()
    conn = await keeper_db.connect(standby.url())
    try:
        for _ in range(int(REPLAY_TIMEOUT / REPLAY_POLL)):
            if await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn):
                return
            await anyio.sleep(REPLAY_POLL)
        replayed = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
    finally:
        await conn.close()
    raise AssertionError(f"the standby replayed up to {replayed}, not {lsn}, in {REPLAY_TIMEOUT} s")


async def connected(url: str) -> asyncpg.Connection:
    return await keeper_db.connect(url)


def comparable(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    """The rows without their wall-clock columns, in a fixed order."""
    return sorted(
        (tuple(v for k, v in r.items() if k not in WALL_CLOCK_COLUMNS) for r in rows), key=repr
    )


async def keeper_views(conn: asyncpg.Connection) -> list[str]:
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views "
            "WHERE schemaname = 'keeper' ORDER BY 1"
        )
    ]


async def test_every_view_answers_the_reader_on_the_standby_as_on_the_primary(
    pair: Pair,
) -> None:
    primary = await connected(pair.primary.url())
    reader = await connected(pair.standby.url(READER))
    try:
        assert await reader.fetchval("SELECT pg_is_in_recovery()")
        views = await keeper_views(primary)
        assert await keeper_views(reader) == views
        assert len(views) >= 20
        assert {
            "keeper.streams_due",
            "keeper.stream_balances",
            "keeper.settlement_totals",
            "keeper.usage_daily",
            "keeper.tx_pipeline",
            "keeper.usage",
        } <= set(views)
        rows: dict[str, list[asyncpg.Record]] = {}
        for view in views:
            select = f"SELECT * FROM {view}"  # noqa: S608 - names from the catalog
            rows[view] = await reader.fetch(select)
            assert comparable(rows[view]) == comparable(await primary.fetch(select)), view
    finally:
        await reader.close()
        await primary.close()

    # What the standby answered is the filled state, not empty views. 18 streams of the
    # activity and the one opened after the planning pass:
    assert len(rows["keeper.stream_balances"]) == 19
    due = rows["keeper.streams_due"]
    assert [(int(r["stream_id"]), r["reason"]) for r in due] == [(19, "min_amount")]
    assert len(rows["keeper.escrows_refundable"]) == 1
    assert rows["keeper.usage_daily"]
    assert sum(r["units"] for r in rows["keeper.usage_daily"]) > 0
    # settlement_totals (keeper.first_block_since, a SECURITY DEFINER function) on the standby:
    totals = {r["window_name"]: r for r in rows["keeper.settlement_totals"]}
    assert list(totals) == ["10m", "1h", "6h", "12h", "24h", "7d", "30d"]
    assert totals["30d"]["settlements"] > 0 and totals["30d"]["settled_amount"] > 0
    assert totals["30d"]["usage_reports"] > 0
    # The intents of the planning pass, and every usage row with its verdict.
    assert {r["kind"] for r in rows["keeper.tx_pipeline"]} == {"settle", "usage"}
    assert len(rows["keeper.items_in_flight"]) > len(rows["keeper.tx_pipeline"])
    status = {r["producer_key"]: r["status"] for r in rows["keeper.usage"]}
    assert status["req-1"] == status["req-2"] == "sending"
    assert status["req-3"] == status["req-4"] == "rejected"
    assert len(rows["keeper.indexer_status"]) == 1
    (indexed,) = rows["keeper.indexer_status"]
    assert indexed["chain_id"] == pair.chain_id and indexed["backfill_done"]


async def test_the_standby_refuses_every_write(pair: Pair) -> None:
    conn = await connected(pair.standby.url())  # the superuser: only recovery stops it
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
        for statement in (
            "INSERT INTO chains (chain_id, name) VALUES (1, 'mainnet')",
            "UPDATE ingest_cursor SET indexed_block = indexed_block + 1",
            "DELETE FROM usage_inbox",
            "CREATE TABLE replica_was_here (id int)",
        ):
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM usage_inbox") == 5
    finally:
        await conn.close()


async def test_the_reader_reads_no_table_on_the_standby(pair: Pair) -> None:
    reader = await connected(pair.standby.url(READER))
    try:
        tables = [
            r[0]
            for r in await reader.fetch(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        assert {"public.streams", "public.intents", "public.usage_inbox"} <= set(tables)
        for table in tables:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.fetch(f"SELECT * FROM {table} LIMIT 1")  # noqa: S608 - catalog names
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("SELECT delete_events_after(1, 0)")
    finally:
        await reader.close()


async def test_keeper_status_reads_the_standby_as_the_reader(pair: Pair) -> None:
    """What `keeper status --database-url <replica>` shows: the same pending work, but never
    the leader (its advisory lock lives in the primary's memory, not in the WAL)."""
    leader = await connected(pair.primary.url())
    reader = await connected(pair.standby.url(READER))
    try:
        assert await leader.fetchval(
            "SELECT pg_try_advisory_lock($1)", leader_lock_key(pair.chain_id)
        )
        on_primary = await collect_status(leader)
        on_standby = await collect_status(reader)
    finally:
        await reader.close()
        await leader.close()
    assert on_primary["leader"] is not None and on_standby["leader"] is None
    assert on_standby["chain"]["id"] == pair.chain_id
    assert on_standby["index"]["backfill_done"]
    pending = on_standby["pending"]
    assert (pending["streams_due"], pending["escrows_refundable"]) == (1, 1)
    assert pending["intents"] == {"settle": {"planned": 1}, "usage": {"planned": 1}}
    assert on_standby["pending"] == on_primary["pending"]
    assert on_standby["last_24h"] == on_primary["last_24h"]
    assert on_standby["last_24h"]["settlements"] > 0
