"""A base fee held above the fee cap, through the real daemon, until it falls again.

Real processes: anvil (the test mines each block itself, setting its base fee first),
PostgreSQL and `keeper run` with one signer whose fee cap (`max_fee_wei`) is 2 gwei, on a
workload of fast streams that fall due every planning pass. While the base fee is held at
10 gwei nothing the keeper signs can be mined: its lowest nonce is purged after
`purge_after_blocks` by a zero-value self-send at the caps, and the purge is itself stuck as
long again. The keeper must live through it: a purge is never purged (signed again at the same
caps it would be the very same transaction, which crashed the transaction loop), and once the
base fee falls the lane drains, every nonce used once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0
from tests.support.credentials import install_credentials
from tests.support.daemon import Keeper, Outboxes, wait_until
from tests.support.world import build_world, confirmed, events

SIGNER = 5
GWEI = 10**9
CAP = 2 * GWEI
LOW_BASE_FEE = GWEI // 10
SPIKE_BASE_FEE = 10 * GWEI
PURGE_AFTER = 4
BUMP_AFTER = 6  # later than the purge: the stuck nonce is purged below the caps


class Miner:
    """Mines a block every `interval` seconds, each with the base fee `base_fee` (settable)."""

    def __init__(self, node: Anvil, interval: float = 0.4) -> None:
        self.node = node
        self.interval = interval
        self.base_fee = LOW_BASE_FEE
        self.blocks = 0
        # Called (in the miner's thread) before each block, e.g. to change the base fee.
        self.before_block: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miner", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.before_block is not None:
                self.before_block()
            rpc(self.node.url, "anvil_setNextBlockBaseFeePerGas", [hex(self.base_fee)])
            rpc(self.node.url, "evm_mine", [])
            self.blocks += 1

    def __enter__(self) -> Miner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_blocks(self, n: int, keeper: Keeper) -> None:
        """Until `n` more blocks were mined (failing early if the keeper died)."""
        target = self.blocks + n
        wait_until(f"{n} blocks", lambda: self.blocks >= target, keeper, timeout=n * 5 + 30)


def write_config(path: Path, rpc_url: str, d: Deployment, database_url: str) -> Path:
    deployment_file = path / "deployment.json"
    d.write(deployment_file)
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
poll_interval = 0.2

[tx]
confirmations = 2
poll_interval = 0.2
bump_after_blocks = {BUMP_AFTER}
purge_after_blocks = {PURGE_AFTER}
max_fee_wei = {CAP}
max_priority_fee_wei = {GWEI}
tip_wei = {GWEI // 2}

[plan]
interval = 1.0
settle_min_amount = 1000
usage = false

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
    anvil = anvil_factory()
    d = deploy_all(anvil.url, DEV_KEY0)
    build_world(anvil, d)
    install_credentials(tmp_path, monkeypatch, [SIGNER])
    rpc(anvil.url, "evm_setAutomine", [False])
    yield anvil, d


def _assigned(outbox: Outboxes) -> list[int]:
    rows = outbox.fetch("SELECT id FROM intents WHERE state = 'assigned'")
    return [int(r["id"]) for r in rows]


def _nonces(node: Anvil) -> tuple[int, int]:
    address = dev_key(SIGNER).address
    mined = int(str(rpc(node.url, "eth_getTransactionCount", [address, "latest"])), 16)
    pending = int(str(rpc(node.url, "eth_getTransactionCount", [address, "pending"])), 16)
    return mined, pending


def test_a_fee_spike_above_the_cap_is_lived_through(
    node: tuple[Anvil, Deployment], database_url: str, tmp_path: Path
) -> None:
    anvil, d = node
    outbox = Outboxes(database_url)
    keeper = Keeper(write_config(tmp_path, anvil.url, d, database_url), tmp_path / "keeper.log")
    try:
        with Miner(anvil) as miner:
            keeper.start()
            wait_until("a confirmed batch", lambda: confirmed(outbox) >= 1, keeper, timeout=90)

            # The spike starts while a transaction signed under the low base fee waits in the
            # node's pool; nothing at or under the cap can be mined, long enough for that lowest
            # nonce to be purged and for the purge to stay stuck as long again, twice.
            def spike_once_a_send_waits() -> None:
                mined, pending = _nonces(anvil)
                if pending > mined:
                    miner.base_fee = SPIKE_BASE_FEE
                    miner.before_block = None

            miner.before_block = spike_once_a_send_waits
            wait_until("the spike", lambda: miner.base_fee == SPIKE_BASE_FEE, keeper)
            miner.wait_blocks(5 * PURGE_AFTER, keeper)
            assert events(keeper, "nonce_purged"), keeper.tail()
            waiting = [e["intent"] for e in events(keeper, "purge_waits_for_fees")]
            assert any(key.startswith("purge:") for key in waiting), keeper.tail()
            assert keeper.alive(), keeper.tail()
            stuck_mined, _ = _nonces(anvil)
            # The fee falls: the lane drains and settling goes on.
            miner.base_fee = LOW_BASE_FEE
            wait_until(
                "the lane to move", lambda: _nonces(anvil)[0] > stuck_mined, keeper, timeout=60
            )
            before = confirmed(outbox)
            wait_until("more batches", lambda: confirmed(outbox) > before, keeper, timeout=90)
            assert keeper.alive(), keeper.tail()
            status, _ = keeper.terminate(within=15)
            assert status == 0, keeper.tail()
        assert not [e for e in events(keeper) if e.get("unexpected")], keeper.tail()
        # Every nonce used once: nothing pending, no gap, and every nonce the chain used was
        # one the keeper assigned (a stuck intent and the purge that replaced it share one).
        # Whatever the keeper sent last is mined once the base fee is low again.
        deadline = time.monotonic() + 30
        while _nonces(anvil)[1] > _nonces(anvil)[0] and time.monotonic() < deadline:
            rpc(anvil.url, "anvil_setNextBlockBaseFeePerGas", [hex(LOW_BASE_FEE)])
            rpc(anvil.url, "evm_mine", [])
            time.sleep(0.2)
        mined, pending = _nonces(anvil)
        assert pending == mined
        rows = outbox.fetch("SELECT nonce, state FROM intents WHERE nonce IS NOT NULL")
        assert sorted({int(r["nonce"]) for r in rows}) == list(range(mined))
        live = [int(r["nonce"]) for r in rows if r["state"] != "replan"]
        assert len(live) == len(set(live))
        assert not outbox.fetch("SELECT id, reason FROM intents WHERE state = 'failed'")
        hashes = outbox.fetch("SELECT tx_hash FROM attempts")
        assert len({bytes(h["tx_hash"]) for h in hashes}) == len(hashes)
    finally:
        keeper.stop()
        outbox.close()
