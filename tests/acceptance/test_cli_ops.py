"""The operator commands end to end, as the installed console script: `keeper check-config` and
`keeper run` on each kind of configuration mistake, `config show`, `migrate --config`, and
`status`, `backfill` and `verify` next to a running daemon.

Each mistake is checked through both commands: `check-config` exits 1 with a FAIL line that
names the field's path, the value found (never a secret) and what was expected, and `keeper
run` with the same configuration exits 78 (EX_CONFIG: systemd does not restart it) with that
same message; neither prints a traceback.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from eth_account import Account
from eth_utils import to_checksum_address

from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.config_load import load_config
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.errors import EX_CONFIG
from keeper.ops.deploy import deploy_all
from tests.support.chain import send_and_mine, tx
from tests.support.daemon import Db, Keeper, keeper, wait_until

API_KEY = "k3y-0f-the-rpc"  # in the RPC URL's query string, as hosted RPCs put it
DB_PASSWORD = "pw-0f-the-db"


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Deployment:
    """The contracts on the session's anvil node."""
    return deploy_all(anvil.url, dev_key(0).reveal_hex())


def with_password(url: str) -> str:
    """`url` with a password, unless it has one (the test server trusts local connections, so
    a made-up password only has to stay out of every output)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{DB_PASSWORD}@{host}"))


@dataclass
class Setup:
    """A configuration directory: config file, deployment file, optional signer files."""

    root: Path
    rpc_url: str
    database_url: str
    deployment: dict[str, object]
    chain: dict[str, object] = field(default_factory=dict)
    sections: str = ""
    signers: str = ""
    omit_rpc_url: bool = False

    def write(self) -> Path:
        (self.root / "deployment.json").write_text(json.dumps(self.deployment))
        chain = {"deployment_file": "deployment.json", **self.chain}
        if not self.omit_rpc_url:
            chain["rpc_url"] = self.rpc_url
        lines = ["[chain]", *(f"{k} = {json.dumps(v)}" for k, v in chain.items())]
        text = (
            "\n".join(lines)
            + f"""
rpc_timeout = 5.0
rpc_attempts = 2

[database]
url = "{self.database_url}"

[health]
enabled = false

[log]
format = "json"
{self.sections}
{self.signers}
"""
        )
        path = self.root / "keeper.toml"
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def setup(tmp_path: Path, anvil: Anvil, deployed: Deployment, database_url: str) -> Setup:
    data = json.loads(deployed.to_json())
    return Setup(tmp_path, f"{anvil.url}/?apikey={API_KEY}", with_password(database_url), data)


def keystore(root: Path, name: str) -> tuple[Path, Path]:
    """A keystore file for a fresh key and its password file."""
    key = Account.create()
    path = root / f"{name}.json"
    path.write_text(json.dumps(Account.encrypt(key.key, "pw", kdf="pbkdf2", iterations=1000)))
    password = root / f"{name}.password"
    password.write_text("pw\n")
    return path, password


def signer_table(keystore_path: Path | str, password_path: Path | str) -> str:
    return f'\n[[signers]]\nkeystore = "{keystore_path}"\npassword_file = "{password_path}"\n'


def assert_clean(text: str) -> None:
    assert "Traceback" not in text, text
    assert API_KEY not in text, text
    assert DB_PASSWORD not in text, text


def fail_line(stderr: str, check: str) -> str:
    """The message of the FAIL line of `check`, with its continuation lines (stripped)."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAIL") and line.split()[1] == check:
            message = [line.split(None, 2)[2]]
            for more in lines[i + 1 :]:
                if not more.startswith(" "):
                    break
                message.append(more.strip())
            return "\n".join(message)
    raise AssertionError(f"no FAIL line for {check}:\n{stderr}")


def same_message(message: str, stderr: str) -> None:
    """`keeper run` printed `message` (each of its lines; the indentation differs)."""
    printed = [line.strip() for line in stderr.splitlines()]
    for line in message.splitlines():
        assert any(line in p for p in printed), f"{line!r} not in:\n{stderr}"


def check_both(config: Path, check: str, *expected: str, env: dict[str, str] | None = None) -> None:
    """`check-config` fails `check` with `expected` in its message; `keeper run` fails with the
    same message."""
    checked = keeper("check-config", "--config", str(config), env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert_clean(checked.stdout + checked.stderr)
    message = fail_line(checked.stderr, check)
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"
    ran = keeper("run", "--config", str(config), env=env, timeout=90)
    assert ran.returncode == EX_CONFIG, ran.stdout[-2000:] + ran.stderr
    assert_clean(ran.stdout + ran.stderr)
    assert "keeper run: error:" in ran.stderr, ran.stderr
    same_message(message, ran.stderr)


# --------------------------------------------------------------------------- check-config


def grant_oracle_role(setup: Setup, keystore_path: Path) -> None:
    """ORACLE_ROLE on StreamManager for the key of `keystore_path`, granted by the admin."""
    address = bytes.fromhex(json.loads(keystore_path.read_text())["address"].removeprefix("0x"))
    manager, admin = str(setup.deployment["stream_manager"]), str(setup.deployment["deployer"])
    send_and_mine(
        setup.rpc_url.partition("/?")[0],
        admin,
        [tx(admin, manager, "grantRole(bytes32,address)", ORACLE_ROLE, address)],
    )


def test_a_good_configuration_passes_every_check(setup: Setup) -> None:
    ks, pw = keystore(setup.root, "signer")
    grant_oracle_role(setup, ks)
    setup.signers = signer_table(ks.name, pw.name)  # relative to the configuration file
    config = setup.write()
    result = keeper("check-config", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_clean(result.stdout + result.stderr)
    names = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok")]
    assert names == [
        "configuration",
        "deployment",
        "signers",
        "health",
        "database",
        "chain",
        "usage",
    ]
    assert "all 7 checks passed" in result.stdout
    assert "schema up to date" in result.stdout
    assert "1 key: 0x" in result.stdout
    assert "every signer holds ORACLE_ROLE" in result.stdout


def test_a_signer_without_oracle_role_fails_the_usage_billing_check(setup: Setup) -> None:
    """`keeper run` would switch usage billing off (it goes on with settlement and refunds);
    check-config says so beforehand, naming the signer, and passes with plan.usage = false."""
    ks, pw = keystore(setup.root, "signer")
    setup.signers = signer_table(ks.name, pw.name)
    result = keeper("check-config", "--config", str(setup.write()))
    assert result.returncode == 1, result.stdout + result.stderr
    assert_clean(result.stdout + result.stderr)
    address = to_checksum_address(json.loads(ks.read_text())["address"])
    message = fail_line(result.stderr, "usage")
    assert f"signers: {address} lack ORACLE_ROLE on StreamManager" in message
    assert "plan.usage = false" in message
    assert "`keeper run` would start, but without what it names" in result.stderr
    setup.sections = "[plan]\nusage = false\n"
    off = keeper("check-config", "--config", str(setup.write()))
    assert off.returncode == 0, off.stdout + off.stderr
    names = [line.split()[1] for line in off.stdout.splitlines() if line.startswith("ok")]
    assert "usage" not in names


def test_missing_rpc_url(setup: Setup) -> None:
    setup.omit_rpc_url = True
    check_both(
        setup.write(),
        "configuration",
        "chain.rpc_url: required but not set",
        "KEEPER_CHAIN__RPC_URL",
    )


def test_bad_address_checksum(setup: Setup) -> None:
    good = str(setup.deployment["stream_manager"])
    # Flip the case of the first letter: still an address, but its EIP-55 checksum is wrong.
    i = next(i for i, c in enumerate(good) if i > 1 and c.isalpha())
    bad = good[:i] + good[i].swapcase() + good[i + 1 :]
    setup.deployment["stream_manager"] = bad
    check_both(
        setup.write(),
        "deployment",
        "chain.deployment_file",
        f"stream_manager: '{bad}'",
        "invalid EIP-55 checksum",
        "expected the checksummed address",
    )


def test_malformed_address(setup: Setup) -> None:
    setup.deployment["escrow_vault"] = "0x1234"
    check_both(
        setup.write(),
        "deployment",
        "chain.deployment_file",
        "escrow_vault: '0x1234' is not an address",
        "expected 0x and 40 hex digits",
    )


def test_negative_interval_in_the_file(setup: Setup) -> None:
    setup.sections = "[ingest]\npoll_interval = -1\n"
    check_both(
        setup.write(),
        "configuration",
        "ingest.poll_interval",
        "got -1",
        "greater than 0",
    )


def test_negative_interval_from_the_environment(setup: Setup) -> None:
    check_both(
        setup.write(),
        "configuration",
        "ingest.poll_interval",
        "got '-1' from KEEPER_INGEST__POLL_INTERVAL",
        "greater than 0",
        env={"KEEPER_INGEST__POLL_INTERVAL": "-1"},
    )


def test_missing_password_file(setup: Setup) -> None:
    ks, _ = keystore(setup.root, "signer")
    missing = setup.root / "nowhere.password"
    setup.signers = signer_table(ks, missing)
    check_both(
        setup.write(),
        "signers",
        "signers.0.password_file",
        f"password file {missing} does not exist",
    )


def test_keystore_that_is_a_directory(setup: Setup) -> None:
    _, pw = keystore(setup.root, "signer")
    directory = setup.root / "keys"
    directory.mkdir()
    setup.signers = signer_table(directory, pw)
    check_both(
        setup.write(),
        "signers",
        "signers.0.keystore",
        f"cannot read keystore file {directory}: Is a directory",
        "expected a file the keeper's user can read",
    )


def test_password_file_with_mode_000(setup: Setup) -> None:
    ks, pw = keystore(setup.root, "signer")
    grant_oracle_role(setup, ks)  # so that, read as root, every check passes
    pw.chmod(0)
    setup.signers = signer_table(ks, pw)
    config = setup.write()
    result = keeper("check-config", "--config", str(config))
    assert_clean(result.stdout + result.stderr)
    if os.geteuid() == 0:
        # Root reads a file whatever its mode (CAP_DAC_OVERRIDE), and os.access says so: mode
        # 000 cannot make a key unreadable to a keeper running as root. The unreadable cases
        # are the missing file and the directory above; this records what root sees.
        assert os.access(pw, os.R_OK)
        assert result.returncode == 0, result.stderr
        assert "ok    signers" in result.stdout
    else:
        assert result.returncode == 1
        message = fail_line(result.stderr, "signers")
        assert "signers.0.password_file" in message
        assert f"cannot read password file {pw}: Permission denied" in message
        check_both(config, "signers", message)


def test_chain_id_differs_from_the_deployment_and_the_node(setup: Setup) -> None:
    setup.chain = {"chain_id": 1}
    config = setup.write()
    checked = keeper("check-config", "--config", str(config))
    assert checked.returncode == 1
    # Both problems at once: the file disagrees, and so does the node.
    deployment = fail_line(checked.stderr, "deployment")
    assert "chain.chain_id: 1 does not match chain.deployment_file" in deployment
    assert "which is for chain 31337" in deployment
    chain = fail_line(checked.stderr, "chain")
    assert "chain.chain_id: the RPC at http://127.0.0.1:" in chain
    assert "reports chain 31337, expected 1 (from chain.chain_id)" in chain
    ran = keeper("run", "--config", str(config), timeout=90)
    assert ran.returncode == EX_CONFIG
    same_message(deployment, ran.stderr)
    assert_clean(checked.stdout + checked.stderr + ran.stdout + ran.stderr)


def test_deployment_file_for_another_chain(setup: Setup) -> None:
    setup.deployment["chain_id"] = 5
    check_both(
        setup.write(),
        "chain",
        "chain.chain_id: the RPC at http://127.0.0.1:",
        "reports chain 31337, expected 5 (from the deployment file",
    )


def test_contracts_not_deployed_at_the_addresses(setup: Setup) -> None:
    nowhere = to_checksum_address("0x" + "12" * 20)
    setup.deployment["stream_manager"] = nowhere
    check_both(
        setup.write(),
        "chain",
        "chain.deployment_file: no contract code at stream_manager",
        nowhere,
        "on chain 31337 at block",
        "expected the deployed contracts",
    )


def test_max_batch_gas_above_the_transaction_gas_cap(setup: Setup) -> None:
    """A batch above 2^24 gas is refused by nodes that apply EIP-7825 (and by Hardhat's): the
    start refuses such a max_batch_gas rather than planning batches that can never be sent."""
    setup.sections = "[plan]\nmax_batch_gas = 30000000\n"
    check_both(
        setup.write(),
        "chain",
        "plan.max_batch_gas: 30,000,000 is above the per-transaction gas cap (EIP-7825) of "
        "16,777,216 on chain 31337",
        "expected at most 16,777,216",
    )


def test_max_batch_gas_above_the_block_gas_limit(setup: Setup, anvil: Anvil) -> None:
    """On a chain whose blocks hold less than 2^24 gas, the head block's gas limit is the cap."""
    before = int(str(rpc(anvil.url, "eth_getBlockByNumber", ["latest", False])["gasLimit"]), 16)  # type: ignore[index]
    rpc(anvil.url, "evm_setBlockGasLimit", [hex(10_000_000)])
    rpc(anvil.url, "evm_mine")
    try:
        setup.sections = "[plan]\nmax_batch_gas = 12000000\n"
        check_both(
            setup.write(),
            "chain",
            "plan.max_batch_gas: 12,000,000 is above the block gas limit of 10,000,000 on chain "
            "31337",
            "expected at most 10,000,000",
        )
    finally:
        rpc(anvil.url, "evm_setBlockGasLimit", [hex(before)])
        rpc(anvil.url, "evm_mine")


def test_every_problem_is_reported_at_once(setup: Setup) -> None:
    setup.deployment["token"] = "not an address"
    setup.signers = signer_table(setup.root / "a.json", setup.root / "a.password")
    setup.signers += signer_table(setup.root / "b.json", setup.root / "b.password")
    setup.database_url = setup.database_url.rsplit("/", 1)[0] + "/no_such_database_here"
    result = keeper("check-config", "--config", str(setup.write()))
    assert result.returncode == 1
    assert_clean(result.stdout + result.stderr)
    failed = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("FAIL")]
    assert failed == ["deployment", "signers", "signers", "database"]
    assert "4 problems" in result.stderr


# --------------------------------------------------------------------------- config show


def test_config_show_masks_secrets_and_loads_again(setup: Setup) -> None:
    config = setup.write()
    env = {"KEEPER_PLAN__INTERVAL": "7.5"}
    result = keeper("config", "show", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    assert "interval = 7.5  # from KEEPER_PLAN__INTERVAL" in result.stdout
    assert "(masked)" in result.stdout
    shown = tomllib.loads(result.stdout)
    assert shown["chain"]["rpc_url"] == f"{setup.rpc_url.split('/?')[0]} (masked)"
    assert shown["plan"]["interval"] == 7.5
    # Loadable again: equal to the original except the masked secrets.
    again_path = setup.root / "shown.toml"
    again_path.write_text(result.stdout)
    original, again = load_config(config), load_config(again_path)
    assert again.chain.deployment_file == original.chain.deployment_file
    for section in ("ingest", "tx", "log", "health", "daemon"):
        assert getattr(again, section) == getattr(original, section)
    assert again.plan.interval == 7.5
    as_json = keeper("config", "show", "--config", str(config), "--json")
    assert as_json.returncode == 0
    assert_clean(as_json.stdout)
    assert json.loads(as_json.stdout)["database"]["url"].endswith("(masked)")


# --------------------------------------------------------------------------- migrate --config


def test_migrate_with_a_configuration(setup: Setup, empty_database_url: str) -> None:
    setup.database_url = with_password(empty_database_url)
    config = setup.write()
    first = keeper("migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "applied 0001_foundation.sql" in first.stdout
    assert_clean(first.stdout + first.stderr)
    again = keeper("migrate", "--config", str(config))
    assert "is up to date" in again.stdout
    both = keeper("migrate", "--config", str(config), "--database-url", empty_database_url)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


# --------------------------------------------------------------------------- next to a daemon


@pytest.fixture
def running(setup: Setup, anvil: Anvil) -> Iterator[tuple[Keeper, Db, Path]]:
    """`keeper run` on the session chain, caught up with its head."""
    # Enough blocks that the deployment is below anvil's finalized block (head - 64).
    rpc(anvil.url, "anvil_mine", [hex(70)])
    setup.sections = "[ingest]\npoll_interval = 0.2\n"
    config = setup.write()
    daemon = Keeper(config, setup.root / "keeper.log")
    db = Db(setup.database_url)
    try:
        daemon.start()
        head: Callable[[], int] = lambda: int(str(rpc(anvil.url, "eth_blockNumber")), 16)  # noqa: E731
        wait_until("caught up", lambda: db.cursor() >= head(), daemon, timeout=90)
        yield daemon, db, config
    finally:
        daemon.stop()
        db.close()


def test_status_backfill_and_verify_next_to_a_running_daemon(
    running: tuple[Keeper, Db, Path], deployed: Deployment
) -> None:
    daemon, _, config = running
    status = keeper("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "indexed" in status.stdout and "last reorg" in status.stdout
    as_json = json.loads(keeper("status", "--config", str(config), "--json").stdout)
    assert as_json["chain"]["id"] == 31337

    # The daemon follows the head: nothing final is left to index.
    nothing = keeper("backfill", "--config", str(config))
    assert nothing.returncode == 0, nothing.stderr
    assert "nothing to do" in nothing.stdout
    # Re-reading what the daemon indexed only compares; it writes nothing.
    reread = keeper("backfill", "--config", str(config), "--from", str(deployed.deployment_block))
    assert reread.returncode == 0, reread.stderr
    assert "were indexed already" in reread.stdout
    assert "the same number of each kind" in reread.stdout

    verified = keeper("verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the database matches the contracts" in verified.stdout
    assert daemon.alive(), daemon.tail()
