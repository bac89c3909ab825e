"""`keeper run` as systemd and a second host see it: notifications, SIGTERM, failover.

Real processes throughout: anvil mining a block a second, PostgreSQL, and `keeper run`
subprocesses with a fake `NOTIFY_SOCKET` (tests/support/notify_socket.py). The workload is a
few dozen fast streams that fall due every planning pass, so the daemons always have
transactions in flight when they are signalled or killed.

- READY=1 comes from the daemon's own PID once migrations ran and the first head was read;
  WATCHDOG=1 and STATUS= lines follow; SIGTERM gives STOPPING=1 and exit status 0.
- A pass stuck in a broadcast (an RPC proxy holds it) does not hold SIGTERM up beyond
  `daemon.shutdown_grace`; the next run sends the stored transaction, and nothing is lost.
- Two daemons on one database and chain: one leads, the other is a standby (`/readyz` 200
  with `"role": "standby"`, `keeper_leader 0`); SIGKILL the leader and the standby leads within
  the lease; every signer's nonces on chain are then exactly the outbox's, each intent mined once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil
from tests.support.daemon import Outboxes, wait_until
from tests.support.notify_socket import NotifySocket
from tests.support.rpc_proxy import RpcProxy
from tests.support.world import (
    GRACE,
    LEASE,
    assert_exactly_once,
    confirmed,
    events,
    get,
    health_url,
    keeper_in,
    logged,
)

# --------------------------------------------------------------------------- reading a run


def metric(base: str, name: str) -> float | None:
    for line in get(f"{base}/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


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

        # A healthy standby is ready (it could take over), and says which role it has.
        code, body = get(f"{standby_url}/readyz")
        assert code == 200 and json.loads(body)["role"] == "standby", body
        assert metric(standby_url, "keeper_ready") == 1
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
