"""`keeper demo`: a local chain and database with a small workload to look at.

Starts anvil (see `keeper.dev.devchain`) and, unless a database URL is given, an embedded
PostgreSQL (pgserver) under the data directory; migrates the database, deploys the contracts,
records the deployment in `chains`/`deployments`, then has anvil's dev accounts publish a price
list of endpoints, open streams on it and with their own usage prices, create escrows, report
usage per endpoint through the oracle and settle a batch. It
prints what it did and how to connect, then runs the keeper daemon on all of it with a workload
that keeps coming (`keeper.dev.demo_run`), printing a line of what the keeper did every few seconds,
until SIGINT/SIGTERM (or `--duration`); `--no-wait` stops after the set-up instead.

The embedded database `keeper_demo` is dropped and created afresh on every run, because the
chain it describes is new on every run too; the server's files stay in the data directory, so
a second run starts faster.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from keeper import db
from keeper.chain.deployment import Deployer, Deployment, contract, receipt_logs
from keeper.db.migrations import migrate
from keeper.db.queries import load_queries
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.dev.demo_run import (
    DEFAULT_HEALTH_PORT,
    KeeperFiles,
    LiveDemo,
    LiveStream,
    grant_oracle_role,
    health_port,
    keeper_text,
    prepare_keeper,
    supervise,
)
from keeper.dev.devchain import (
    DEFAULT_BLOCK_TIME,
    DEFAULT_PORT,
    DEV_ROLES,
    StopRequested,
    connection_text,
    deploy_dev,
    hold_stop_signals,
    set_interval_mining,
    start_dev_anvil,
    stop_on_signals,
)
from keeper.errors import KeeperError
from keeper.ingest.events import unpack_usage_recorded
from keeper.plan.batches import pack_usage

DEFAULT_DATA_DIR = Path(".keeper/demo")
DEMO_DATABASE = "keeper_demo"
CHAIN_NAME = "anvil-demo"

# anvil dev accounts used by the workload, after the ones DEV_ROLES takes (0-2).
PAYERS = {"payer-a": 3, "payer-b": 4, "payer-c": 5}
PAYEES = {"payee-x": 6, "payee-y": 7, "payee-z": 8}

UNIT = 10**6  # one whole token of the dev token (6 decimals)
MINT_PER_PAYER = 10_000 * UNIT

# The price list LIST_PAYEE publishes (addEndpoint): endpoint names as the usage producer
# writes them, and prices in token base units per unit of usage.
LIST_PAYEE = "payee-x"
ENDPOINTS = (("GET /v1/quote", 50), ("POST /v1/chat", 2_500), ("POST /v1/embed", 400))


class DemoError(KeeperError):
    """The demo could not be set up."""


class PgserverMissing(DemoError):
    """The embedded PostgreSQL (the `pgserver` package) is not installed."""

    def __init__(self) -> None:
        super().__init__(
            help="install the dev extra: pip install 'keeper[dev]' (`make demo` does), "
            "or pass --database-url to use a PostgreSQL you run yourself",
        )


def format_units(amount: int, decimals: int, *, min_decimals: int = 0) -> str:
    """An integer amount of base units as a decimal string: (1_500_000, 6) -> "1.5", and with
    `min_decimals=2` -> "1.50" (never fewer digits than the amount needs).

    Integer arithmetic only: a float would round money.
    """
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0") if frac else ""
    digits = digits.ljust(min(min_decimals, decimals), "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


# --------------------------------------------------------------------------- Postgres


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL running from files under the demo's data directory."""

    server: Any
    dsn: str
    psql: Path

    def stop(self) -> None:
        """Stop the server (its files stay, so the next start is quick)."""
        self.server.cleanup()


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (initialising on first use) a PostgreSQL in `data_dir/pgdata`; fresh demo DB."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.postgres_server import get_server
    except ImportError:
        raise PgserverMissing() from None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    except Exception as exc:
        raise DemoError(
            f"the embedded PostgreSQL in {data_dir / 'pgdata'} did not start: {exc}",
            help=f"see {data_dir / 'pgdata' / 'log'}; deleting {data_dir} starts from scratch",
        ) from exc
    try:
        anyio.run(_recreate_database, str(server.get_uri()), DEMO_DATABASE)
    except BaseException:
        server.cleanup()
        raise
    return EmbeddedPostgres(
        server=server,
        dsn=str(server.get_uri(database=DEMO_DATABASE)),
        psql=Path(POSTGRES_BIN_PATH) / "psql",
    )


async def _recreate_database(server_dsn: str, name: str) -> None:
    conn = await db.connect(server_dsn)
    try:
        # `name` is our constant, not input: identifiers cannot be bound as parameters.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare_database(dsn: str, deployment: Deployment, chain_name: str) -> list[str]:
    """Migrate the database at `dsn` and record `deployment`; return the migrations applied."""
    applied = await migrate(dsn)
    queries = load_queries()
    conn = await db.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(queries["upsert_chain"], deployment.chain_id, chain_name)
            for name, address in deployment_addresses(deployment).items():
                await conn.execute(
                    queries["upsert_deployment"],
                    deployment.chain_id,
                    name,
                    bytes.fromhex(address[2:]),
                    deployment.deployment_block,
                )
    finally:
        await conn.close()
    return applied


async def deployment_rows(dsn: str, chain_id: int) -> list[tuple[str, str, int]]:
    """The `deployments` rows of `chain_id` as (name, 0x-address, deployment block)."""
    conn = await db.connect(dsn)
    try:
        rows = await conn.fetch(load_queries()["deployment_rows"], chain_id)
    finally:
        await conn.close()
    return [(r["name"], "0x" + bytes(r["address"]).hex(), r["deployment_block"]) for r in rows]


def deployment_addresses(deployment: Deployment) -> dict[str, str]:
    """The contract addresses under the names the `deployments` table uses."""
    return {
        "token": deployment.token,
        "stream_manager": deployment.stream_manager,
        "escrow_vault": deployment.escrow_vault,
    }


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class StreamPlan:
    """A stream the demo opens: on its payee's price list, or with a usage price of its own."""

    payer: str
    payee: str
    rate: int  # base units per second
    deposit: int
    usage_price: int = 0  # own price, base units per usage unit; 0: no usage pricing
    note: str = ""
    price_list: bool = False  # openStreamOnPriceList: usage billed at the payee's list


@dataclass(frozen=True)
class EscrowPlan:
    """An escrow the demo creates."""

    payer: str
    payee: str
    amount: int
    timeout: int  # seconds
    release: bool = False
    note: str = ""


STREAMS = (
    StreamPlan("payer-a", "payee-x", 1_000, 500 * UNIT, price_list=True),
    StreamPlan("payer-a", "payee-y", 250, 100 * UNIT, 100),
    StreamPlan("payer-b", "payee-x", 10_000, 1_000 * UNIT, price_list=True),
    StreamPlan("payer-b", "payee-z", 5_000, 1_500_000, 0, "small deposit: depletes soon"),
    StreamPlan("payer-c", "payee-z", 2_000, 250 * UNIT, 50),
)
ESCROWS = (
    EscrowPlan("payer-a", "payee-x", 100 * UNIT, 7 * 24 * 3600),
    EscrowPlan("payer-b", "payee-y", 50 * UNIT, 60, note="short timeout: the keeper refunds it"),
    EscrowPlan("payer-c", "payee-z", 25 * UNIT, 24 * 3600, release=True),
)
# (stream index into STREAMS, endpoint name or None, units): a stream's reports take its usage
# seqs 1, 2, ... in this order. Streams on the price list name an endpoint; own-price streams
# name none. The batch ends with a replay of the first report, which the contract skips:
# exactly once per seq.
USAGE: tuple[tuple[int, str | None, int], ...] = (
    (0, "GET /v1/quote", 1_200),
    (0, "POST /v1/embed", 300),
    (2, "POST /v1/chat", 40),
    (1, None, 700),
    (4, None, 10_000),
)
# Chain time the streams run for between opening and the usage and settlement batches.
STREAMING_SECONDS = 120


@dataclass(frozen=True)
class UsageReport:
    """One usage report as the contract applied it (from its `UsageRecorded` event)."""

    stream_id: int
    seq: int
    endpoint: int  # 0: none (an own-price stream)
    units: int
    charged: int
    fee: int
    balance_after: int
    price: int  # the price in force that was charged


def usage_recorded(ev: dict[str, Any]) -> UsageReport:
    """Unpack a decoded `UsageRecorded` event's three words (as the indexer does)."""
    sid, seq, endpoint, units, charged, fee, _shortfall, balance_after, price = (
        unpack_usage_recorded([int(ev["report"]), int(ev["charge"]), int(ev["state"])])
    )
    return UsageReport(sid, seq, endpoint, units, charged, fee, balance_after, price)


@dataclass
class StreamResult:
    """A stream the demo opened, with what happened to it."""

    id: int
    plan: StreamPlan
    usage: list[UsageReport] = field(default_factory=list)
    settled: int = 0
    fee: int = 0
    balance: int = 0


@dataclass
class EscrowResult:
    """An escrow the demo created."""

    id: int
    plan: EscrowPlan
    expires_at: int
    status: str


@dataclass
class Workload:
    """Everything the demo did on chain."""

    accounts: dict[str, str]
    symbol: str
    decimals: int
    endpoints: dict[str, int] = field(default_factory=dict)  # LIST_PAYEE's: name -> id
    streams: list[StreamResult] = field(default_factory=list)
    escrows: list[EscrowResult] = field(default_factory=list)
    replays_skipped: int = 0
    settle_block: int = 0
    head_block: int = 0
    head_timestamp: int = 0


def create_workload(rpc_url: str, deployment: Deployment) -> Workload:
    """Publish a price list, open streams, create escrows, report usage and settle a batch
    with the dev accounts."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    keys = {name: dev_key(i) for name, i in {**PAYERS, **PAYEES}.items()}
    senders = {name: Deployer(w3, key.account()) for name, key in keys.items() if name in PAYERS}
    list_payee = Deployer(w3, keys[LIST_PAYEE].account())
    admin = Deployer(w3, dev_key(DEV_ROLES.deployer).account())
    oracle = Deployer(w3, dev_key(DEV_ROLES.oracle).account())
    token = contract(w3, "TestToken", deployment.token)
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    vault = contract(w3, "EscrowVault", deployment.escrow_vault)
    work = Workload(
        accounts={name: key.address for name, key in keys.items()},
        symbol=str(token.functions.symbol().call()),
        decimals=deployment.token_decimals,
    )
    addr = work.accounts

    for name, sender in senders.items():
        admin.call(token.functions.mint(addr[name], MINT_PER_PAYER))
        for spender in (manager.address, vault.address):
            sender.call(token.functions.approve(spender, 2**256 - 1))

    work.endpoints = publish_price_list(list_payee, manager)
    for sp in STREAMS:
        if sp.price_list:
            opening = manager.functions.openStreamOnPriceList(addr[sp.payee], sp.rate, sp.deposit)
        else:
            opening = manager.functions.openStream(addr[sp.payee], sp.rate, sp.deposit)
        receipt = senders[sp.payer].call(opening)
        (opened,) = receipt_logs(manager, receipt, "StreamOpened")
        stream = StreamResult(id=int(opened["id"]), plan=sp, balance=sp.deposit)
        if sp.usage_price:
            senders[sp.payer].call(manager.functions.setUsagePrice(stream.id, sp.usage_price))
        work.streams.append(stream)

    # Let the streams run for a while before usage and settlement, so both have something to
    # move. Only a dev node's clock is moved, and only forward.
    rpc(rpc_url, "evm_increaseTime", [STREAMING_SECONDS])
    seqs: dict[int, int] = {}
    words = []
    for index, named, units in USAGE:
        seqs[index] = seqs.get(index, 0) + 1
        endpoint = work.endpoints[named] if named is not None else 0
        words.append(pack_usage(work.streams[index].id, units, seqs[index], endpoint))
    words.append(words[0])  # the replay
    receipt = oracle.call(manager.functions.recordUsage(words))
    by_id = {s.id: s for s in work.streams}
    for ev in receipt_logs(manager, receipt, "UsageRecorded"):
        report = usage_recorded(ev)
        s = by_id[report.stream_id]
        s.usage.append(report)
        s.balance = report.balance_after
    work.replays_skipped = len(receipt_logs(manager, receipt, "UsageSkipped"))

    # Settled by the admin account here; in operation the keeper's signers send this.
    receipt = admin.call(manager.functions.settleStreams([s.id for s in work.streams]))
    for ev in receipt_logs(manager, receipt, "StreamSettled"):
        s = by_id[int(ev["id"])]
        s.settled, s.fee, s.balance = int(ev["amount"]), int(ev["fee"]), int(ev["balanceAfter"])
    work.settle_block = int(receipt["blockNumber"])
    for ep in ESCROWS:
        sender = senders[ep.payer]
        sender.call(vault.functions.deposit(ep.amount))
        receipt = sender.call(vault.functions.createEscrow(addr[ep.payee], ep.amount, ep.timeout))
        (created,) = receipt_logs(vault, receipt, "EscrowCreated")
        escrow = EscrowResult(
            id=int(created["id"]), plan=ep, expires_at=int(created["expiresAt"]), status="open"
        )
        if ep.release:
            sender.call(vault.functions.releaseEscrow(escrow.id))
            escrow.status = "released"
        work.escrows.append(escrow)
    head = w3.eth.get_block("latest")
    work.head_block, work.head_timestamp = int(head["number"]), int(head["timestamp"])
    return work


def publish_price_list(payee: Deployer, manager: Any) -> dict[str, int]:
    """`payee` adds the `ENDPOINTS` to its price list; returns their ids by name."""
    ids = {}
    for name, price in ENDPOINTS:
        receipt = payee.call(manager.functions.addEndpoint(endpoint_name(name), price))
        (added,) = receipt_logs(manager, receipt, "EndpointAdded")
        ids[name] = int(added["endpoint"])
    return ids


def endpoint_name(name: str) -> bytes:
    """An endpoint's name as the contract keeps it: UTF-8, NUL-padded to 32 bytes."""
    raw = name.encode()
    if not 0 < len(raw) <= 32:
        raise DemoError(f"endpoint name {name!r} must be 1 to 32 bytes of UTF-8")
    return raw.ljust(32, b"\0")


def format_duration(seconds: int) -> str:
    """A duration in its two largest units: 90061 -> "1d 1h", 75 -> "1m 15s"."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def workload_text(work: Workload, deployment: Deployment) -> str:
    """A readable account of the workload (amounts as exact decimal strings)."""

    def amount(value: int) -> str:
        return f"{format_units(value, work.decimals)} {work.symbol}"

    def note(text: str) -> str:
        return f"  <- {text}" if text else ""

    lines = ["accounts (anvil dev accounts; keys are not printed)"]
    for name, index in {**PAYERS, **PAYEES}.items():
        lines.append(f"  {name:<8} {work.accounts[name]}  (account {index})")
    lines += [
        f"  each payer was minted {amount(MINT_PER_PAYER)}",
        "",
        f"price list of {LIST_PAYEE} (addEndpoint; a change takes effect after the "
        f"{format_duration(deployment.notice_period)} notice period)",
    ]
    prices = dict(ENDPOINTS)
    for name, endpoint in work.endpoints.items():
        lines.append(f"  endpoint {endpoint}  {name:<15} {amount(prices[name])}/unit")
    lines += [
        "",
        f"streams (StreamManager {deployment.stream_manager}), "
        f"then {format_duration(STREAMING_SECONDS)} of chain time passed",
    ]
    for s in work.streams:
        p = s.plan
        if p.price_list:
            usage = f", usage at {p.payee}'s price list"
        elif p.usage_price:
            usage = f", usage {amount(p.usage_price)}/unit (own price)"
        else:
            usage = ""
        lines.append(
            f"  #{s.id}  {p.payer} -> {p.payee}  {amount(p.rate)}/s, "
            f"deposit {amount(p.deposit)}{usage}"
        )
        runway = f", runs dry in {format_duration(s.balance // p.rate)}" if p.rate else ""
        lines.append(
            f"      settled {amount(s.settled)} (fee {amount(s.fee)}); "
            f"balance {amount(s.balance)}{runway}{note(p.note)}"
        )
    names = {endpoint: name for name, endpoint in work.endpoints.items()}
    lines += ["", f"usage reports (recordUsage by the oracle {deployment.oracle})"]
    by_endpoint: dict[str, int] = {}
    for s in work.streams:
        for r in s.usage:
            where = f"endpoint {names[r.endpoint]}" if r.endpoint else "own price"
            by_endpoint[where] = by_endpoint.get(where, 0) + r.charged
            lines.append(
                f"  stream #{s.id}  seq {r.seq}  {r.units} units  {where}: "
                f"x {amount(r.price)} = {amount(r.charged)} charged"
            )
    if by_endpoint:
        order = [f"endpoint {name}" for name in work.endpoints] + ["own price"]
        lines.append(
            "  charged per endpoint: "
            + ", ".join(f"{w} {amount(by_endpoint[w])}" for w in order if w in by_endpoint)
        )
    if work.replays_skipped:
        lines.append(
            f"  + {work.replays_skipped} replay of an applied seq, skipped (exactly once per seq)"
        )
    lines += [
        f"settlement: one settleStreams call for streams "
        f"{', '.join(f'#{s.id}' for s in work.streams)} in block {work.settle_block}",
        "",
        f"escrows (EscrowVault {deployment.escrow_vault})",
    ]
    for e in work.escrows:
        ep = e.plan
        if e.status == "open":
            left = format_duration(e.expires_at - work.head_timestamp)
            state = f"open, expires in {left} (chain time {e.expires_at})"
        else:
            state = f"{e.status} to {ep.payee}"
        lines.append(
            f"  #{e.id}  {ep.payer} -> {ep.payee}  {amount(ep.amount)}  {state}{note(ep.note)}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


@dataclass
class DemoOptions:
    """What `keeper demo` was asked to do."""

    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    block_time: float = DEFAULT_BLOCK_TIME
    database_url: str | None = None
    rpc_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    wait: bool = True
    health_port: int = DEFAULT_HEALTH_PORT  # taken: any free port; 0: any free port
    duration: float | None = None  # stop after this many seconds of running, as on Ctrl-C


def run_demo(options: DemoOptions, stdout: TextIO | None = None) -> int:
    """`keeper demo`: set everything up, print it, then run the keeper on it until
    SIGINT/SIGTERM or `duration` (or stop at once: `wait=False`).

    Returns the exit status: 0 when done (`wait=False`) or stopped by a signal or the duration;
    1 when the keeper daemon (or anvil) died while the demo ran.
    """
    out = stdout or sys.stdout

    def say(*parts: str) -> None:
        print(*parts, file=out, flush=True)

    data_dir = options.data_dir.resolve()
    deployment_file = data_dir / "deployment.json"
    status = 0
    with stop_on_signals():
        node: Anvil | None = None
        pg: EmbeddedPostgres | None = None
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            deployment_file.unlink(missing_ok=True)
            if options.database_url:
                dsn = options.database_url
            else:
                say(f"starting the embedded PostgreSQL in {data_dir / 'pgdata'}")
                pg = start_embedded_postgres(data_dir)
                dsn = pg.dsn
            if options.rpc_url:
                rpc_url = options.rpc_url
            else:
                node = start_dev_anvil(
                    host=options.host, port=options.port, log_path=data_dir / "anvil.log"
                )
                rpc_url = node.url
            say(f"chain: {rpc_url}; deploying the contracts")
            deployment = deploy_dev(rpc_url)
            deployment.write(deployment_file)
            applied = anyio.run(prepare_database, dsn, deployment, CHAIN_NAME)
            say(f"database migrated ({', '.join(applied) or 'already up to date'})")
            say("deployment recorded in the chains and deployments tables")
            work = create_workload(rpc_url, deployment)
            files: KeeperFiles | None = None
            if options.wait:
                port = health_port("127.0.0.1", options.health_port)
                files = prepare_keeper(
                    data_dir, rpc_url=rpc_url, dsn=dsn, chain_name=CHAIN_NAME, port=port
                )
                grant_oracle_role(rpc_url, deployment, [a for _, a in files.signers])
            if node is not None and options.wait:
                set_interval_mining(rpc_url, options.block_time)
            say()
            say(connection_text(rpc_url, deployment, deployment_file))
            say()
            say(workload_text(work, deployment))
            say()
            say(_connect_text(dsn, pg, data_dir))
            if files is not None:
                say()
                say(keeper_text(files, _psql_command(dsn, pg)))
                say("\nPress Ctrl-C to stop the keeper, the workload, anvil and the database.\n")
                status = supervise(
                    LiveDemo(
                        files=files,
                        rpc_url=rpc_url,
                        dsn=dsn,
                        deployment=deployment,
                        node=node,
                        streams=[
                            LiveStream(
                                s.id,
                                s.plan.usage_price,
                                tuple(work.endpoints) if s.plan.price_list else (),
                            )
                            for s in work.streams
                            if s.plan.usage_price or s.plan.price_list
                        ],
                        amount=lambda v: (
                            f"{format_units(v, work.decimals, min_decimals=2)} {work.symbol}"
                        ),
                        say=say,
                        payers=PAYERS,
                        payees=PAYEES,
                        price_lists={LIST_PAYEE: tuple(work.endpoints)},
                        duration=options.duration,
                    )
                )
        except StopRequested:
            say("stopping the demo")
        finally:
            hold_stop_signals()
            if node is not None:
                node.stop()
                if options.wait:
                    say("anvil stopped")
            if pg is not None:
                pg.stop()
                if options.wait:
                    say("the embedded PostgreSQL stopped")
    return status


def _safe_dsn(dsn: str, pg: EmbeddedPostgres | None) -> str:
    # The embedded server trusts local connections (no password), and masking its empty
    # password would break the psql line; a URL the operator gave us may hold a real one.
    return dsn if pg is not None else db.redact_dsn(dsn)


def _psql_command(dsn: str, pg: EmbeddedPostgres | None) -> str:
    psql = str(pg.psql) if pg is not None else "psql"
    return f"{psql} '{_safe_dsn(dsn, pg)}'"


def _connect_text(dsn: str, pg: EmbeddedPostgres | None, data_dir: Path) -> str:
    lines = [
        "connect",
        f"  PostgreSQL      {_safe_dsn(dsn, pg)}",
        f"  psql            {_psql_command(dsn, pg)}",
        "  e.g.            SELECT chain_id, name, encode(address, 'hex') FROM deployments;",
        f"  data directory  {data_dir}",
    ]
    return "\n".join(lines)
