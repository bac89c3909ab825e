"""The demo's keeper, before it runs: `prepare_keeper` writes what `keeper run` needs into the
data directory: a configuration with short intervals and small thresholds (so that work falls
due within seconds), and an encrypted keystore with its password file (mode 0600) for each
signer. The signers are anvil dev accounts: the oracle, and one more that is granted
ORACLE_ROLE (`DemoChain.grant_oracle_role`), since every signer reports usage.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from keeper.dev.anvil import dev_key, free_port
from keeper.dev.devchain import DEV_ROLES, port_is_free

DEFAULT_HEALTH_PORT = 9464
# The oracle (granted ORACLE_ROLE by the deployment) and the last dev account, which no other
# part of the demo sends from: two nonce lanes.
SIGNER_ACCOUNTS = (DEV_ROLES.oracle, 9)
SHUTDOWN_GRACE = 5.0  # the daemon's [daemon] shutdown_grace
# Light scrypt: these are anvil's public dev keys, and the daemon decrypts them at every start.
KEYSTORE_SCRYPT_N = 2**14


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
