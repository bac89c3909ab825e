"""The daemon-operations world: a chain of fast streams due every pass, two signers, a keeper
configuration for it, and what the tests read back (health, confirmed intents, events)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0, send_and_mine, tx
from tests.support.credentials import install_credentials
from tests.support.daemon import Keeper, Outboxes, wait_until

SIGNER_KEYS = (5, 6)
STREAMS = 24
LEASE = 4.0
GRACE = 3.0


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
    send_and_mine(node.url, admin, calls)


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


def health_url(keeper: Keeper) -> str:
    wait_until("health_listening", logged(keeper, "health_listening"), keeper)
    return str(events(keeper, "health_listening")[0]["url"])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own port
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


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


def logged(keeper: Keeper, name: str) -> Callable[[], bool]:
    return lambda: bool(events(keeper, name))
