"""A payer cannot dodge usage already served by racing the keeper's report, and a closing
stream's usage goes out before its close takes effect, whatever the base fee.

Real processes: anvil with automine off (the test mines every block itself, with the base fee
it chooses), PostgreSQL and `keeper run` with one oracle signer, on StreamManager deployed with
a 600 s notice period. The payer's streams have a deposit, no rate (so nothing but usage is
ever due) and a usage price of their own.

(a), (b): while the keeper's `recordUsage` transaction waits in the node's pool, the payer
sends `setUsagePrice(id, 0)` (a) or `closeStream(id)` (b) with a higher tip, and both are
mined in one block, the payer's first. The report must still be charged at the price in
force when the usage was served: a price cut waits the notice period, and a payer's close
only requests the close (the stream is closing, and reports apply until `closeAt`).

(c): a stream whose close was requested has usage pending while the base fee is above the
keeper's `base_fee_ceiling_wei`. Ordinary usage waits for the fee to fall; the closing
stream's report is urgent and is recorded before `closeAt`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0, calldata, send_and_mine, tx
from tests.support.credentials import install_credentials
from tests.support.daemon import Keeper, Outboxes, wait_until

SIGNER = 5
NOTICE = 600
GWEI = 10**9
LOW_BASE_FEE = GWEI // 10
CEILING = GWEI  # plan.base_fee_ceiling_wei
SPIKE_BASE_FEE = 5 * GWEI  # above the ceiling, well under the fee cap
KEEPER_TIP = GWEI // 2
PAYER_TIP = 5 * GWEI  # the payer outbids the keeper for the block's first place
PRICE = 7  # every stream's own usage price, base units per unit
UNITS = 1_000
STATUS_CLOSING = 3
# Streams (opened in this order, ids from 1): one per case, and an ordinary one for (c).
PRICE_CUT, CLOSED, CLOSING, ORDINARY = 1, 2, 3, 4


class Miner:
    """Mines a block every `interval` seconds with the next base fee set to `base_fee`;
    `pause` stops it between two blocks, so the test can hold transactions in the pool."""

    def __init__(self, node: Anvil, interval: float = 0.3) -> None:
        self.node = node
        self.interval = interval
        self.base_fee = LOW_BASE_FEE
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miner", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._running.is_set():
                with self._lock:
                    if self._running.is_set():
                        self.mine_one()

    def mine_one(self) -> dict[str, Any]:
        """Mine one block now at `base_fee`; returns it with its transactions."""
        rpc(self.node.url, "anvil_setNextBlockBaseFeePerGas", [hex(self.base_fee)])
        rpc(self.node.url, "evm_mine", [])
        block = rpc(self.node.url, "eth_getBlockByNumber", ["latest", True])
        assert isinstance(block, dict)
        return block

    def pause(self) -> None:
        """Stop mining (returns once no block is being mined)."""
        self._running.clear()
        with self._lock:
            pass

    def resume(self) -> None:
        self._running.set()

    def __enter__(self) -> Miner:
        self._running.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Chain:
    """The test's window on the node: the payer's sends, the manager's views, the signer."""

    def __init__(self, node: Anvil, d: Deployment) -> None:
        self.url, self.d = node.url, d
        self.payer = d.deployer
        self.signer = dev_key(SIGNER).address

    def call(self, signature: str, *args: int) -> list[int]:
        data = calldata(signature, list(args))
        answer = rpc(self.url, "eth_call", [{"to": self.d.stream_manager, "data": data}, "latest"])
        raw = bytes.fromhex(str(answer)[2:])
        return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]

    def stream(self, sid: int) -> list[int]:
        """getStream: payer, payee, balance, rate, settledAt, usageSeq, pricePerUnit, status."""
        return self.call("getStream(uint256)", sid)

    def payer_sends(self, signature: str, *args: int) -> str:
        """The payer's transaction, tipping PAYER_TIP (mined by the next block)."""
        _, params = tx(self.payer, self.d.stream_manager, signature, *args)
        params[0]["maxPriorityFeePerGas"] = hex(PAYER_TIP)
        params[0]["maxFeePerGas"] = hex(2 * SPIKE_BASE_FEE + PAYER_TIP)
        return str(rpc(self.url, "eth_sendTransaction", params))

    def head(self) -> int:
        return int(str(rpc(self.url, "eth_blockNumber")), 16)

    def nonces(self) -> tuple[int, int]:
        """The signer's (mined, pending) nonces."""

        def count(tag: str) -> int:
            return int(str(rpc(self.url, "eth_getTransactionCount", [self.signer, tag])), 16)

        return count("latest"), count("pending")

    def keeper_waits_in_pool(self) -> bool:
        mined, pending = self.nonces()
        return pending > mined


class Usage(Outboxes):
    """A synchronous window on the keeper's database: usage rows in, their fate out."""

    def insert(self, stream_id: int, units: int, key: str) -> int:
        inbox_id: int = self._runner.run(
            self._conn.fetchval(
                "INSERT INTO usage_inbox (stream_id, units, producer_key) "
                "VALUES ($1, $2, $3) RETURNING id",
                str(stream_id),
                str(units),
                key,
            )
        )
        return inbox_id

    def row(self, inbox_id: int) -> Any:
        rows = self.fetch("SELECT * FROM keeper.usage WHERE inbox_id = $1", inbox_id)
        assert len(rows) == 1
        return rows[0]

    def status(self, inbox_id: int) -> str:
        return str(self.row(inbox_id)["status"])

    def stream_status(self, stream_id: int) -> str | None:
        """The indexed stream's status (None before the index has it)."""
        rows = self.fetch("SELECT status FROM streams WHERE stream_id = $1", stream_id)
        return str(rows[0]["status"]) if rows else None

    def recorded_event(self, stream_id: int, seq: int) -> Any:
        """The indexed UsageRecorded of (stream, seq)."""
        rows = self.fetch(
            "SELECT block_number, units, charged, price, shortfall FROM usage_recorded "
            "WHERE stream_id = $1 AND seq = $2",
            stream_id,
            seq,
        )
        assert len(rows) == 1, rows
        return rows[0]


def build_world(node: Anvil, d: Deployment) -> None:
    """The payer's four streams (no rate, a deep deposit, usage at PRICE); the signer an oracle."""
    admin, m = d.deployer, d.stream_manager
    me = bytes.fromhex(admin[2:])
    signer = bytes.fromhex(dev_key(SIGNER).address[2:])
    calls = [
        tx(admin, d.token, "mint(address,uint256)", me, 10**18),
        tx(admin, d.token, "approve(address,uint256)", bytes.fromhex(m[2:]), 2**256 - 1),
        tx(admin, m, "grantRole(bytes32,address)", ORACLE_ROLE, signer),
    ]
    for sid in (PRICE_CUT, CLOSED, CLOSING, ORDINARY):
        payee = (0x7200 + sid).to_bytes(20, "big")
        calls.append(tx(admin, m, "openStream(address,uint256,uint256)", payee, 0, 10**12))
        calls.append(tx(admin, m, "setUsagePrice(uint256,uint256)", sid, PRICE))
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
poll_interval = 0.2

[tx]
confirmations = 1
poll_interval = 0.2
tip_wei = {KEEPER_TIP}
max_priority_fee_wei = {KEEPER_TIP}
max_fee_wei = {50 * GWEI}
bump_after_blocks = 20

[plan]
interval = 0.5
settle_min_amount = 1000000000000000000
base_fee_ceiling_wei = {CEILING}
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
def world(
    anvil_factory: Callable[..., Anvil],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> Iterator[tuple[Chain, Usage, Keeper, Miner]]:
    node = anvil_factory()
    d = deploy_all(node.url, DEV_KEY0, notice_period=NOTICE)
    build_world(node, d)
    install_credentials(tmp_path, monkeypatch, [SIGNER])
    rpc(node.url, "evm_setAutomine", [False])
    keeper = Keeper(write_config(tmp_path, node, d, database_url), tmp_path / "keeper.log")
    usage = Usage(database_url)
    try:
        with Miner(node) as miner:
            keeper.start()
            wait_until("keeper_started", keeper.started_logged, keeper, timeout=60)
            # Usage rows go in once the index has the streams they name.
            wait_until(
                "the streams indexed", lambda: usage.stream_status(ORDINARY) == "open", keeper
            )
            yield Chain(node, d), usage, keeper, miner
            assert keeper.alive(), keeper.tail()
            status, _ = keeper.terminate(within=15)
            assert status == 0, keeper.tail()
    finally:
        keeper.stop()
        usage.close()


def front_run(
    chain: Chain,
    usage: Usage,
    keeper: Keeper,
    miner: Miner,
    sid: int,
    payer_call: str,
    *args: int,
) -> tuple[int, dict[str, Any], str]:
    """Hold the keeper's report of UNITS on `sid` in the pool, have the payer send
    `payer_call(sid, *args)` with a higher tip, and mine one block holding both, the payer's
    first.
    Returns the usage row's inbox id, the block, and the payer's transaction hash."""
    miner.pause()
    inbox_id = usage.insert(sid, UNITS, f"served-{sid}")
    wait_until("the keeper's report in the pool", chain.keeper_waits_in_pool, keeper, timeout=60)
    payer_tx = chain.payer_sends(payer_call, sid, *args)
    block = miner.mine_one()
    senders = [str(t["from"]).lower() for t in block["transactions"]]
    assert senders == [chain.payer.lower(), chain.signer.lower()], block["transactions"]
    assert block["transactions"][0]["hash"] == payer_tx
    for t in block["transactions"]:
        receipt = rpc(chain.url, "eth_getTransactionReceipt", [t["hash"]])
        assert isinstance(receipt, dict) and receipt["status"] == "0x1", receipt
    miner.resume()
    return inbox_id, block, payer_tx


def test_a_price_cut_sent_ahead_of_the_report_does_not_apply_to_it(
    world: tuple[Chain, Usage, Keeper, Miner],
) -> None:
    chain, usage, keeper, miner = world
    inbox_id, block, _ = front_run(
        chain, usage, keeper, miner, PRICE_CUT, "setUsagePrice(uint256,uint256)", 0
    )
    # The cut waits the notice period: the price in force is still the old one.
    assert chain.call("streamPrice(uint256)", PRICE_CUT) == [
        PRICE,
        0,
        int(block["timestamp"], 16) + NOTICE,
    ]
    wait_until("the report reconciled", lambda: usage.status(inbox_id) == "recorded", keeper)
    row = usage.row(inbox_id)
    event = usage.recorded_event(PRICE_CUT, 1)
    assert int(event["block_number"]) == int(block["number"], 16)
    assert int(event["price"]) == PRICE
    assert int(row["charged"]) == int(event["charged"]) == UNITS * PRICE
    assert int(event["shortfall"]) == 0

    # Once the notice period is over, usage served from then on is charged the new price.
    rpc(chain.url, "evm_increaseTime", [NOTICE])
    later = usage.insert(PRICE_CUT, UNITS, "served-after-the-notice")
    wait_until("the later report", lambda: usage.status(later) == "recorded", keeper)
    assert int(usage.recorded_event(PRICE_CUT, 2)["price"]) == 0
    assert int(usage.row(later)["charged"]) == 0


def test_a_close_sent_ahead_of_the_report_leaves_it_applied(
    world: tuple[Chain, Usage, Keeper, Miner],
) -> None:
    chain, usage, keeper, miner = world
    inbox_id, block, _ = front_run(chain, usage, keeper, miner, CLOSED, "closeStream(uint256)")
    # The payer's close is a request: the stream is closing, its close a notice period away.
    assert chain.stream(CLOSED)[7] == STATUS_CLOSING
    assert chain.call("closeAtOf(uint256)", CLOSED) == [int(block["timestamp"], 16) + NOTICE]
    # ...and the report mined after it in the same block was applied, at the price served.
    assert chain.stream(CLOSED)[5] == 1  # usageSeq
    wait_until("the report reconciled", lambda: usage.status(inbox_id) == "recorded", keeper)
    event = usage.recorded_event(CLOSED, 1)
    assert int(event["block_number"]) == int(block["number"], 16)
    assert int(event["price"]) == PRICE
    assert int(usage.row(inbox_id)["charged"]) == int(event["charged"]) == UNITS * PRICE
    wait_until(
        "the index to show the stream closing",
        lambda: usage.stream_status(CLOSED) == "closing",
        keeper,
    )


def test_a_closing_streams_usage_goes_out_above_the_base_fee_ceiling(
    world: tuple[Chain, Usage, Keeper, Miner],
) -> None:
    chain, usage, keeper, miner = world
    requested = chain.payer_sends("closeStream(uint256)", CLOSING)
    wait_until(
        "the close request mined",
        lambda: rpc(chain.url, "eth_getTransactionReceipt", [requested]) is not None,
        keeper,
    )
    (close_at,) = chain.call("closeAtOf(uint256)", CLOSING)
    assert close_at > 0
    wait_until(
        "the index to show the stream closing",
        lambda: usage.stream_status(CLOSING) == "closing",
        keeper,
    )
    miner.base_fee = SPIKE_BASE_FEE
    # Once blocks above the ceiling are indexed, usage arrives for the closing stream and for
    # an ordinary one.
    spiked = chain.head() + 2
    wait_until(
        "blocks above the ceiling indexed",
        lambda: (
            usage.fetch("SELECT indexed_block FROM ingest_cursor")[0]["indexed_block"] >= spiked
        ),
        keeper,
    )
    ordinary = usage.insert(ORDINARY, UNITS, "ordinary")
    closing = usage.insert(CLOSING, UNITS, "closing")
    wait_until("the closing stream's report", lambda: usage.status(closing) == "recorded", keeper)
    event = usage.recorded_event(CLOSING, 1)
    header = rpc(chain.url, "eth_getBlockByNumber", [hex(int(event["block_number"])), False])
    assert isinstance(header, dict)
    assert int(header["baseFeePerGas"], 16) > CEILING
    assert int(header["timestamp"], 16) < close_at
    assert int(event["price"]) == PRICE
    assert int(usage.row(closing)["charged"]) == UNITS * PRICE
    # The ordinary report is held by the ceiling meanwhile (it is not urgent)...
    assert usage.status(ordinary) == "pending", usage.row(ordinary)
    assert chain.stream(ORDINARY)[5] == 0
    # ...and goes out once the base fee falls.
    miner.base_fee = LOW_BASE_FEE
    wait_until("the ordinary report", lambda: usage.status(ordinary) == "recorded", keeper)
