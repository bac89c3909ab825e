"""`keeper demo` end to end: the workload it reports is the one on chain and in the database."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from web3 import Web3

from keeper.anvil import Anvil, free_port
from keeper.demo import (
    ESCROWS,
    PAYEES,
    PAYERS,
    STREAMS,
    USAGE,
    PgserverMissing,
    format_duration,
    format_units,
    start_embedded_postgres,
)
from keeper.deploy import Deployment, contract
from keeper.keys import dev_key

_SCRIPT = Path(sys.executable).with_name("keeper")
KEEPER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keeper"]

STREAM_LINE = re.compile(r"^  #(\d+)  (payer-\w) -> (payee-\w)  ([\d.]+) tUSD/s, deposit")
ESCROW_LINE = re.compile(r"^  #(\d+)  (payer-\w) -> (payee-\w)  ([\d.]+) tUSD  (open|released)")
USAGE_LINE = re.compile(r"^  stream #(\d+)  seq (\d+)  (\d+) units")
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

    # Usage: one batch moved each reported stream's sequence to 1 (the replay was skipped).
    usage = section(lines, USAGE_LINE)
    assert [int(m[1]) for m in usage] == [ids[i] for i, _ in USAGE]
    for m in usage:
        assert manager.functions.getStream(int(m[1])).call()[5] == int(m[2]) == 1
    for i, stream_id in enumerate(ids):
        if i not in {j for j, _ in USAGE}:
            assert manager.functions.getStream(stream_id).call()[5] == 0

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


@pytest.mark.slow
def test_demo_with_embedded_postgres_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    """What `make demo` runs: its own anvil and PostgreSQL, both gone after Ctrl-C."""
    port = free_port()
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [*KEEPER, "demo", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            output.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert "Press Ctrl-C" in "".join(output), "".join(output)
        assert port_open(port)
        assert (data_dir / "pgdata" / "postmaster.pid").exists()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(output)
    assert proc.returncode == 0, text
    assert "stopping the demo" in text
    assert not port_open(port)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "PostgreSQL still running"
    assert f"http://127.0.0.1:{port}" in text
    assert "psql" in text
    assert str(data_dir / "deployment.json") in text
