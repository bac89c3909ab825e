"""`keeper run` lives through hostile usage rows: every value of the hostile list in every inbox
column (the observed_at rows that used to crash the planning pass and make every restart crash
again among them) and received_at values beyond Python's datetime go into the inbox of a running
daemon. Each row must get its verdict, the rows that are fine must still be recorded on chain,
and the process must still be alive, then stop cleanly on SIGTERM.

Real processes: anvil mining a block a second, PostgreSQL and the `keeper` console script.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0, send_and_mine, tx
from tests.support.credentials import install_credentials
from tests.support.daemon import Keeper, Outboxes, wait_until
from tests.support.usage import GOOD, every_column_hostile, insert

SIGNER = 5


class Inbox(Outboxes):
    """A synchronous window on the keeper's database for usage rows."""

    def insert(self, rows: list[dict[str, Any]]) -> list[int]:
        ids: list[int] = self._runner.run(insert(self._conn, rows))
        return ids

    def unjudged(self, ids: list[int]) -> int:
        rows = self.fetch(
            "SELECT count(*) AS n FROM usage_inbox "
            "WHERE id = ANY($1::bigint[]) AND verdict IS NULL",
            ids,
        )
        return int(rows[0]["n"])

    def not_recorded(self, ids: list[int]) -> int:
        rows = self.fetch(
            "SELECT count(*) AS n FROM keeper.usage "
            "WHERE inbox_id = ANY($1::bigint[]) AND status NOT IN ('recorded', 'rejected')",
            ids,
        )
        return int(rows[0]["n"])


def build_world(node: Anvil, d: Deployment) -> None:
    """Streams 1 and 2 open with a usage price and a deep deposit; the signer is an oracle."""
    admin, m = d.deployer, d.stream_manager
    me = bytes.fromhex(admin[2:])
    signer = bytes.fromhex(dev_key(SIGNER).address[2:])
    calls = [
        tx(admin, d.token, "mint(address,uint256)", me, 10**18),
        tx(admin, d.token, "approve(address,uint256)", bytes.fromhex(m[2:]), 2**256 - 1),
        tx(admin, m, "grantRole(bytes32,address)", ORACLE_ROLE, signer),
    ]
    for sid in (1, 2):
        payee = (0x7100 + sid).to_bytes(20, "big")
        calls.append(tx(admin, m, "openStream(address,uint256,uint256)", payee, 0, 10**15))
        calls.append(tx(admin, m, "setUsagePrice(uint256,uint256)", sid, 3))
    send_and_mine(node.url, admin, calls)


def write_config(path: Path, node: Anvil, d: Deployment, database_url: str) -> Path:
    deployment_file = path / "deployment.json"
    d.write(deployment_file)
    config = path / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_url = "{node.url}"
deployment_file = "{deployment_file}"

[database]
url = "{database_url}"

[ingest]
poll_interval = 0.25

[tx]
confirmations = 1
poll_interval = 0.25

[plan]
interval = 0.5
settle_min_amount = 1000000000000000000
unknown_stream_grace = 0

[[signers]]
credential = "signer-{SIGNER}"

[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def node(
    anvil_factory: Callable[..., Anvil], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Anvil, Deployment]]:
    chain = anvil_factory()
    d = deploy_all(chain.url, DEV_KEY0)
    build_world(chain, d)
    install_credentials(tmp_path, monkeypatch, [SIGNER])
    rpc(chain.url, "evm_setIntervalMining", [1])
    yield chain, d
    rpc(chain.url, "evm_setIntervalMining", [0])


def test_hostile_usage_rows_get_verdicts_and_the_daemon_lives_on(
    node: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    chain, d = node
    keeper = Keeper(write_config(tmp_path, chain, d, database_url), tmp_path / "keeper.log")
    inbox = Inbox(database_url)
    try:
        keeper.start()
        wait_until("keeper_started", keeper.started_logged, keeper, timeout=60)
        hostile = inbox.insert(every_column_hostile(None) + every_column_hostile(d.chain_id))
        wait_until("a verdict for every row", lambda: inbox.unjudged(hostile) == 0, keeper)
        # Billing goes on: rows that are fine, before and after the hostile ones, are charged.
        good = inbox.insert([{**GOOD, "producer_key": f"after-{i}"} for i in range(3)])
        wait_until(
            "the usage recorded on chain",
            lambda: inbox.not_recorded(hostile + good) == 0,
            keeper,
            timeout=120,
        )
        assert keeper.alive(), keeper.tail()
        recorded = inbox.fetch(
            "SELECT count(*) AS n FROM keeper.usage WHERE status = 'recorded' "
            "AND producer_key LIKE 'after-%'"
        )
        assert int(recorded[0]["n"]) == 3
        status, _ = keeper.terminate(within=15)
        assert status == 0, keeper.tail()
    finally:
        keeper.stop()
        inbox.close()
