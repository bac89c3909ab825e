"""The `keeper` command line end to end, run as the installed console script."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, free_port, rpc
from keeper.ops.deploy import contract
from keeper.resources import load_artifact
from tests.support.daemon import KEEPER, keeper

COMMANDS = {
    "deploy": [
        "--rpc-url",
        "--key-file",
        "--key-env",
        "--keystore",
        "--password-file",
        "--oracle",
        "--fee-recipient",
        "--fee-bps",
        "--notice-period",
        "--token",
        "--out",
    ],
    "devchain": ["--port", "--host", "--block-time", "--out"],
    "migrate": ["--config", "--database-url", "KEEPER_DATABASE_URL"],
    "db": ["archive-events"],
    "run": ["--config"],
    "status": ["--config", "--database-url", "--chain-id", "--json", "KEEPER_DATABASE_URL"],
    "check-config": ["--config"],
    "config": ["show"],
    "plan": ["--config", "--json"],
    "retire": ["--config", "--dry-run", "--json"],
    "backfill": ["--config", "--from", "--to"],
    "verify": ["--config", "--block", "--json"],
    "usage": ["import"],
    "keys": ["new"],
    "roles": ["show", "grant", "revoke"],
    "dev": ["open-stream", "open-escrow"],
    "demo": [
        "--port",
        "--host",
        "--block-time",
        "--database-url",
        "--rpc-url",
        "--data-dir",
        "--no-wait",
        "--health-port",
        "--duration",
    ],
}


def funded_key(node: Anvil) -> tuple[str, str]:
    """A fresh key (hex without 0x) and its address, given 1000 ETH on `node`."""
    account = Account.create()
    rpc(node.url, "anvil_setBalance", [account.address, hex(1000 * 10**18)])
    return account.key.hex().removeprefix("0x"), account.address


def shows_key(text: str, secret_hex: str) -> bool:
    lowered = text.lower()
    return any(secret_hex[i : i + 16] in lowered for i in range(0, len(secret_hex) - 15))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- help


def test_help_lists_every_command() -> None:
    result = keeper("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout
    assert "--log-level" in result.stdout
    assert "--version" in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help_mentions_its_options(command: str) -> None:
    result = keeper(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: keeper {command}")
    for option in COMMANDS[command]:
        assert option in result.stdout, f"{command} --help does not mention {option}"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The (sub)commands of `parser`, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_help_lists_each_command_once() -> None:
    """`keeper --help` and each command group's --help name every (sub)command on exactly one
    line, with its summary."""
    from keeper.cli import build_parser

    top = subcommands(build_parser())
    groups: dict[tuple[str, ...], dict[str, argparse.ArgumentParser]] = {(): top}
    groups.update({(name,): subcommands(p) for name, p in top.items() if subcommands(p)})
    assert set(groups) == {("config",), ("usage",), ("keys",), ("roles",), ("dev",), ("db",), ()}
    for argv, commands in groups.items():
        result = keeper(*argv, "--help")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        for name in commands:
            at = [
                i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(name)}(\s|$)", line)
            ]
            assert len(at) == 1, (argv, name, [lines[i] for i in at])
            # The summary follows the name, or (a long name) stands on the next line.
            summary = lines[at[0]].split(None, 1)[1:] or [lines[at[0] + 1].strip()]
            assert summary[0] and summary[0] not in commands, f"{name}: no summary in {argv}"


def test_config_show_help_mentions_its_options() -> None:
    result = keeper("config", "show", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keeper config show")
    for option in ("--config", "--json", "(masked)"):
        assert option in result.stdout, option


def test_every_option_has_a_help_text() -> None:
    """No option of any command is left unexplained in its --help."""
    from keeper.cli import build_parser

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(build_parser()):
        assert parser.description or parser.prog == "keeper", parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue  # its choices are listed with their parsers' help (checked below)
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_archive_events_help_mentions_its_options() -> None:
    result = keeper("db", "archive-events", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--chain-id", "--below", "--partition-blocks", "--dry-run", "--json"):
        assert option in result.stdout


def test_usage_import_help_mentions_its_options() -> None:
    result = keeper("usage", "import", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keeper usage import")
    for option in ("--format", "--chain-id", "--source", "--database-url", "--json"):
        assert option in result.stdout, option


def test_python_m_keeper(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keeper", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("keeper ")


def test_no_command_is_a_usage_error() -> None:
    result = keeper()
    assert result.returncode == 2
    assert "usage: keeper" in result.stderr


# --------------------------------------------------------------------------- deploy


def assert_deployed(node: Anvil, path: Path, deployer: str, oracle: str, fee_bps: int) -> None:
    d = Deployment.read(path)
    assert (d.chain_id, d.deployer, d.oracle, d.fee_bps) == (31337, deployer, oracle, fee_bps)
    w3 = Web3(Web3.HTTPProvider(node.url))
    for name, address in (
        ("TestToken", d.token),
        ("StreamManager", d.stream_manager),
        ("EscrowVault", d.escrow_vault),
    ):
        code = bytes(w3.eth.get_code(Web3.to_checksum_address(address)))
        expected = load_artifact(name).deployed_bytecode.removeprefix("0x")
        assert len(code) == len(expected) // 2 > 0
    manager = contract(w3, "StreamManager", d.stream_manager)
    assert manager.functions.hasRole(manager.functions.ORACLE_ROLE().call(), oracle).call()
    assert manager.functions.feeBps().call() == fee_bps


def test_deploy_with_key_file(anvil: Anvil, tmp_path: Path) -> None:
    secret, address = funded_key(anvil)
    key_file = tmp_path / "deployer.key"
    key_file.write_text(f"0x{secret}\n")
    oracle = dev_key(1).address
    out = tmp_path / "out" / "deployment.json"
    result = keeper(
        "deploy",
        "--rpc-url",
        anvil.url,
        "--key-file",
        str(key_file),
        "--oracle",
        oracle.lower(),  # any letter case is accepted, the file holds checksummed addresses
        "--fee-bps",
        "100",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert_deployed(anvil, out, address, oracle, 100)
    d = json.loads(out.read_text())
    for field in ("token", "stream_manager", "escrow_vault"):
        assert d[field] in result.stdout
    assert address in result.stdout + result.stderr
    assert not shows_key(result.stdout + result.stderr, secret)


def test_deploy_with_key_env(anvil: Anvil, tmp_path: Path) -> None:
    secret, address = funded_key(anvil)
    out = tmp_path / "deployment.json"
    result = keeper(
        "deploy",
        "--rpc-url",
        anvil.url,
        "--key-env",
        "KEEPER_TEST_DEPLOYER_KEY",
        "--out",
        str(out),
        env={"KEEPER_TEST_DEPLOYER_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    assert_deployed(anvil, out, address, address, 250)
    assert not shows_key(result.stdout + result.stderr, secret)


def test_deploy_with_keystore(anvil: Anvil, tmp_path: Path) -> None:
    secret, address = funded_key(anvil)
    keystore = tmp_path / "keystore.json"
    keystore.write_text(
        json.dumps(Account.encrypt(bytes.fromhex(secret), "pw", kdf="pbkdf2", iterations=1000))
    )
    password = tmp_path / "password"
    password.write_text("pw\n")
    out = tmp_path / "deployment.json"
    result = keeper(
        "deploy",
        "--rpc-url",
        anvil.url,
        "--keystore",
        str(keystore),
        "--password-file",
        str(password),
        "--fee-recipient",
        dev_key(2).address,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert_deployed(anvil, out, address, address, 250)
    assert Deployment.read(out).fee_recipient == dev_key(2).address
    assert not shows_key(result.stdout + result.stderr, secret)


def test_deploy_with_a_bad_key_file(anvil: Anvil, tmp_path: Path) -> None:
    secret, _ = funded_key(anvil)
    key_file = tmp_path / "deployer.key"
    key_file.write_text(secret[:-3])
    out = tmp_path / "deployment.json"
    result = keeper(
        "deploy", "--rpc-url", anvil.url, "--key-file", str(key_file), "--out", str(out)
    )
    assert result.returncode == 1
    assert str(key_file) in result.stderr
    assert "expected 64 hex digits, found 61" in result.stderr
    assert "Traceback" not in result.stderr
    assert not shows_key(result.stdout + result.stderr, secret)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key-env", "K", "--key-file", "f"], "not allowed with argument"),
        (["--keystore", "ks.json"], "--keystore needs --password-file"),
        (["--key-env", "K", "--password-file", "p"], "--password-file only goes with"),
        (["--key-env", "K", "--fee-bps", "1001"], "between 0 and 1000"),
        (["--key-env", "K", "--oracle", "0x1234"], "not an Ethereum address"),
    ],
    ids=["two-sources", "keystore-without-password", "password-without-keystore", "fee", "addr"],
)
def test_deploy_usage_errors(anvil: Anvil, tmp_path: Path, args: list[str], message: str) -> None:
    result = keeper(
        "deploy", "--rpc-url", anvil.url, "--out", str(tmp_path / "d.json"), *args, env={"K": ""}
    )
    assert result.returncode in (1, 2)
    assert message in result.stderr


# --------------------------------------------------------------------------- migrate


def test_migrate(empty_database_url: str) -> None:
    first = keeper("migrate", "--database-url", empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_foundation.sql" in first.stdout
    again = keeper("migrate", env={"KEEPER_DATABASE_URL": empty_database_url})
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout
    assert "applied" not in again.stdout


def test_migrate_without_a_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KEEPER_DATABASE_URL"}
    result = subprocess.run(
        [*KEEPER, "migrate"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 1
    assert "KEEPER_DATABASE_URL" in result.stderr


def test_migrate_unreachable_database_hides_the_password() -> None:
    url = f"postgresql://keeper:s3cret-pw@127.0.0.1:{free_port()}/keeper"
    result = keeper("migrate", "--database-url", url)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- devchain


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_devchain_runs_until_signalled(tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    out = tmp_path / "devchain" / "deployment.json"
    proc = subprocess.Popen(
        [*KEEPER, "devchain", "--port", str(port), "--out", str(out)],
        cwd=tmp_path,  # anvil is found from any working directory
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: out.exists() or proc.poll() is not None, 60, "the deployment file")
        assert proc.poll() is None, proc.communicate()
        d = Deployment.read(out)
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        assert w3.eth.chain_id == d.chain_id == 31337
        for address in (d.token, d.stream_manager, d.escrow_vault):
            assert len(w3.eth.get_code(Web3.to_checksum_address(address))) > 0
        assert (d.deployer, d.oracle) == (dev_key(0).address, dev_key(1).address)
        # Interval mining: the chain moves on without transactions.
        head = w3.eth.block_number
        wait_for(lambda: w3.eth.block_number > head, 10, "a new block")

        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert not port_open(port), "anvil still listens after the dev chain stopped"
    assert f"http://127.0.0.1:{port}" in stdout
    for address in (d.token, d.stream_manager, d.escrow_vault):
        assert address in stdout
    assert str(out) in stdout
    assert "rpc_url" in stdout  # how to point a configuration at it
    for index in range(10):
        assert not shows_key(stdout + stderr, dev_key(index).reveal_hex()[2:])


def test_devchain_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = keeper("devchain", "--port", str(port), "--out", str(tmp_path / "d.json"))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "--port 0" in result.stderr
