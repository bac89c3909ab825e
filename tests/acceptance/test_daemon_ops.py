"""`keeper run` as systemd and a second host see it: notifications, SIGTERM, failover.

Real processes throughout: anvil mining a block a second, PostgreSQL, and `keeper run`
subprocesses with a fake `NOTIFY_SOCKET` (tests/support/notify_socket.py). The workload is a
few dozen fast streams that fall due every planning pass, so the daemons always have
transactions in flight when they are signalled or killed.

- READY=1 comes from the daemon's own PID once migrations ran and the first head was read;
  WATCHDOG=1 and STATUS= lines follow; SIGTERM gives STOPPING=1 and exit status 0.
- A pass stuck in a broadcast (an RPC proxy holds it) does not hold SIGTERM up beyond
  `daemon.shutdown_grace`; the next run sends the stored transaction, and nothing is lost.
- Two daemons on one database and chain: one leads, the other is a standby (`/readyz` 503
  `standby`, `keeper_leader 0`); SIGKILL the leader and the standby leads within the lease;
  every signer's nonces on chain are then exactly the outbox's, each intent mined once.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeper.anvil import Anvil, rpc
from keeper.deploy import Deployment, deploy_all
from keeper.keys import dev_key
from tests.acceptance.test_keeper_e2e import batch, send_in_order, tx
from tests.acceptance.test_run_crash import Keeper, wait_until
from tests.acceptance.test_tx_crash import Outboxes
from tests.support.chain import DEV_KEY0
from tests.support.credentials import install_credentials
from tests.support.notify_socket import NotifySocket
from tests.support.rpc_proxy import RpcProxy

SIGNER_KEYS = (5, 6)
STREAMS = 24
LEASE = 4.0
GRACE = 3.0


# --------------------------------------------------------------------------- the world


def build_world(node: Anvil, d: Deployment) -> None:
    """Fast streams to distinct payees: each is due (>= settle_min_amount) every pass."""
    admin, m = d.deployer, d.stream_manager
    me = bytes.fromhex(admin[2:])
    calls = [
        tx(admin, d.token, "mint(address,uint256)", me, 10**18),
        tx(admin, d.token, "approve(address,uint256)", bytes.fromhex(m[2:]), 2**256 - 1),
    ]
    for sid in range(1, STREAMS + 1):
        payee = (0x7000 + sid).to_bytes(20, "big")
        calls.append(tx(admin, m, "openStream(address,uint256,uint256)", payee, 5_000, 10**12))
    hashes = send_in_order(node.url, admin, calls)
    deadline = time.monotonic() + 30
    while True:  # automine takes a batch of sends one block at a time, after answering
        receipts = batch(node.url, [("eth_getTransactionReceipt", [h]) for h in hashes])
        if all(r is not None for r in receipts) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(r is not None and r["status"] == "0x1" for r in receipts), receipts


def write_config(path: Path, rpc_url: str, d: Deployment, database_url: str) -> Path:
    deployment_file = path.parent / "deployment.json"
    d.write(deployment_file)
    signers = "".join(f'\n[[signers]]\ncredential = "signer-{i}"\n' for i in SIGNER_KEYS)
    config = path / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_url = "{rpc_url}"
deployment_file = "{deployment_file}"
rpc_timeout = 5.0
rpc_attempts = 2

[database]
url = "{database_url}"

[ingest]
poll_interval = 0.25

[tx]
confirmations = 2
poll_interval = 0.25

[plan]
interval = 1.0
settle_min_amount = 1000
usage = false

[daemon]
shutdown_grace = {GRACE}
leader_lease = {LEASE}
{signers}
[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def world(
    anvil_factory: Callable[..., Anvil], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Anvil, Deployment]]:
    node = anvil_factory()
    d = deploy_all(node.url, DEV_KEY0)
    build_world(node, d)
    install_credentials(tmp_path, monkeypatch, SIGNER_KEYS)
    rpc(node.url, "evm_setIntervalMining", [1])
    yield node, d
    rpc(node.url, "evm_setIntervalMining", [0])


def keeper_in(path: Path, rpc_url: str, d: Deployment, database_url: str) -> Keeper:
    path.mkdir()
    return Keeper(write_config(path, rpc_url, d, database_url), path / "keeper.log")


# --------------------------------------------------------------------------- reading a run


def events(keeper: Keeper, name: str | None = None) -> list[dict[str, Any]]:
    """The current run's JSON log lines (those named `name`)."""
    with keeper.log_file.open("rb") as log:
        log.seek(keeper.log_offset)
        lines = log.read().decode("utf-8", "replace").splitlines()
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (name is None or entry.get("event") == name):
            out.append(entry)
    return out


def logged(keeper: Keeper, name: str) -> Callable[[], bool]:
    return lambda: bool(events(keeper, name))


def health_url(keeper: Keeper) -> str:
    wait_until("health_listening", logged(keeper, "health_listening"), keeper)
    return str(events(keeper, "health_listening")[0]["url"])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own port
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(base: str, name: str) -> float | None:
    for line in get(f"{base}/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def confirmed(outbox: Outboxes) -> int:
    rows = outbox.fetch("SELECT count(*) AS n FROM intents WHERE state IN ('confirmed', 'final')")
    return int(rows[0]["n"])


def assert_exactly_once(node: Anvil, outbox: Outboxes) -> None:
    """Every signer's mined nonces are 0..n-1, exactly the outbox's live intents, each mined
    in one transaction; nothing pending, nothing failed."""
    rpc(node.url, "evm_setIntervalMining", [0])
    rpc(node.url, "evm_mine", [])
    for i in SIGNER_KEYS:
        address = dev_key(i).address
        mined = int(str(rpc(node.url, "eth_getTransactionCount", [address, "latest"])), 16)
        pending = int(str(rpc(node.url, "eth_getTransactionCount", [address, "pending"])), 16)
        assert pending == mined, address
        rows = outbox.fetch(
            "SELECT nonce, tx_hash FROM intents WHERE signer = $1 AND state <> 'replan' "
            "ORDER BY nonce",
            bytes.fromhex(address[2:]),
        )
        assert [int(r["nonce"]) for r in rows] == list(range(mined)), address
        hashes = [bytes(r["tx_hash"]) for r in rows if r["tx_hash"] is not None]
        assert len(hashes) == len(set(hashes))
        for h in hashes:
            receipt = rpc(node.url, "eth_getTransactionReceipt", ["0x" + h.hex()])
            assert isinstance(receipt, dict) and receipt["from"] == address.lower()
    assert not outbox.fetch("SELECT id, reason FROM intents WHERE state = 'failed'")


# --------------------------------------------------------------------------- the tests


def test_ready_watchdog_status_and_sigterm(
    world: tuple[Anvil, Deployment], empty_database_url: str, tmp_path: Path
) -> None:
    node, d = world
    database_url = empty_database_url  # so that READY has migrations to wait for
    keeper = keeper_in(tmp_path / "a", node.url, d, database_url)
    outbox = Outboxes(database_url)
    with NotifySocket() as sock:
        os.environ.update(sock.env(), WATCHDOG_USEC="1000000")
        try:
            keeper.start()
            ready = sock.wait_for(lambda m: m.fields.get("READY") == "1", timeout=60)
            assert keeper.proc is not None and ready.pid == keeper.proc.pid
            # READY comes after the migrations and the first head.
            assert len(events(keeper, "migration_applied")) >= 10
            assert "head" in ready.fields.get("STATUS", "")
            sock.wait_for(lambda m: "leader" in m.fields.get("STATUS", ""), timeout=30)
            first = len(sock.messages)
            sock.wait_for(lambda m: m.fields.get("WATCHDOG") == "1", timeout=10, start=first)
            wait_until("a confirmed batch", lambda: confirmed(outbox) >= 2, keeper, timeout=90)
            assert events(keeper, "batch_confirmed")
            mark = len(sock.messages)
            status, _ = keeper.terminate(within=GRACE + 10)
            assert status == 0, keeper.tail()
            sock.wait_for(lambda m: m.fields.get("STOPPING") == "1", timeout=1, start=mark)
            assert events(keeper, "keeper_stopped")
            assert not events(keeper, "shutdown_grace_exceeded")
        finally:
            for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
                os.environ.pop(var, None)
            keeper.stop()
    # The next run picks up where this one stopped; nothing was lost or sent twice.
    keeper.start()
    try:
        before = confirmed(outbox)
        wait_until("more batches", lambda: confirmed(outbox) > before + 1, keeper, timeout=90)
        assert keeper.terminate(within=GRACE + 10)[0] == 0
        assert_exactly_once(node, outbox)
    finally:
        keeper.stop()
        outbox.close()


def test_sigterm_cancels_a_stuck_pass_after_the_grace_period(
    world: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    node, d = world
    outbox = Outboxes(database_url)
    with RpcProxy(node.url) as proxy:
        keeper = keeper_in(tmp_path / "a", proxy.url, d, database_url)
        try:
            held = proxy.hold("eth_sendRawTransaction", nth=1, reply=False)
            keeper.start()
            assert held.wait(90), keeper.tail()
            # The transaction manager's pass now waits on the node; SIGTERM must not.
            status, took = keeper.terminate(within=GRACE + 10)
            assert status == 0, keeper.tail()
            assert took >= GRACE - 0.5  # it did wait for the pass, up to the grace period
            assert events(keeper, "shutdown_grace_exceeded")
            assert events(keeper, "keeper_stopped")
            held.drop()
            signed = outbox.fetch("SELECT count(*) AS n FROM attempts WHERE raw IS NOT NULL")
            assert int(signed[0]["n"]) >= 1  # stored before the broadcast that was cut short
            proxy.clear_holds()
            keeper.start()
            wait_until("confirmed batches", lambda: confirmed(outbox) >= 3, keeper, timeout=90)
            assert keeper.terminate(within=GRACE + 10)[0] == 0
        finally:
            keeper.stop()
    try:
        assert_exactly_once(node, outbox)
    finally:
        outbox.close()


def test_a_standby_takes_over_when_the_leader_is_killed(
    world: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    node, d = world
    first = keeper_in(tmp_path / "a", node.url, d, database_url)
    second = keeper_in(tmp_path / "b", node.url, d, database_url)
    outbox = Outboxes(database_url)
    try:
        first.start()
        wait_until("the first keeper leads", logged(first, "leader_elected"), first)
        second.start()
        wait_until("the second keeper waits", logged(second, "standby"), second)
        assert "keeper-leader" in str(events(second, "standby")[0]["leader"])
        leader_url, standby_url = health_url(first), health_url(second)

        code, body = get(f"{standby_url}/readyz")
        assert code == 503 and "standby" in body
        assert get(f"{standby_url}/healthz")[0] == 200
        assert metric(standby_url, "keeper_leader") == 0
        assert metric(leader_url, "keeper_leader") == 1
        wait_until("the leader ready", lambda: get(f"{leader_url}/readyz")[0] == 200, first)
        wait_until("batches", lambda: confirmed(outbox) >= 2, first, timeout=90)
        # Kill the leader while it has a transaction on its way, if it has one within 10 s.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not outbox.fetch(
            "SELECT 1 FROM intents WHERE state = 'assigned'"
        ):
            time.sleep(0.05)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.proc.wait(timeout=10)
        wait_until("the standby leads", logged(second, "leader_elected"), second, timeout=30)
        took = time.monotonic() - killed
        print(f"standby took over {took:.2f} s after the leader was killed")
        assert took <= LEASE, f"took over after {took:.1f} s"
        wait_until("ready", lambda: get(f"{standby_url}/readyz")[0] == 200, second)
        assert metric(standby_url, "keeper_leader") == 1
        before = confirmed(outbox)
        wait_until("its own batches", lambda: confirmed(outbox) >= before + 3, second, timeout=90)
        assert second.terminate(within=GRACE + 10)[0] == 0
        assert_exactly_once(node, outbox)
    finally:
        first.stop()
        second.stop()
        outbox.close()


def test_a_leader_that_loses_its_lock_session_stops_leading(
    world: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    """The lock lives with its session: when the server drops that session, the leader must
    notice, stop planning and sending, and exit 1 (systemd restarts it as a standby)."""
    node, d = world
    keeper = keeper_in(tmp_path / "a", node.url, d, database_url)
    outbox = Outboxes(database_url)
    try:
        keeper.start()
        wait_until("it leads", logged(keeper, "leader_elected"), keeper)
        wait_until("batches", lambda: confirmed(outbox) >= 1, keeper, timeout=90)
        dropped = outbox.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
            "WHERE application_name LIKE 'keeper-leader %' AND datname = current_database()"
        )
        assert [r["done"] for r in dropped] == [True]
        assert keeper.proc is not None
        assert keeper.proc.wait(timeout=LEASE + GRACE + 10) == 1, keeper.tail()
        lost = events(keeper, "leadership_lost")
        assert lost and "lost" in lost[0]["error"], keeper.tail()
        assert "Traceback" not in keeper.tail(60)
        # Restarted, it leads again (nobody else holds the lock) and carries on.
        keeper.start()
        wait_until("it leads again", logged(keeper, "leader_elected"), keeper)
        before = confirmed(outbox)
        wait_until("more batches", lambda: confirmed(outbox) > before, keeper, timeout=90)
        assert keeper.terminate(within=GRACE + 10)[0] == 0
        assert_exactly_once(node, outbox)
    finally:
        keeper.stop()
        outbox.close()
