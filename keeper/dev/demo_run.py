"""`keeper demo`, running: the keeper daemon on the demo's chain and database, a workload that
keeps coming, and a line every few seconds of what the keeper did.

`prepare_keeper` writes what `keeper run` needs into the data directory: a configuration with
short intervals and small thresholds (so that work falls due within seconds), and an encrypted
keystore with its password file (mode 0600) for each signer. The signers are anvil dev accounts:
the oracle, and one more that is granted ORACLE_ROLE, since every signer reports usage.

`supervise` then runs `keeper run` in its own session (a Ctrl-C on the terminal reaches only
the demo, which stops everything in order), its stdout and stderr going to `keeper.log`. While
it runs, payers open a stream (on the price list of a payee that has one, else with a usage
price of their own) and an escrow that expires soon every `CHAIN_WORK_INTERVAL` seconds (in a
thread: web3 here is synchronous and each transaction waits for its block), and usage rows,
naming an endpoint for streams on a price list, go into `usage_inbox` every `USAGE_INTERVAL`
seconds. Every `ACTIVITY_INTERVAL` seconds one line says what the chain and the database show
the keeper did since the last line, with the usage charged per endpoint.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from anyio.abc import Process
from eth_account import Account

from keeper import db
from keeper.chain.deployment import Deployer, Deployment, contract, receipt_logs
from keeper.db.queries import load_queries
from keeper.dev.anvil import Anvil, dev_key, free_port, rpc
from keeper.dev.devchain import DEV_ROLES, port_is_free

DEFAULT_HEALTH_PORT = 9464
# The oracle (granted ORACLE_ROLE by the deployment) and the last dev account, which no other
# part of the demo sends from: two nonce lanes.
SIGNER_ACCOUNTS = (DEV_ROLES.oracle, 9)
ACTIVITY_INTERVAL = 5.0
USAGE_INTERVAL = 3.0
CHAIN_WORK_INTERVAL = 20.0
SHUTDOWN_GRACE = 5.0  # the daemon's [daemon] shutdown_grace
STOP_TIMEOUT = SHUTDOWN_GRACE + 10.0  # then the daemon is killed
LOG_TAIL_LINES = 20
# Light scrypt: these are anvil's public dev keys, and the daemon decrypts them at every start.
KEYSTORE_SCRYPT_N = 2**14

USAGE_LABELS = ("GET /v1/quote", "POST /v1/chat", "POST /v1/embed")
USAGE_UNITS = (10, 40, 120, 300, 25)
USAGE_ROWS_PER_TICK = 4

# Rounds of the live chain workload cycle through these (integers in token base units).
LIVE_RATES = (1_000, 2_500, 4_000)
LIVE_DEPOSITS = (500_000, 1_000_000, 1_500_000)
LIVE_PRICES = (25, 50, 100)
LIVE_ESCROWS = (1_000_000, 2_000_000, 5_000_000)
LIVE_TIMEOUTS = (15, 20, 30)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class KeeperFiles:
    """What `prepare_keeper` wrote, and where the daemon will be found."""

    config: Path
    log: Path
    health_url: str
    signers: list[tuple[int, str]]  # (dev account index, address)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (created 0600, never wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def health_port(host: str, wanted: int) -> int:
    """`wanted` if it is free on `host`, else any free port (0: any free port)."""
    if wanted and port_is_free(host, wanted):
        return wanted
    return free_port()


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def prepare_keeper(
    data_dir: Path, *, rpc_url: str, dsn: str, chain_name: str, port: int
) -> KeeperFiles:
    """Write the keystores and `keeper.toml` for the demo's daemon into `data_dir`."""
    keys_dir = data_dir / "keys"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer_tables = []
    signers = []
    for index in SIGNER_ACCOUNTS:
        key = dev_key(index)
        password = secrets.token_urlsafe(24)
        keystore = Account.encrypt(key.account().key, password, iterations=KEYSTORE_SCRYPT_N)
        write_private(keys_dir / f"signer-{index}.json", json.dumps(keystore))
        write_private(keys_dir / f"signer-{index}.password", password + "\n")
        signer_tables.append(
            "[[signers]]\n"
            f'keystore = "keys/signer-{index}.json"\n'
            f'password_file = "keys/signer-{index}.password"\n'
        )
        signers.append((index, key.address))
    text = f"""\
# The keeper configuration of `keeper demo`, written afresh on every run: short intervals
# and small thresholds, so that work falls due within seconds. See config/keeper.example.toml
# for every field.

[chain]
rpc_url = {_toml_string(rpc_url)}
deployment_file = "deployment.json"
name = {_toml_string(chain_name)}

[database]
url = {_toml_string(dsn)}

[ingest]
poll_interval = 0.5

[tx]
confirmations = 2
poll_interval = 0.5

[plan]
interval = 2.0
# Due at 0.10 of the token accrued, or every minute, or within 30 s of running dry.
settle_min_amount = 100000
settle_max_interval = 60
settle_horizon = 30
backoff_seconds = 30
unknown_stream_grace = 30.0

[health]
enabled = true
host = "127.0.0.1"
port = {port}

[daemon]
shutdown_grace = {SHUTDOWN_GRACE}

[log]
level = "info"
format = "json"

""" + "\n".join(signer_tables)
    config = data_dir / "keeper.toml"
    write_private(config, text)  # it holds the database URL, which may hold a password
    return KeeperFiles(
        config=config,
        log=data_dir / "keeper.log",
        health_url=f"http://127.0.0.1:{port}",
        signers=signers,
    )


def grant_oracle_role(rpc_url: str, deployment: Deployment, addresses: list[str]) -> None:
    """Grant ORACLE_ROLE on StreamManager to `addresses` (sent by the admin, dev account 0)."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    admin = Deployer(w3, dev_key(DEV_ROLES.deployer).account())
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    role = manager.functions.ORACLE_ROLE().call()
    for address in addresses:
        if not manager.functions.hasRole(role, address).call():
            admin.call(manager.functions.grantRole(role, address))


# --------------------------------------------------------------------------- workload


@dataclass
class LiveStream:
    """A stream the workload may send usage for: with an own usage price, or on a price list
    whose endpoints (names) its usage rows name."""

    id: int
    price: int
    endpoints: tuple[str, ...] = ()

    @property
    def billable(self) -> bool:
        """Whether usage on it is charged at all."""
        return bool(self.price or self.endpoints)


class ChainWorkload(threading.Thread):
    """Every `interval` seconds a payer opens a stream (on its payee's price list if it has
    one, in `price_lists`, else with a usage price) and an escrow that expires within seconds.
    What it did goes to `messages`; streams to `streams`."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        payers: dict[str, int],
        payees: dict[str, int],
        *,
        amount: Callable[[int], str],
        streams: list[LiveStream],
        messages: queue.Queue[str],
        price_lists: dict[str, tuple[str, ...]] | None = None,
        interval: float = CHAIN_WORK_INTERVAL,
    ) -> None:
        super().__init__(name="demo-workload", daemon=True)
        self.rpc_url, self.deployment, self.interval = rpc_url, deployment, interval
        self.price_lists = price_lists or {}
        self.payers, self.payees = list(payers.items()), list(payees.items())
        self.amount, self.streams, self.messages = amount, streams, messages
        self.stopping = threading.Event()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the thread to stop after its current transaction, and wait for it."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        """One round per `interval` until `stop`; a failed round is reported, not fatal."""
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))
        manager = contract(w3, "StreamManager", self.deployment.stream_manager)
        vault = contract(w3, "EscrowVault", self.deployment.escrow_vault)
        senders: dict[str, Deployer] = {}
        for round_no in itertools.count():
            if self.stopping.is_set():
                return
            payer, payer_index = self.payers[round_no % len(self.payers)]
            payee, payee_index = self.payees[(round_no + 1) % len(self.payees)]
            try:
                if payer not in senders:
                    senders[payer] = Deployer(w3, dev_key(payer_index).account())
                self._round(round_no, senders[payer], manager, vault, payer, payee, payee_index)
            except Exception as exc:
                # anvil going away at shutdown ends up here too; the supervisor decides.
                self.messages.put(f"workload: {payer}'s transaction failed: {exc}")
                senders.pop(payer, None)  # its nonce is read again next time
            self.stopping.wait(self.interval)

    def _round(
        self,
        n: int,
        sender: Deployer,
        manager: Any,
        vault: Any,
        payer: str,
        payee: str,
        payee_index: int,
    ) -> None:
        to = dev_key(payee_index).address
        rate, deposit = LIVE_RATES[n % 3], LIVE_DEPOSITS[n % 3]
        endpoints = self.price_lists.get(payee, ())
        if endpoints:
            receipt = sender.call(manager.functions.openStreamOnPriceList(to, rate, deposit))
        else:
            receipt = sender.call(manager.functions.openStream(to, rate, deposit))
        (opened,) = receipt_logs(manager, receipt, "StreamOpened")
        stream_id = int(opened["id"])
        if endpoints:
            terms = f"usage at {payee}'s price list"
            self.streams.append(LiveStream(stream_id, 0, endpoints))
        else:
            price = LIVE_PRICES[n % 3]
            sender.call(manager.functions.setUsagePrice(stream_id, price))
            terms = f"usage {self.amount(price)}/unit"
            self.streams.append(LiveStream(stream_id, price))
        self.messages.put(
            f"workload: {payer} opened stream #{stream_id} to {payee}, "
            f"{self.amount(rate)}/s, deposit {self.amount(deposit)}, {terms}"
        )
        if self.stopping.is_set():
            return
        escrow, timeout = LIVE_ESCROWS[n % 3], LIVE_TIMEOUTS[n % 3]
        sender.call(vault.functions.deposit(escrow))
        receipt = sender.call(vault.functions.createEscrow(to, escrow, timeout))
        (created,) = receipt_logs(vault, receipt, "EscrowCreated")
        self.messages.put(
            f"workload: {payer} created escrow #{int(created['id'])} of {self.amount(escrow)} "
            f"for {payee}, expires in {timeout}s (the keeper refunds it)"
        )


UsageColumns = tuple[list[str], list[str], list[str], list[str], list[str | None]]


def usage_rows(streams: list[LiveStream], start: int, count: int, run_id: str) -> UsageColumns:
    """`count` usage rows as a producer writes them (text columns: stream id, units, producer
    key, label, endpoint), for billable streams in turn. A stream on a price list names one of
    its endpoints (in turn); an own-price stream names none."""
    billable = [s for s in streams if s.billable]
    ids, units, keys, labels = [], [], [], []
    endpoints: list[str | None] = []
    for n in range(start, start + count if billable else start):
        stream = billable[n % len(billable)]
        ids.append(str(stream.id))
        units.append(str(USAGE_UNITS[n % len(USAGE_UNITS)]))
        keys.append(f"demo-{run_id}-{n}")
        if stream.endpoints:
            endpoint = stream.endpoints[(n // len(billable)) % len(stream.endpoints)]
            endpoints.append(endpoint)
            labels.append(endpoint)
        else:
            endpoints.append(None)
            labels.append(USAGE_LABELS[n % len(USAGE_LABELS)])
    return ids, units, keys, labels, endpoints


# --------------------------------------------------------------------------- activity


@dataclass
class Activity:
    """One activity line's figures (amounts in token base units)."""

    block: int
    settled_streams: int = 0
    settled_amount: int = 0
    usage_reports: int = 0
    usage_charged: int = 0
    refunded_escrows: int = 0
    refunded_amount: int = 0
    txs_confirmed: int = 0
    txs_failed: int = 0
    txs_in_flight: int = 0
    usage_pending: int = 0
    # (endpoint name, or "own price" for reports without one; amount charged)
    usage_by_endpoint: list[tuple[str, int]] = field(default_factory=list)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def activity_text(a: Activity, amount: Callable[[int], str]) -> str:
    """The line's text after the time: what was done, then what waits; a heartbeat if nothing."""
    done = []
    if a.settled_streams:
        done.append(f"settled {_count(a.settled_streams, 'stream')} ({amount(a.settled_amount)})")
    if a.usage_reports:
        split = "".join(f", {name} {amount(v)}" for name, v in a.usage_by_endpoint)
        done.append(
            f"recorded {_count(a.usage_reports, 'usage report')} ({amount(a.usage_charged)}{split})"
        )
    if a.refunded_escrows:
        done.append(
            f"refunded {_count(a.refunded_escrows, 'escrow')} ({amount(a.refunded_amount)})"
        )
    if a.txs_confirmed:
        done.append(f"txs {a.txs_confirmed} confirmed")
    if a.txs_failed:
        done.append(f"{_count(a.txs_failed, 'tx')} failed (see keeper.tx_pipeline)")
    waiting = []
    if a.usage_pending:
        waiting.append(_count(a.usage_pending, "usage row"))
    if a.txs_in_flight:
        waiting.append(f"{_count(a.txs_in_flight, 'tx')} in flight")
    if not done and not waiting:
        return f"block {a.block}, nothing due"
    parts = [f"block {a.block}", *done]
    if waiting:
        parts.append("pending: " + ", ".join(waiting))
    return "  ".join(parts)


async def read_activity(
    conn: db.Conn, chain_id: int, since_block: int, to_block: int, since_time: Any
) -> tuple[Activity, Any]:
    """The figures of blocks (since_block, to_block] and of transactions after `since_time`;
    returns them with the database's time, the next `since_time`."""
    queries = load_queries("demo.sql")
    row = await conn.fetchrow(queries["activity"], chain_id, since_block, to_block, since_time)
    assert row is not None
    figures = {k: db.to_int(v) for k, v in row.items() if k != "as_of"}
    split = await conn.fetch(queries["usage_by_endpoint"], chain_id, since_block, to_block)
    by_endpoint = [(r["endpoint"] or "own price", db.to_int(r["charged"])) for r in split]
    return Activity(block=to_block, usage_by_endpoint=by_endpoint, **figures), row["as_of"]


# --------------------------------------------------------------------------- supervision


def daemon_environment() -> dict[str, str]:
    """This environment without `KEEPER_<SECTION>__<FIELD>` overrides: the demo's daemon
    runs on the demo's configuration, whatever the shell exports."""
    return {
        k: v for k, v in os.environ.items() if not (k.upper().startswith("KEEPER_") and "__" in k)
    }


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of the file at `path` (none if it cannot be read)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]
    except OSError:
        return []


@dataclass
class LiveDemo:
    """Everything the running phase works with."""

    files: KeeperFiles
    rpc_url: str
    dsn: str
    deployment: Deployment
    node: Anvil | None
    streams: list[LiveStream]
    amount: Callable[[int], str]
    say: Callable[[str], None]
    payers: dict[str, int]
    payees: dict[str, int]
    price_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)  # payee -> endpoints
    duration: float | None = None
    messages: queue.Queue[str] = field(default_factory=queue.Queue)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


class _Stop:
    """Why the running phase ends: a signal or the duration (status 0), or a death (1)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.status = 0

    def request(self, status: int = 0) -> None:
        if not self.event.is_set():
            self.status = status
            self.event.set()


def _now() -> str:
    """The wall-clock time that starts each printed line."""
    return time.strftime("%H:%M:%S")


def supervise(live: LiveDemo) -> int:
    """Run the keeper daemon, the workload and the activity lines until SIGINT/SIGTERM, the
    duration, or the death of the daemon (or of anvil); stop the daemon first (SIGTERM, wait),
    then the workload. Returns the exit status: 0, or 1 when something died."""
    return anyio.run(_supervise, live)


async def _supervise(live: LiveDemo) -> int:
    stop = _Stop()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        workload = ChainWorkload(
            live.rpc_url,
            live.deployment,
            live.payers,
            live.payees,
            amount=live.amount,
            streams=live.streams,
            messages=live.messages,
            price_lists=live.price_lists,
        )
        start_block = int(str(rpc(live.rpc_url, "eth_blockNumber")), 16)
        pool = await db.create_pool(live.dsn, min_size=1, max_size=2)
        proc: Process | None = None
        try:
            start_time = await pool.fetchval("SELECT now()")
            with live.files.log.open("wb") as log_file:
                proc = await anyio.open_process(
                    [sys.executable, "-m", "keeper", "run", "--config", str(live.files.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=daemon_environment(),
                )
            live.say(f"{_now()}  keeper run started (pid {proc.pid})")
            workload.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_on_signal, signals, stop, live)
                tg.start_soon(_watch_daemon, proc, stop, live)
                if live.node is not None:
                    tg.start_soon(_watch_anvil, live.node, stop, live)
                if live.duration is not None:
                    tg.start_soon(_after, live.duration, stop, live)
                tg.start_soon(_feed_usage, pool, live)
                tg.start_soon(_report, pool, live, stop, start_block, start_time)
                await stop.event.wait()
                await _stop_daemon(proc, live)
                tg.cancel_scope.cancel()
            await anyio.to_thread.run_sync(workload.stop)
            live.say("workload stopped")
        finally:
            with anyio.CancelScope(shield=True):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await anyio.to_thread.run_sync(workload.stop)
                with anyio.move_on_after(5):
                    await pool.close()
    return stop.status


async def _on_signal(signals: Any, stop: _Stop, live: LiveDemo) -> None:
    async for signum in signals:
        live.say(f"stopping the demo ({signal.Signals(signum).name}): the keeper first")
        stop.request(0)
        return


async def _after(seconds: float, stop: _Stop, live: LiveDemo) -> None:
    await anyio.sleep(seconds)
    live.say(f"stopping the demo (--duration {seconds:g} s is up): the keeper first")
    stop.request(0)


async def _watch_daemon(proc: Process, stop: _Stop, live: LiveDemo) -> None:
    status = await proc.wait()
    if stop.event.is_set():
        return
    live.say(f"the keeper exited on its own with status {status}; the end of {live.files.log}:")
    for line in log_tail(live.files.log):
        live.say(f"  | {line}")
    live.say("stopping the demo")
    stop.request(1)


async def _watch_anvil(node: Anvil, stop: _Stop, live: LiveDemo) -> None:
    await anyio.to_thread.run_sync(node.process.wait, abandon_on_cancel=True)
    if not stop.event.is_set():
        live.say(f"anvil exited with status {node.process.returncode}; stopping the demo")
        stop.request(1)


async def _stop_daemon(proc: Process, live: LiveDemo) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
        if proc.returncode is None:
            live.say(f"the keeper did not stop within {STOP_TIMEOUT:g} s: killed")
            proc.kill()
            await proc.wait()
            return
        if proc.returncode != 0:
            live.say(f"the keeper stopped with status {proc.returncode} (see {live.files.log})")
            return
    live.say("keeper stopped")


async def _feed_usage(pool: asyncpg.Pool, live: LiveDemo) -> None:
    insert = load_queries("demo.sql")["insert_usage_rows"]
    for tick in itertools.count():
        await anyio.sleep(USAGE_INTERVAL)
        columns = usage_rows(
            live.streams, tick * USAGE_ROWS_PER_TICK, USAGE_ROWS_PER_TICK, live.run_id
        )
        try:
            await pool.execute(insert, *columns)
        except (asyncpg.PostgresError, OSError) as exc:
            live.say(f"{_now()}  workload: usage rows not inserted: {exc}")


async def _report(
    pool: asyncpg.Pool, live: LiveDemo, stop: _Stop, start_block: int, start_time: Any
) -> None:
    """Every ACTIVITY_INTERVAL seconds, the workload's news and one activity line; silent
    once the demo is stopping (the lines would describe a keeper on its way out)."""
    queries = load_queries("demo.sql")
    chain_id = live.deployment.chain_id
    since_block, since_time = start_block, start_time
    while True:
        await anyio.sleep(ACTIVITY_INTERVAL)
        if stop.event.is_set():
            return
        while not live.messages.empty():
            live.say(f"{_now()}  {live.messages.get_nowait()}")
        try:
            async with pool.acquire() as conn:
                progress = await conn.fetchrow(queries["indexer_progress"], chain_id)
                if progress is None or not progress["backfill_done"]:
                    indexed = "-" if progress is None else progress["indexed_block"]
                    live.say(f"{_now()}  keeper starting: indexed block {indexed}")
                    continue
                to_block = max(int(progress["indexed_block"]), since_block)
                activity, since_time = await read_activity(
                    conn, chain_id, since_block, to_block, since_time
                )
        except (asyncpg.PostgresError, OSError) as exc:
            live.say(f"{_now()}  the database did not answer: {exc}")
            continue
        since_block = to_block
        live.say(f"{_now()}  {activity_text(activity, live.amount)}")


def keeper_text(files: KeeperFiles, psql: str) -> str:
    """What the demo tells about its keeper before the activity lines start."""
    signers = ", ".join(f"{address} (account {index})" for index, address in files.signers)
    views = (
        "keeper.stream_balances",
        "keeper.usage",
        "keeper.price_list",
        "keeper.usage_by_endpoint_daily",
        "keeper.tx_pipeline",
        "keeper.settlement_totals",
        "keeper.escrows_expired",
    )
    lines = [
        "keeper",
        f"  configuration   {files.config}",
        f"  log             {files.log}  (JSON lines; tail -f it to follow the daemon)",
        f"  signers         {signers}",
        f"  health          {files.health_url}/status  {files.health_url}/metrics  "
        f"{files.health_url}/readyz",
        f"  views           {psql} -c 'SELECT * FROM keeper.indexer_status'",  # noqa: S608 - printed
        f"                  also {', '.join(views)}",
    ]
    return "\n".join(lines)
