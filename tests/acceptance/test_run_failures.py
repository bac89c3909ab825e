"""How `keeper run` fails and what it writes, as the console script under systemd would: its log
is JSON lines even for the standard `logging` module's records and uncaught exceptions, with a
syslog priority prefix when stdout is the journal; a taken health port stops it before any work;
configuration errors exit 78 (EX_CONFIG, not restarted by the unit), outages do not; and `keeper
check-config` checks the health port and reads keys from systemd credentials.

Real processes throughout: anvil with the contracts deployed, PostgreSQL, and the `keeper`
console script (or `python -m keeper`) with stdout a pipe, not a terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from eth_account import Account

from keeper import resources
from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, free_port
from keeper.errors import EX_CONFIG
from keeper.ops.deploy import deploy_all
from tests.support.daemon import KEEPER

DB_PASSWORD = "pw-0f-the-db-in-logs"  # never printed; the test server trusts local connections


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Deployment:
    """The contracts on the session's anvil node."""
    return deploy_all(anvil.url, dev_key(0).reveal_hex())


def with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user = userinfo.partition(":")[0] if at else "postgres"
    return f"{scheme}://{user}:{DB_PASSWORD}@{host}"


def write_config(
    root: Path,
    deployment: Deployment,
    rpc_url: str,
    database_url: str,
    *,
    health_port: int | None = None,
    extra: str = "",
) -> Path:
    """A configuration in `root`; the health port off unless `health_port` is given."""
    deployment.write(root / "deployment.json")
    health = (
        f"enabled = true\nport = {health_port}" if health_port is not None else "enabled = false"
    )
    config = root / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_url = "{rpc_url}"
deployment_file = "deployment.json"
rpc_timeout = 2.0
rpc_attempts = 1

[database]
url = "{with_password(database_url)}"

[health]
{health}

[log]
format = "auto"
{extra}
""",
        encoding="utf-8",
    )
    return config


# Not inherited: a journal or credentials (the tests may run under systemd), and the suite's
# KEEPER_HEALTH__PORT=0 (tests/conftest.py), which would override the port under test.
NOT_INHERITED = ("JOURNAL_STREAM", "CREDENTIALS_DIRECTORY", "KEEPER_HEALTH__PORT")


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of the tests' keepers: this one without `NOT_INHERITED`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def keeper(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The keeper command line in `quiet_env(**env)`."""
    return subprocess.run(
        [*KEEPER, *args], capture_output=True, text=True, env=quiet_env(**env), timeout=120
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (failing on the first that is not one)."""
    parsed = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\nin:\n{text}") from None
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == name]


def poll_until(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    """Poll `check` until true; fail if `proc` exits first, or after a minute."""
    deadline = time.monotonic() + 60
    while not check():
        assert proc.poll() is None, f"keeper exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def schema_present(database_url: str) -> bool:
    async def look() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return bool(await conn.fetchval("SELECT to_regclass('keeper_migrations') IS NOT NULL"))
        finally:
            await conn.close()

    return asyncio.run(look())


# --------------------------------------------------------------------------- logs

# `keeper run` with the daemon replaced by a function that makes the standard logging module log
# with a traceback (as asyncpg does in an outage), asyncio report a task's exception, a thread
# die and the process crash, each carrying the database password.
CRASHING_RUN = textwrap.dedent(
    """
    import asyncio, logging, sys, threading
    from keeper.cli import main
    from keeper.service import daemon

    SECRET = sys.argv[2]

    def dies():
        raise RuntimeError(f"thread failed with {SECRET}")

    async def run(config, stop_requested):
        try:
            raise ConnectionError(f"connection to {SECRET} lost")
        except ConnectionError:
            logging.getLogger("asyncpg.pool").error("connection lost", exc_info=True)
        logging.getLogger("asyncpg.pool").info("a library's info record")
        loop = asyncio.get_running_loop()
        loop.call_exception_handler(
            {"message": "Task exception was never retrieved", "exception": ValueError(SECRET)}
        )
        worker = threading.Thread(target=dies, name="worker")
        worker.start()
        worker.join()
        raise RuntimeError(f"unexpected: {SECRET}")

    daemon.run = run
    sys.exit(main(["run", "--config", sys.argv[1]]))
    """
)


def test_every_line_is_json_including_stdlib_records_and_crashes(
    tmp_path: Path, deployed: Deployment, anvil: Anvil, database_url: str
) -> None:
    config = write_config(tmp_path, deployed, anvil.url, database_url)
    ran = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(config), DB_PASSWORD],
        capture_output=True,
        text=True,
        env=quiet_env(),
        timeout=120,
        check=False,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr  # Python's status for a crash
    lines = json_lines(ran.stdout)
    assert ran.stderr == ""
    assert DB_PASSWORD not in ran.stdout

    (stdlib,) = events(lines, "connection lost")
    assert (stdlib["level"], stdlib["logger"]) == ("error", "asyncpg.pool")
    (error,) = stdlib["exception"]
    assert error["exc_type"] == "ConnectionError"
    assert error["exc_value"] == "connection to *** lost"
    assert error["frames"][-1]["name"] == "run"
    assert not events(lines, "a library's info record")  # below the floor for libraries

    (task,) = events(lines, "Task exception was never retrieved")
    assert task["logger"] == "asyncio" and task["exception"][0]["exc_type"] == "ValueError"

    (thread,) = events(lines, "thread_exception")
    assert thread["thread"] == "worker" and thread["level"] == "critical"
    assert thread["exception"][0]["exc_value"] == "thread failed with ***"

    (crash,) = events(lines, "uncaught_exception")
    assert crash["level"] == "critical"
    assert crash["exception"][0]["exc_type"] == "RuntimeError"
    assert crash["exception"][0]["exc_value"] == "unexpected: ***"
    assert lines[-1] is crash


def run_on_a_pipe(
    config: Path, env: dict[str, str], *, stderr_too: bool
) -> tuple[int, bytes, str, str]:
    """`keeper run` with stdout (and stderr when `stderr_too`) on one pipe, whose
    `device:inode` is returned; (exit status, what the pipe got, stderr otherwise, device:inode)."""
    read_end, write_end = os.pipe()
    info = os.fstat(write_end)
    stream = f"{info.st_dev}:{info.st_ino}"
    with open(read_end, "rb") as reader:
        proc = subprocess.Popen(
            [*KEEPER, "run", "--config", str(config)],
            stdout=write_end,
            stderr=write_end if stderr_too else subprocess.PIPE,
            env={**env, "JOURNAL_STREAM": stream},
        )
        os.close(write_end)
        got = reader.read()
        _, err = proc.communicate(timeout=120)
    return proc.returncode, got, (err or b"").decode(), stream


def test_lines_carry_a_syslog_priority_under_journald(
    tmp_path: Path, deployed: Deployment, anvil: Anvil
) -> None:
    # The health port comes up (info), then the database is out of reach (error).
    unreachable = f"postgresql://keeper@127.0.0.1:{free_port()}/keeper"
    config = write_config(tmp_path, deployed, anvil.url, unreachable, health_port=free_port())
    status, got, stderr, _ = run_on_a_pipe(config, quiet_env(), stderr_too=True)
    assert status == 1, got
    assert stderr == ""
    prioritised = got.decode().splitlines()
    priorities = {}
    for line in prioritised:
        assert line[:3] in ("<3>", "<4>", "<6>", "<2>"), line
        (entry,) = json_lines(line[3:])  # what `journalctl -o cat` prints: JSON
        priorities[entry["event"]] = line[:3]
    assert priorities["health_listening"] == "<6>"
    # Both streams are the journal: the failure is its last JSON line, no plain paragraph.
    assert priorities["keeper_failed"] == "<3>"
    failed = json_lines(prioritised[-1][3:])[0]
    assert failed["event"] == "keeper_failed" and failed["exit_status"] == 1
    assert "cannot connect to PostgreSQL" in failed["error"]
    assert DB_PASSWORD not in got.decode()


def test_no_priority_prefix_when_stdout_is_not_the_journal(
    tmp_path: Path, deployed: Deployment, anvil: Anvil
) -> None:
    # A process started from a service inherits $JOURNAL_STREAM with its output redirected.
    unreachable = f"postgresql://keeper@127.0.0.1:{free_port()}/keeper"
    config = write_config(tmp_path, deployed, anvil.url, unreachable, health_port=free_port())
    ran = keeper("run", "--config", str(config), JOURNAL_STREAM="1:2")
    assert ran.returncode == 1
    lines = json_lines(ran.stdout)
    assert [line["level"] for line in events(lines, "keeper_failed")] == ["error"]
    # Not the journal: the usual paragraph on stderr.
    assert ran.stderr.startswith("keeper run: error: cannot connect to PostgreSQL at ")
    assert "Traceback" not in ran.stderr


# --------------------------------------------------------------------------- failure modes


def test_migrate_logs_json_lines_with_priorities_in_the_journal(
    empty_database_url: str,
) -> None:
    # keeper-migrate@.service: `keeper migrate` with stderr (its log) on the journal.
    read_end, write_end = os.pipe()
    info = os.fstat(write_end)
    with open(read_end, "rb") as reader:
        proc = subprocess.Popen(
            [*KEEPER, "migrate", "--database-url", empty_database_url],
            stdout=subprocess.PIPE,
            stderr=write_end,
            env=quiet_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}"),
        )
        os.close(write_end)
        got = reader.read().decode()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, got
    lines = got.splitlines()
    assert lines and all(line.startswith("<6>") for line in lines), got
    applied = events(json_lines("\n".join(line[3:] for line in lines)), "migration_applied")
    assert [e["migration"] for e in applied] == [n for n, _ in resources.migration_files()]
    # stdout carries the result, as on a terminal.
    assert out.decode().splitlines()[0].startswith("applied 0001_")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_one_paragraph(stderr: str, first: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith(first), stderr
    assert lines[1].startswith("  help: "), stderr


def test_a_taken_health_port_stops_the_keeper_before_any_work(
    tmp_path: Path,
    deployed: Deployment,
    anvil: Anvil,
    empty_database_url: str,
    held_port: int,
) -> None:
    config = write_config(tmp_path, deployed, anvil.url, empty_database_url, health_port=held_port)
    ran = keeper("run", "--config", str(config))
    assert ran.returncode == EX_CONFIG, ran.stdout + ran.stderr
    assert_one_paragraph(
        ran.stderr,
        f"keeper run: error: health.port: cannot listen on 127.0.0.1:{held_port}: "
        "Address already in use",
    )
    lines = json_lines(ran.stdout)
    assert [line["event"] for line in lines] == ["keeper_failed"]
    assert not schema_present(empty_database_url)  # no migration ran

    checked = keeper("check-config", "--config", str(config))
    assert checked.returncode == 1
    assert f"FAIL  health        health.port: cannot listen on 127.0.0.1:{held_port}" in (
        checked.stderr
    )
    assert "Traceback" not in checked.stderr


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_a_second_keeper_on_the_same_port_and_check_config_next_to_the_first(
    tmp_path: Path,
    deployed: Deployment,
    anvil: Anvil,
    database_url: str,
    empty_database_url: str,
) -> None:
    port = free_port()
    first_root, second_root = tmp_path / "first", tmp_path / "second"
    first_root.mkdir()
    second_root.mkdir()
    first = write_config(first_root, deployed, anvil.url, database_url, health_port=port)
    proc = subprocess.Popen(
        [*KEEPER, "run", "--config", str(first)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=quiet_env(),
    )
    try:
        poll_until("the first keeper's health port", lambda: healthz(port), proc)
        # The running keeper's own configuration checks out: the port is its.
        checked = keeper("check-config", "--config", str(first))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"127.0.0.1:{port} is served by a running keeper" in checked.stdout

        second = write_config(
            second_root, deployed, anvil.url, empty_database_url, health_port=port
        )
        started = time.monotonic()
        ran = keeper("run", "--config", str(second))
        assert ran.returncode == EX_CONFIG, ran.stdout + ran.stderr
        assert_one_paragraph(ran.stderr, "keeper run: error: health.port: cannot listen on ")
        assert not schema_present(empty_database_url)
        print(f"the second keeper stopped after {time.monotonic() - started:.1f} s")
        assert proc.poll() is None  # the first runs on
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def keystore_with_password(root: Path, password: str) -> tuple[Path, Path]:
    account = Account.create()
    keystore = root / "signer.json"
    keystore.write_text(
        json.dumps(Account.encrypt(account.key, "the-right-one", kdf="pbkdf2", iterations=1000))
    )
    password_file = root / "signer.password"
    password_file.write_text(password + "\n")
    return keystore, password_file


@pytest.mark.parametrize("mistake", ["bad field", "wrong key password", "wrong chain"])
def test_configuration_errors_exit_78(
    mistake: str, tmp_path: Path, deployed: Deployment, anvil: Anvil, database_url: str
) -> None:
    extra, deployment = "", deployed
    if mistake == "bad field":
        extra = "[ingest]\npoll_interval = -1\n"
        expected = "ingest.poll_interval"
    elif mistake == "wrong key password":
        keystore, password = keystore_with_password(tmp_path, "not-the-password")
        extra = f'[[signers]]\nkeystore = "{keystore}"\npassword_file = "{password}"\n'
        expected = "signers.0"
    else:
        # The deployment file is for chain 5; the RPC serves 31337 (found after migrating).
        data = json.loads(deployed.to_json())
        deployment = Deployment.from_dict({**data, "chain_id": 5})
        expected = "reports chain 31337, expected 5"
    config = write_config(tmp_path, deployment, anvil.url, database_url, extra=extra)
    ran = keeper("run", "--config", str(config))
    assert ran.returncode == EX_CONFIG, ran.stdout + ran.stderr
    assert ran.stderr.startswith("keeper run: error: ") and expected in ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    json_lines(ran.stdout)


def test_outages_are_not_configuration_errors(
    tmp_path: Path, deployed: Deployment, anvil: Anvil, database_url: str
) -> None:
    # The database out of reach: exit 1, which the unit restarts.
    unreachable = f"postgresql://keeper@127.0.0.1:{free_port()}/keeper"
    config = write_config(tmp_path, deployed, anvil.url, unreachable)
    ran = keeper("run", "--config", str(config))
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "cannot connect to PostgreSQL" in ran.stderr

    # The RPC out of reach: the keeper waits it out (no exit at all) until stopped.
    config = write_config(tmp_path, deployed, f"http://127.0.0.1:{free_port()}", database_url)
    log_file = tmp_path / "run.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [*KEEPER, "run", "--config", str(config)], stdout=log, stderr=log, env=quiet_env()
        )
    try:
        poll_until(
            "chain_check_failed",
            lambda: log_file.read_text().count("chain_check_failed") >= 2,
            proc,
        )
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    assert status == 0, log_file.read_text()
    json_lines(log_file.read_text())


def test_check_config_reads_keys_from_systemd_credentials(
    tmp_path: Path, deployed: Deployment, anvil: Anvil, database_url: str
) -> None:
    # As `LoadCredential=keys:/etc/keeper/keys/mainnet` hands them over: `keys_<file>`.
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    hex_key = dev_key(3)
    (creds / "keys_signer1").write_text(hex_key.reveal_hex() + "\n")
    account = Account.create()
    (creds / "keys_signer2").write_text(
        json.dumps(Account.encrypt(account.key, "pass-0f-signer2", kdf="pbkdf2", iterations=1000))
    )
    (creds / "keys_signer2.password").write_text("pass-0f-signer2\n")
    signers = (
        '[[signers]]\ncredential = "keys_signer1"\n\n[[signers]]\ncredential = "keys_signer2"\n'
    )
    # Fresh signers hold no ORACLE_ROLE: usage billing off, so that every check passes.
    usage_off = "\n[plan]\nusage = false\n"
    config = write_config(tmp_path, deployed, anvil.url, database_url, extra=usage_off + signers)

    checked = keeper("check-config", "--config", str(config), CREDENTIALS_DIRECTORY=str(creds))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"2 keys: {hex_key.address}, {account.address}" in checked.stdout
    printed = checked.stdout + checked.stderr
    assert hex_key.reveal_hex().removeprefix("0x") not in printed
    assert "pass-0f-signer2" not in printed

    without = keeper("check-config", "--config", str(config))
    assert without.returncode == 1
    assert "signers.0.credential: credential 'keys_signer1': $CREDENTIALS_DIRECTORY is not set" in (
        without.stderr
    )
