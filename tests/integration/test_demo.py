"""`keeper demo` end to end: the workload it reports is the one on chain and in the database,
and the keeper it runs settles, records usage and refunds, then stops in order on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from web3 import Web3

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, free_port
from keeper.dev.demo_live import LiveStream, usage_rows
from keeper.dev.demo_postgres import PgserverMissing, start_embedded_postgres
from keeper.dev.demo_report import Activity, activity_text, format_duration, format_units
from keeper.dev.demo_workload import (
    ENDPOINTS,
    ESCROWS,
    LIST_PAYEE,
    PAYEES,
    PAYERS,
    STREAMS,
    USAGE,
    usage_recorded,
)
from keeper.ops.deploy import DEFAULT_NOTICE_PERIOD, contract

_SCRIPT = Path(sys.executable).with_name("keeper")
KEEPER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keeper"]

STREAM_LINE = re.compile(r"^  #(\d+)  (payer-\w) -> (payee-\w)  ([\d.]+) tUSD/s, deposit")
ESCROW_LINE = re.compile(r"^  #(\d+)  (payer-\w) -> (payee-\w)  ([\d.]+) tUSD  (open|released)")
USAGE_LINE = re.compile(
    r"^  stream #(\d+)  seq (\d+)  (\d+) units  (?:endpoint (.+)|own price): "
    r"x ([\d.]+) tUSD = ([\d.]+) tUSD charged$"
)
ENDPOINT_LINE = re.compile(r"^  endpoint (\d+)  (.+?) +([\d.]+) tUSD/unit$")
ACCOUNT_LINE = re.compile(r"^  (pay[a-z]+-\w)\s+(0x[0-9a-fA-F]{40})  \(account (\d+)\)")

STATUS_OPEN, STATUS_RELEASED = 1, 2


def test_format_units_is_exact() -> None:
    assert format_units(0, 6) == "0"
    assert format_units(1, 6) == "0.000001"
    assert format_units(1_500_000, 6) == "1.5"
    assert format_units(10_000 * 10**6, 6) == "10000"
    assert format_units(-25, 2) == "-0.25"
    # Far beyond a float's 53 bits of mantissa, still exact.
    assert format_units(2**96 - 1, 6) == "79228162514264337593543.950335"


def test_format_units_with_a_minimum_of_decimals() -> None:
    assert format_units(4_200_000, 6, min_decimals=2) == "4.20"
    assert format_units(5 * 10**6, 6, min_decimals=2) == "5.00"
    assert format_units(1_083_125, 6, min_decimals=2) == "1.083125"
    assert format_units(0, 6, min_decimals=2) == "0.00"
    assert format_units(-25, 2, min_decimals=4) == "-0.25"  # never past the token's decimals


def test_activity_line() -> None:
    def amount(v: int) -> str:
        return f"{format_units(v, 6, min_decimals=2)} USDC"

    busy = Activity(
        block=123,
        settled_streams=3,
        settled_amount=4_200_000,
        usage_reports=25,
        usage_charged=750_000,
        refunded_escrows=1,
        refunded_amount=5_000_000,
        txs_confirmed=2,
        usage_pending=4,
    )
    assert activity_text(busy, amount) == (
        "block 123  settled 3 streams (4.20 USDC)  recorded 25 usage reports (0.75 USDC)  "
        "refunded 1 escrow (5.00 USDC)  txs 2 confirmed  pending: 4 usage rows"
    )
    split = Activity(
        block=126,
        usage_reports=3,
        usage_charged=1_250_000,
        usage_by_endpoint=[("POST /v1/chat", 1_000_000), ("own price", 250_000)],
    )
    assert activity_text(split, amount) == (
        "block 126  recorded 3 usage reports (1.25 USDC, POST /v1/chat 1.00 USDC, "
        "own price 0.25 USDC)"
    )
    assert activity_text(Activity(block=124), amount) == "block 124, nothing due"
    assert activity_text(Activity(block=125, txs_in_flight=1), amount) == (
        "block 125  pending: 1 tx in flight"
    )


def test_usage_rows_go_to_priced_streams_with_unique_keys() -> None:
    names = tuple(name for name, _ in ENDPOINTS)
    streams = [LiveStream(1, 100), LiveStream(2, 0), LiveStream(3, 50), LiveStream(4, 0, names)]
    ids, units, keys, labels, endpoints = usage_rows(streams, 10, 9, "run1")
    assert set(ids) == {"1", "3", "4"}
    assert all(int(u) > 0 for u in units)
    assert len(set(keys)) == 9
    assert keys == [f"demo-run1-{n}" for n in range(10, 19)]
    assert len(labels) == 9
    # Rows of the price-list stream name each of its endpoints in turn; the others none.
    named = [e for i, e in zip(ids, endpoints, strict=True) if i == "4"]
    assert sorted(named) == sorted(names)  # type: ignore[type-var]
    assert all(e is None for i, e in zip(ids, endpoints, strict=True) if i != "4")
    assert usage_rows([LiveStream(2, 0)], 0, 4, "run1") == ([], [], [], [], [])


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(59) == "59s"
    assert format_duration(75) == "1m 15s"
    assert format_duration(180) == "3m"
    assert format_duration(90_061) == "1d 1h"


def test_missing_pgserver_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A None entry in sys.modules makes `import pgserver` raise ImportError, as if absent.
    for name in ("pgserver", "pgserver._commands", "pgserver.postgres_server"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PgserverMissing) as info:
        start_embedded_postgres(tmp_path)
    assert "pip install 'keeper[dev]'" in str(info.value)
    assert "--database-url" in str(info.value)


def section(lines: list[str], pattern: re.Pattern[str]) -> list[re.Match[str]]:
    return [m for line in lines if (m := pattern.match(line))]


@pytest.mark.anyio
async def test_demo_workload_on_chain_and_in_the_database(
    anvil_factory: Callable[..., Anvil], database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    node = anvil_factory()
    data_dir = tmp_path / "demo"
    result = await anyio.run_process(
        [
            *KEEPER,
            "demo",
            "--no-wait",
            "--rpc-url",
            node.url,
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
        ],
        check=False,
    )
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    lines = stdout.splitlines()
    for index in range(10):
        assert dev_key(index).reveal_hex()[2:] not in (stdout + stderr).lower()

    deployment = Deployment.read(data_dir / "deployment.json")
    w3 = Web3(Web3.HTTPProvider(node.url))
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    vault = contract(w3, "EscrowVault", deployment.escrow_vault)
    accounts = {m[1]: m[2] for m in section(lines, ACCOUNT_LINE)}
    assert set(accounts) == set(PAYERS) | set(PAYEES)
    for name, index in {**PAYERS, **PAYEES}.items():
        assert accounts[name] == dev_key(index).address
    # The demo chain gives payers and payees the default notice period.
    assert deployment.notice_period == DEFAULT_NOTICE_PERIOD
    assert manager.functions.noticePeriod().call() == DEFAULT_NOTICE_PERIOD

    # The price list: every printed endpoint is listed on chain at the printed price.
    listed = section(lines, ENDPOINT_LINE)
    assert [(m[2], m[3]) for m in listed] == [(n, format_units(p, 6)) for n, p in ENDPOINTS]
    list_payee = accounts[LIST_PAYEE]
    assert manager.functions.endpointCount(list_payee).call() == len(ENDPOINTS)
    endpoint_ids = {}
    for m, (name, price) in zip(listed, ENDPOINTS, strict=True):
        on_chain = manager.functions.endpointPrice(list_payee, int(m[1])).call()
        assert on_chain[0] == price and on_chain[3] is True
        assert bytes(on_chain[4]).rstrip(b"\0").decode() == name
        endpoint_ids[name] = int(m[1])

    # Streams: every printed id exists on chain with the printed parties and rate.
    streams = section(lines, STREAM_LINE)
    assert len(streams) == len(STREAMS)
    ids = [int(m[1]) for m in streams]
    assert manager.functions.nextStreamId().call() == max(ids) + 1
    for m, plan in zip(streams, STREAMS, strict=True):
        payer, payee, _balance, rate, _settled_at, _seq, price, status = (
            manager.functions.getStream(int(m[1])).call()
        )
        assert (payer, payee) == (accounts[m[2]], accounts[m[3]])
        assert status == STATUS_OPEN
        assert rate == plan.rate
        assert m[4] == format_units(rate, 6)
        assert price == plan.usage_price

    # Usage: one batch moved each reported stream's sequence to its number of reports (the
    # replay was skipped), each charged units x the price of its endpoint, or the stream's own.
    usage = section(lines, USAGE_LINE)
    assert sorted((int(m[1]), m[4]) for m in usage) == sorted(
        (ids[i], name) for i, name, _ in USAGE
    )
    reports = {ids[i]: 0 for i, _, _ in USAGE}
    for i, _, _ in USAGE:
        reports[ids[i]] += 1
    for stream_id, count in reports.items():
        assert manager.functions.getStream(stream_id).call()[5] == count
    for stream_id in ids:
        if stream_id not in reports:
            assert manager.functions.getStream(stream_id).call()[5] == 0
    prices = dict(ENDPOINTS)
    for m in usage:
        plan = STREAMS[ids.index(int(m[1]))]
        price = prices[m[4]] if m[4] else plan.usage_price
        assert (m[5], m[6]) == (format_units(price, 6), format_units(int(m[3]) * price, 6))
    recorded = [
        usage_recorded(dict(e["args"]))
        for e in manager.events.UsageRecorded().get_logs(from_block=deployment.deployment_block)
    ]
    assert len(recorded) == len(USAGE)
    by_name = {v: k for k, v in endpoint_ids.items()}
    for r in recorded:
        plan = STREAMS[ids.index(r.stream_id)]
        assert plan.price_list == (r.endpoint != 0)
        price = prices[by_name[r.endpoint]] if r.endpoint else plan.usage_price
        assert (r.price, r.charged) == (price, r.units * price)
    assert {by_name[r.endpoint] for r in recorded if r.endpoint} == {
        name for _, name, _ in USAGE if name
    }

    # Settlement happened: payees and the fee recipient hold credit.
    assert manager.functions.credited(deployment.fee_recipient).call() > 0
    for payee in PAYEES:
        assert manager.functions.credited(accounts[payee]).call() > 0

    # Escrows: open, open and about to expire, released.
    escrows = section(lines, ESCROW_LINE)
    assert len(escrows) == len(ESCROWS)
    head = w3.eth.get_block("latest")["timestamp"]
    for m, ep in zip(escrows, ESCROWS, strict=True):
        payer, payee, amount, expires_at, status = vault.functions.getEscrow(int(m[1])).call()
        assert (payer, payee) == (accounts[m[2]], accounts[m[3]])
        assert amount == ep.amount
        assert status == (STATUS_RELEASED if ep.release else STATUS_OPEN)
        assert m[5] == ("released" if ep.release else "open")
        assert 0 < expires_at - head <= ep.timeout

    # The deployment is recorded in the database the demo was given.
    rows = await db.fetch(
        "SELECT d.name, d.address, d.deployment_block, c.name AS chain "
        "FROM deployments d JOIN chains c USING (chain_id) WHERE chain_id = $1 ORDER BY d.name",
        deployment.chain_id,
    )
    assert {r["name"]: "0x" + bytes(r["address"]).hex() for r in rows} == {
        "escrow_vault": deployment.escrow_vault.lower(),
        "stream_manager": deployment.stream_manager.lower(),
        "token": deployment.token.lower(),
    }
    assert {r["deployment_block"] for r in rows} == {deployment.deployment_block}
    assert {r["chain"] for r in rows} == {"anvil-demo"}

    # The node the demo was pointed at is left running.
    assert w3.eth.block_number > 0


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Output:
    """A running command's output lines, read in a thread so that waits have deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def read() -> None:
            for line in stream:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def until(self, done: Callable[[str], bool], timeout: float) -> bool:
        """Read lines until `done(all the text so far)` or the deadline; True when done."""
        deadline = time.monotonic() + timeout
        while not done(self.text):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return done(self.text)
            self.lines.append(line)
        return True

    def rest(self, timeout: float) -> None:
        self.until(lambda _: False, timeout)

    @property
    def text(self) -> str:
        return "".join(self.lines)


ACTIVITY = re.compile(r"^\d\d:\d\d:\d\d  block \d+", re.MULTILINE)
ENDPOINT_NAMES = "|".join(re.escape(name) for name, _ in ENDPOINTS)
DONE = {
    "settled": re.compile(r"  settled \d+ streams? \([\d.]+ tUSD\)"),
    # With the charges split by endpoint: a price-list endpoint among them.
    "recorded": re.compile(
        r"  recorded \d+ usage reports? \([\d.]+ tUSD(, [^,()]+ [\d.]+ tUSD)*"
        rf", (?:{ENDPOINT_NAMES}) [\d.]+ tUSD"
    ),
    "refunded": re.compile(r"  refunded \d+ escrows? \([\d.]+ tUSD\)"),
}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - http://127.0.0.1
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_the_keeper_and_stops_everything_on_sigint(
    database_url: str, tmp_path: Path
) -> None:
    """`make demo` with a given database: the keeper settles, records usage and refunds an
    escrow while the workload goes on; the health port answers; SIGINT stops it all, exit 0."""
    port, health = free_port(), free_port()
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            *KEEPER,
            "demo",
            "--port",
            str(port),
            "--health-port",
            str(health),
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        started = out.until(lambda t: "keeper run started" in t, 120)
        assert started, out.text
        m = re.search(r"keeper run started \(pid (\d+)\)", out.text)
        assert m, out.text
        daemon_pid = int(m[1])
        # What an operator is told, before the activity lines.
        assert f"http://127.0.0.1:{port}" in out.text
        assert f"http://127.0.0.1:{health}/status" in out.text
        assert f"http://127.0.0.1:{health}/readyz" in out.text
        assert "-c 'SELECT * FROM keeper.indexer_status'" in out.text
        assert str(data_dir / "keeper.log") in out.text

        # The keeper's work shows up in the activity lines (bounded, generous: the first
        # escrow expires a minute of chain time after the set-up).
        everything = out.until(lambda t: all(p.search(t) for p in DONE.values()), 180)
        assert everything, out.text
        assert ACTIVITY.search(out.text), out.text
        assert "workload: payer-" in out.text

        # The health port of the running daemon.
        deadline = time.monotonic() + 60
        while (ready := get(f"http://127.0.0.1:{health}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, ready
            time.sleep(1)
        status, body = get(f"http://127.0.0.1:{health}/status")
        assert status == 200
        assert json.loads(body)["chain"]["id"] == 31337
        status, body = get(f"http://127.0.0.1:{health}/metrics")
        assert status == 200
        assert "keeper_" in body

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out.rest(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.text
    assert proc.returncode == 0, text
    assert "stopping the demo (SIGINT)" in text
    # In order: the keeper, then anvil.
    assert text.index("keeper stopped") < text.index("anvil stopped"), text
    assert not port_open(port)
    assert not port_open(health)
    assert not pid_alive(daemon_pid)
    for index in range(10):
        assert dev_key(index).reveal_hex()[2:] not in text.lower()

    log = (data_dir / "keeper.log").read_text()
    assert '"keeper_started"' in log
    assert '"keeper_stopped"' in log
    for secret in [data_dir / "keeper.toml", *(data_dir / "keys").iterdir()]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


def test_demo_stops_everything_when_the_keeper_dies(database_url: str, tmp_path: Path) -> None:
    """A keeper that dies is reported with its status and the end of its log; the demo stops
    the rest and exits non-zero."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *KEEPER,
            "demo",
            "--port",
            str(port),
            "--health-port",
            "0",
            "--database-url",
            database_url,
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        assert out.until(lambda t: ACTIVITY.search(t) is not None, 120), out.text
        m = re.search(r"keeper run started \(pid (\d+)\)", out.text)
        assert m, out.text
        os.kill(int(m[1]), signal.SIGKILL)
        proc.wait(timeout=60)
        out.rest(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.text
    assert proc.returncode == 1, text
    assert f"the keeper exited on its own with status {-signal.SIGKILL}" in text
    assert re.search(r"^  \| \{.*\"event\"", text, re.MULTILINE), text  # its JSON log lines
    assert "anvil stopped" in text
    assert not port_open(port)


@pytest.mark.slow
def test_demo_with_embedded_postgres_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    """What `make demo` runs: its own anvil, PostgreSQL and keeper, all gone after Ctrl-C."""
    port, health = free_port(), free_port()
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            *KEEPER,
            "demo",
            "--port",
            str(port),
            "--health-port",
            str(health),
            "--data-dir",
            str(data_dir),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        assert out.until(lambda t: ACTIVITY.search(t) is not None, 180), out.text
        m = re.search(r"keeper run started \(pid (\d+)\)", out.text)
        assert m, out.text
        assert port_open(port)
        assert (data_dir / "pgdata" / "postmaster.pid").exists()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out.rest(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.text
    assert proc.returncode == 0, text
    assert "stopping the demo" in text
    assert not port_open(port)
    assert not pid_alive(int(m[1]))
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "PostgreSQL still running"
    assert f"http://127.0.0.1:{port}" in text
    assert "psql" in text
    assert str(data_dir / "deployment.json") in text
