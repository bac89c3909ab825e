"""The operator's first hour through the installed console script, against a real anvil node
and PostgreSQL: `keeper keys new` (a keystore its password file decrypts, both 0600, never
overwritten), `keeper roles show|grant|revoke` (read back with hasRole on chain), and `keeper
usage import --config`."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper import db as keeper_db
from keeper.chain.deployment import Deployment
from keeper.chain.keys import load_keystore
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.dev.devchain import deploy_dev
from keeper.ops.deploy import contract, deploy_all
from tests.support.daemon import KEEPER, keeper


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Deployment:
    """The contracts on the session's anvil node, dev account 0 their admin."""
    return deploy_all(anvil.url, dev_key(0).reveal_hex())


def write_config(root: Path, anvil: Anvil, deployment: Deployment, database_url: str) -> Path:
    deployment.write(root / "deployment.json")
    path = root / "keeper.toml"
    path.write_text(
        f'[chain]\nrpc_url = "{anvil.url}"\ndeployment_file = "deployment.json"\n'
        f'[database]\nurl = "{database_url}"\n',
        encoding="utf-8",
    )
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def new_key(keystore: Path, *more: str) -> str:
    """`keeper keys new KEYSTORE` under umask 000; the address it printed."""
    command = shlex.join([*KEEPER, "keys", "new", str(keystore), *more])
    # A umask that takes nothing away: the files must be private all the same.
    result = subprocess.run(
        ["sh", "-c", f"umask 000; exec {command}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    address = result.stdout.strip()
    assert Web3.is_checksum_address(address), result.stdout
    return address


# --------------------------------------------------------------------------- keys new


def test_keys_new_writes_a_keystore_its_password_file_decrypts(tmp_path: Path) -> None:
    keystore = tmp_path / "keys" / "signer2.json"
    address = new_key(keystore)
    password_file = tmp_path / "keys" / "signer2.password"
    assert mode(keystore) == 0o600
    assert mode(password_file) == 0o600
    assert mode(keystore.parent) == 0o700
    password = password_file.read_text().removesuffix("\n")
    secret = Account.decrypt(json.loads(keystore.read_text()), password)
    assert Account.from_key(secret).address == address
    # The daemon's own loader reads the pair the same way.
    assert load_keystore(keystore, password_file).address == address


def test_keys_new_with_a_credential_style_name_and_its_own_password_file(tmp_path: Path) -> None:
    keystore = tmp_path / "signer3"
    address = new_key(keystore, "--password-file", str(tmp_path / "pw" / "p.txt"))
    assert load_keystore(keystore, tmp_path / "pw" / "p.txt").address == address
    assert mode(tmp_path / "pw" / "p.txt") == 0o600
    assert not (tmp_path / "signer3.password").exists()


def test_keys_new_never_overwrites(tmp_path: Path) -> None:
    keystore = tmp_path / "signer.json"
    password_file = tmp_path / "signer.password"
    password_file.write_text("the old password\n")
    result = keeper("keys", "new", str(keystore))
    assert result.returncode == 1
    assert f"{password_file} already exists" in result.stderr
    assert password_file.read_text() == "the old password\n"
    assert not keystore.exists()

    password_file.unlink()
    keystore.write_text("{}")
    result = keeper("keys", "new", str(keystore))
    assert result.returncode == 1
    assert f"{keystore} already exists" in result.stderr
    assert keystore.read_text() == "{}"
    assert not password_file.exists()


# --------------------------------------------------------------------------- roles


def has_role(anvil: Anvil, deployment: Deployment, name: str, getter: str, account: str) -> bool:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    address = getattr(deployment, name)
    artifact = {"stream_manager": "StreamManager", "escrow_vault": "EscrowVault"}[name]
    c = contract(w3, artifact, address)
    role = getattr(c.functions, getter)().call()
    return bool(c.functions.hasRole(role, account).call())


def test_roles_grant_show_and_revoke_on_chain(
    tmp_path: Path, anvil: Anvil, deployed: Deployment
) -> None:
    config = write_config(tmp_path, anvil, deployed, "postgresql://postgres@127.0.0.1/unused")
    signer = new_key(tmp_path / "keys" / "signer.json")
    admin_key = tmp_path / "admin.hex"
    admin_key.write_text(dev_key(0).reveal_hex())
    admin = ["--config", str(config), "--key-file", str(admin_key)]

    shown = keeper("roles", "show", "--config", str(config), signer, "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)["accounts"][0]
    assert (row["address"], row["stream_manager"], row["escrow_vault"]) == (signer, [], [])

    granted = keeper("roles", "grant", "oracle", signer, *admin)
    assert granted.returncode == 0, granted.stderr
    assert f"StreamManager: {signer} holds ORACLE_ROLE (transaction 0x" in granted.stdout
    assert has_role(anvil, deployed, "stream_manager", "ORACLE_ROLE", signer)
    again = keeper("roles", "grant", "ORACLE_ROLE", signer, *admin)
    assert again.returncode == 0, again.stderr
    assert "already so, nothing sent" in again.stdout

    pauser = keeper("roles", "grant", "pauser", signer, *admin)
    assert pauser.returncode == 0, pauser.stderr
    for name in ("stream_manager", "escrow_vault"):
        assert has_role(anvil, deployed, name, "PAUSER_ROLE", signer)

    # Without addresses: the deployment's accounts and the configured signers.
    with config.open("a") as f:
        f.write(
            '[[signers]]\nkeystore = "keys/signer.json"\npassword_file = "keys/signer.password"\n'
        )
    table = keeper("roles", "show", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert "deployer" in lines[deployed.deployer]
    assert "admin pauser" in lines[deployed.deployer]
    assert "signer 0" in lines[signer]
    assert "oracle pauser" in lines[signer]

    revoked = keeper("roles", "revoke", "oracle", signer, *admin)
    assert revoked.returncode == 0, revoked.stderr
    assert f"StreamManager: {signer} does not hold ORACLE_ROLE" in revoked.stdout
    assert not has_role(anvil, deployed, "stream_manager", "ORACLE_ROLE", signer)
    only_vault = keeper("roles", "revoke", "pauser", signer, *admin, "--contract", "escrow_vault")
    assert only_vault.returncode == 0, only_vault.stderr
    assert not has_role(anvil, deployed, "escrow_vault", "PAUSER_ROLE", signer)
    assert has_role(anvil, deployed, "stream_manager", "PAUSER_ROLE", signer)


def test_roles_grant_refuses_a_key_that_is_not_admin(
    tmp_path: Path, anvil: Anvil, deployed: Deployment
) -> None:
    config = write_config(tmp_path, anvil, deployed, "postgresql://postgres@127.0.0.1/unused")
    keystore = tmp_path / "outsider.json"
    outsider = new_key(keystore)
    rpc(anvil.url, "anvil_setBalance", [outsider, hex(10**18)])
    target = Account.create().address
    result = keeper(
        "roles",
        "grant",
        "oracle",
        target,
        "--config",
        str(config),
        "--keystore",
        str(keystore),
        "--password-file",
        str(tmp_path / "outsider.password"),
    )
    assert result.returncode == 1
    assert f"{outsider} may not grant ORACLE_ROLE on StreamManager" in result.stderr
    assert f"the deployer ({deployed.deployer})" in result.stderr
    assert "Traceback" not in result.stderr
    assert not has_role(anvil, deployed, "stream_manager", "ORACLE_ROLE", target)


def test_roles_refuses_a_role_it_does_not_change(tmp_path: Path) -> None:
    result = keeper("roles", "grant", "admin", Account.create().address, "--config", "x.toml")
    assert result.returncode == 2
    assert "only oracle and pauser are granted and revoked here" in result.stderr


# --------------------------------------------------------------------------- usage import


@pytest.mark.anyio
async def test_usage_import_takes_the_database_from_config(
    tmp_path: Path, anvil: Anvil, deployed: Deployment, database_url: str
) -> None:
    config = write_config(tmp_path, anvil, deployed, database_url)
    usage = tmp_path / "usage.csv"
    usage.write_text("stream_id,units,producer_key\n1,10,a\n2,20,b\n")
    result = keeper("usage", "import", str(usage), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows_queued"] == 2
    conn = await keeper_db.connect(database_url)
    try:
        rows = await conn.fetch("SELECT producer_key, units FROM usage_inbox ORDER BY id")
    finally:
        await conn.close()
    assert [(r["producer_key"], r["units"]) for r in rows] == [("a", "10"), ("b", "20")]

    both = keeper(
        "usage", "import", str(usage), "--config", str(config), "--database-url", database_url
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


# --------------------------------------------------------------------------- dev open-*


def test_dev_open_stream_and_escrow_on_a_dev_chain(tmp_path: Path, anvil: Anvil) -> None:
    deployment = deploy_dev(anvil.url)
    config = write_config(tmp_path, anvil, deployment, "postgresql://postgres@127.0.0.1/unused")
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    payer, payee = dev_key(4).address, dev_key(7).address

    stream = keeper(
        "dev", "open-stream", "--config", str(config), "--payer", "4", "--payee", "7",
        "--rate", "500", "--deposit", "2000000", "--usage-price", "3",
    )  # fmt: skip
    assert stream.returncode == 0, stream.stderr
    stream_id = int(stream.stdout.split()[2].rstrip(":"))
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    on_chain = manager.functions.getStream(stream_id).call()
    assert (on_chain[0], on_chain[1], on_chain[2], on_chain[3]) == (payer, payee, 2_000_000, 500)
    assert on_chain[6] == 3

    escrow = keeper("dev", "open-escrow", "--config", str(config), "--payer", "4", "--payee", "7")
    assert escrow.returncode == 0, escrow.stderr
    escrow_id = int(escrow.stdout.split()[2].rstrip(":"))
    vault = contract(w3, "EscrowVault", deployment.escrow_vault)
    payer_, payee_, amount, expires_at, _ = vault.functions.getEscrow(escrow_id).call()
    assert (payer_, payee_, amount) == (payer, payee, 10 * 10**6)
    assert f"expires at chain time {expires_at}" in escrow.stdout


def test_dev_open_stream_refuses_a_chain_it_did_not_set_up(tmp_path: Path, anvil: Anvil) -> None:
    owner = Account.create()
    rpc(anvil.url, "anvil_setBalance", [owner.address, hex(10**20)])
    deployment = deploy_all(anvil.url, owner.key.hex())
    config = write_config(tmp_path, anvil, deployment, "postgresql://postgres@127.0.0.1/unused")
    result = keeper("dev", "open-stream", "--config", str(config))
    assert result.returncode == 1
    assert "is not the test token of a dev chain" in result.stderr
    assert "Traceback" not in result.stderr
