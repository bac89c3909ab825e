"""The keeper's whole job, end to end: `keeper run` as a subprocess against a development node
with 1 s blocks and a real PostgreSQL, with two signers, while the chain reorganises and the
daemon is killed with SIGKILL twice. It runs once on anvil and once on Hardhat's node (EDR),
through `tests.support.dev_nodes.DevNode`. The keeper reaches the node through two providers
(`tests.support.rpc_proxy.RpcProxy`), and all the while one of them misbehaves, in every way
of `tests.support.chaos.MODES` in turn (429 and 503 with Retry-After, HTML, truncated and
invalid bodies with 200 and 502, resets before and after forwarding, latency, a lagging head,
the newest blocks' logs dropped, another chain id): the one the daemon reads from when each
mode starts, so every fault meets its reads, sends and probes.

The world (set up with automine, before the daemon starts):
- The contracts are deployed without a notice period: the payer's closes below are immediate.
- Three payees publish price lists of three endpoints each (`chat`, `embed`, `search`), nine
  different prices in all.
- 1,000 streams from one payer: 600 "fast" (1,000-5,000 per second, deep deposits), 300
  "slow" (1-10 per second: due by the maximum interval only) and 100 "depleting" (runways of
  20-119 s: some run out while the test runs, the rest at the time jump). Streams 1-300 go to
  40 payees and have usage prices of their own; 301-500 are on the price lists (their usage
  rows name an endpoint); 501-1,000 go to the 40 payees; 501-510 are closed.
- 200 escrows: 100 with 20-39 s timeouts (a third of them released by the payer at once) and
  100 with the 7-day default.
- 10,050 usage rows COPYed into the inbox in four waves while the daemon runs: 9,500 good ones
  for streams 1-500 and 550 bad ones (malformed, non-positive and out-of-range units, unknown
  and closed streams, reused producer keys, endpoints missing or not on the payee's list).
  Streams 491-500 are closed during the run, so some of their accepted reports can no longer
  be recorded.

While the daemon runs: three reorgs (2-3 blocks, taking the keeper's mined transactions with
them: `anvil_reorg` on anvil; on Hardhat, `evm_revert` to a snapshot taken that many blocks
earlier and new blocks, which also drops the keeper's transactions still pending), two SIGKILLs
each followed by a restart, and a 3,600 s time jump that makes every stream due and every
short escrow expire.

At the end, with the daemon stopped and the index caught up:
- every stream that was due at the snapshot block was settled after it;
- the index equals the contracts (every stream, escrow, payee ledger entry and vault balance)
  and `keeper.payee_ledger` shows each payee's `credited` exactly;
- each stream's usage sequence on chain equals its recorded rows, each usage row is recorded
  or rejected, every bad row with the expected reason, and no report was charged twice;
- every report was charged units x the price of the endpoint its row named (on the payee's
  list) or of the stream's own price, as the chain's `UsageRecorded` events say;
- every expired escrow that was not released was refunded, and no unexpired one;
- each signer's nonces are 0..n-1 on chain, the outbox assigned exactly those, and nothing is
  left in the mempool;
- every mode of the chaos met the keeper, which never exited (three starts: the two kills);
- `keeper verify` finds the index equal to the contracts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.dev.anvil import dev_key, rpc
from keeper.ops.deploy import deploy_all
from keeper.urls import redact_url
from tests.support.chain import DEV_KEY0, batch, send_in_order, tx
from tests.support.chaos import MODES, Chaos, selected_from_status
from tests.support.daemon import Keeper, Outboxes
from tests.support.dev_nodes import DevNode
from tests.support.ingest import (
    Target,
    assert_states_equal,
    contract_state,
    index_until_caught_up,
    open_indexer,
    projection_state,
)
from tests.support.rpc_proxy import RpcProxy
from tests.support.world import events, get

SIGNER_KEYS = (5, 6)
PAYEES = [(0x5000 + k).to_bytes(20, "big") for k in range(40)]
# Payees that publish price lists: dev accounts (they send their own addEndpoint calls).
LIST_PAYEE_KEYS = (7, 8, 9)
ENDPOINT_NAMES = ("chat", "embed", "search")
# Per list payee, the price of each of ENDPOINT_NAMES (ids 1, 2, 3 in this order).
ENDPOINT_PRICES = ((3, 11, 29), (5, 17, 41), (7, 19, 43))
N_STREAMS = 1_000
FAST, SLOW = range(1, 601), range(601, 901)
DEPLETING = range(901, 1_001)
PRICED = range(1, 501)
OWN_PRICED, LISTED = range(1, 301), range(301, 501)
CLOSED_AT_START = range(501, 511)
CLOSED_DURING = range(491, 501)
N_ESCROWS = 200
MIN_AMOUNT = 1_000_000
MAX_INTERVAL = 3_600
HORIZON = 30
JUMP = 3_600
GOOD_ROWS_PER_STREAM = 19  # x 500 priced streams = 9,500
BAD_REASONS = {
    "malformed_units": 100,
    "units_not_positive": 100,
    "duplicate_producer_key": 100,
    "unknown_stream": 100,
    "units_out_of_range": 50,
    "stream_closed": 50,
    "unknown_endpoint": 50,
}


LIST_PAYEES = [bytes.fromhex(dev_key(k).address[2:]) for k in LIST_PAYEE_KEYS]


def list_payee(sid: int) -> bytes:
    """The price-list payee of a stream in LISTED."""
    return LIST_PAYEES[sid % 3]


def endpoint_price(payee: bytes, endpoint: int) -> int:
    """The listed price of `payee`'s endpoint id `endpoint` (1-based)."""
    return ENDPOINT_PRICES[LIST_PAYEES.index(payee)][endpoint - 1]


def own_price(sid: int) -> int:
    return 1 + sid % 50


# --------------------------------------------------------------------------- JSON-RPC


class ChainView:
    """What `contract_state` needs of a chain: the contracts, blocks and batched calls."""

    def __init__(self, node: DevNode, deployment: Deployment) -> None:
        self.url = node.url
        self.manager = type("M", (), {"address": deployment.stream_manager})()
        self.vault = type("V", (), {"address": deployment.escrow_vault})()
        self.accounts = {
            *PAYEES,
            *LIST_PAYEES,
            bytes.fromhex(deployment.deployer[2:]),
        }

    def block(self, tag: int | str) -> dict[str, Any]:
        number = hex(tag) if isinstance(tag, int) else tag
        header = rpc(self.url, "eth_getBlockByNumber", [number, False])
        assert isinstance(header, dict)
        return header

    def rpc_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        return batch(self.url, [(m, list(p)) for m, p in calls])

    def state(self, block: int | str = "latest") -> Any:
        return contract_state(cast(Any, self), block)

    def nonce(self, address: str, tag: str) -> int:
        return int(str(rpc(self.url, "eth_getTransactionCount", [address, tag])), 16)


# --------------------------------------------------------------------------- the world


def build_world(node: DevNode, d: Deployment) -> None:
    """Price lists, streams, prices, closures, escrows and roles (see the module text)."""
    admin = d.deployer
    m, v, t = d.stream_manager, d.escrow_vault, d.token
    rng = random.Random(7)
    me = bytes.fromhex(admin[2:])
    # Automine off: blocks packed full, so chain time moves on a few seconds, not a second
    # per set-up transaction (the short escrows must still be open when the daemon starts);
    # Hardhat also refuses a sender's queued nonces while automining.
    node.set_automine(False)
    # The price lists first, mined before any stream is opened on them.
    listed: list[str] = []
    for k, prices in zip(LIST_PAYEE_KEYS, ENDPOINT_PRICES, strict=True):
        publisher = dev_key(k).address
        adds = [
            tx(publisher, m, "addEndpoint(bytes32,uint256)", name.encode().ljust(32, b"\0"), price)
            for name, price in zip(ENDPOINT_NAMES, prices, strict=True)
        ]
        listed += send_in_order(node.url, publisher, adds)
    while any(rpc(node.url, "eth_getTransactionReceipt", [h]) is None for h in listed):
        node.mine()
    calls = [
        tx(admin, t, "mint(address,uint256)", me, 10**18),
        tx(admin, t, "approve(address,uint256)", bytes.fromhex(m[2:]), 2**256 - 1),
        tx(admin, t, "approve(address,uint256)", bytes.fromhex(v[2:]), 2**256 - 1),
    ]
    for s in SIGNER_KEYS:
        signer = bytes.fromhex(dev_key(s).address[2:])
        calls.append(tx(admin, m, "grantRole(bytes32,address)", ORACLE_ROLE, signer))
    for sid in range(1, N_STREAMS + 1):
        if sid in FAST:
            rate, deposit = rng.randint(1_000, 5_000), 10**11
        elif sid in SLOW:
            rate, deposit = rng.randint(1, 10), 10**9
        else:
            rate = 10_000
            deposit = rate * (20 + sid % 100)
        if sid in LISTED:
            opener = "openStreamOnPriceList(address,uint256,uint256)"
            calls.append(tx(admin, m, opener, list_payee(sid), rate, deposit))
        else:
            payee = PAYEES[sid % len(PAYEES)]
            calls.append(tx(admin, m, "openStream(address,uint256,uint256)", payee, rate, deposit))
    calls += [
        tx(admin, m, "setUsagePrice(uint256,uint256)", sid, own_price(sid)) for sid in OWN_PRICED
    ]
    calls += [tx(admin, m, "closeStream(uint256)", sid) for sid in CLOSED_AT_START]
    calls.append(tx(admin, v, "deposit(uint256)", 10**12))
    for eid in range(1, N_ESCROWS + 1):
        timeout = 20 + eid % 20 if eid <= 100 else 0  # 0: the 7-day default
        calls.append(
            tx(admin, v, "createEscrow(address,uint256,uint256)", PAYEES[eid % 40], eid, timeout)
        )
    calls += [tx(admin, v, "releaseEscrow(uint256)", eid) for eid in range(3, 101, 3)]
    hashes = send_in_order(node.url, admin, calls)
    # All mined once the last nonce is (Hardhat has no txpool_status, and its "pending" nonce
    # counts only what fits in the next block).
    while rpc(node.url, "eth_getTransactionReceipt", [hashes[-1]]) is None:
        node.mine()
    receipts = batch(node.url, [("eth_getTransactionReceipt", [h]) for h in hashes])
    failed = [i for i, r in enumerate(receipts) if r is None or r["status"] != "0x1"]
    assert not failed, f"set-up transactions failed: {failed[:5]}"


def usage_waves() -> tuple[list[list[tuple[str | None, ...]]], dict[str, str]]:
    """Four waves of inbox rows (stream_id, units, producer_key, label, endpoint) and the
    reason each bad row must be rejected with, by producer key (a duplicate's key is its
    original's, so duplicates are told apart by their label). Rows of streams on a price list
    name one of its endpoints (the label says which, too); the others name none."""
    rng = random.Random(11)
    good: list[tuple[str | None, ...]] = []
    for n in range(GOOD_ROWS_PER_STREAM):
        for sid in PRICED:
            units = str(rng.randint(1, 1_000))
            endpoint = rng.choice(ENDPOINT_NAMES) if sid in LISTED else None
            label = endpoint or rng.choice(["chat", "embed"])
            good.append((str(sid), units, f"req-{sid}-{n}", label, endpoint))
    bad: list[tuple[str | None, ...]] = []
    expected: dict[str, str] = {}

    def add(reason: str, count: int, row: Callable[[int], tuple[str | None, ...]]) -> None:
        for i in range(count):
            r = row(i)
            bad.append(r)
            expected[f"{r[2]}|{r[3]}"] = reason

    add("malformed_units", 100, lambda i: (str(1 + i), f"{i}x", f"bad-units-{i}", "bad", None))
    add("units_not_positive", 100, lambda i: (str(1 + i), str(-i), f"bad-zero-{i}", "bad", None))
    add("duplicate_producer_key", 100, lambda i: (str(1 + i), "5", f"req-{1 + i}-0", "dup", None))
    add("unknown_stream", 100, lambda i: (str(5_000 + i), "5", f"bad-stream-{i}", "bad", None))
    add(
        "units_out_of_range",
        50,
        lambda i: (str(1 + i), str(2**64 + i), f"bad-big-{i}", "bad", None),
    )
    add("stream_closed", 50, lambda i: (str(501 + i % 10), "5", f"bad-closed-{i}", "bad", None))
    # A stream on a price list without an endpoint, or with one its payee never listed; an
    # own-price stream naming an endpoint its payee (which has no list) never listed.
    add(
        "unknown_endpoint",
        50,
        lambda i: (
            str(301 + i if i < 40 else 1 + i),
            "5",
            f"bad-endpoint-{i}",
            "bad",
            None if i < 20 else "nope",
        ),
    )
    assert Counter(expected.values()) == Counter(BAD_REASONS)
    # Bad rows go in the later waves, after the originals of the reused keys.
    rows = good[:3_000], good[3_000:6_000], good[6_000:] + bad[:250], bad[250:]
    return [list(w) for w in rows], expected


# --------------------------------------------------------------------------- the database


class Db(Outboxes):
    """A synchronous window on the keeper's database (`Outboxes`'s connection and fetch)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url

    def value(self, query: str, *args: Any) -> Any:
        return self._runner.run(self._conn.fetchval(query, *args))

    def copy_usage(self, rows: list[tuple[str | None, ...]]) -> None:
        self._runner.run(
            self._conn.copy_records_to_table(
                "usage_inbox",
                records=rows,
                columns=["stream_id", "units", "producer_key", "label", "endpoint"],
            )
        )

    def catch_up(self, node: DevNode, d: Deployment) -> Any:
        """Index to the node's head in this process; return the projections' state."""
        target = Target(
            chain_id=d.chain_id,
            addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
            start_block=d.deployment_block,
        )

        async def run() -> Any:
            async with open_indexer(node.url, self.url, target) as indexer:
                await index_until_caught_up(indexer)
            return await projection_state(self._conn, d.chain_id)

        return self._runner.run(run())


def write_config(path: Path, rpc_urls: Sequence[str], d: Deployment, database_url: str) -> Path:
    deployment_file = path / "deployment.json"
    d.write(deployment_file)
    creds = path / "creds"
    creds.mkdir()
    signers = ""
    for index in SIGNER_KEYS:
        (creds / f"signer-{index}").write_text(dev_key(index).reveal_hex() + "\n")
        signers += f'\n[[signers]]\ncredential = "signer-{index}"\n'
    config = path / "keeper.toml"
    config.write_text(
        f"""
[chain]
rpc_urls = {json.dumps(list(rpc_urls))}
deployment_file = "{deployment_file}"
rpc_timeout = 5.0
rpc_probe_interval = 1.0

[database]
url = "{database_url}"

[ingest]
poll_interval = 0.25

[tx]
confirmations = 2
bump_after_blocks = 3
poll_interval = 0.25

[plan]
interval = 1.0
settle_min_amount = {MIN_AMOUNT}
settle_max_interval = {MAX_INTERVAL}
settle_horizon = {HORIZON}
backoff_seconds = 20
unknown_stream_grace = 3
{signers}
[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


# --------------------------------------------------------------------------- the run


def assert_charged_at_endpoint_prices(db: Db) -> None:
    """Every recorded report (the chain's `UsageRecorded`, as indexed) was charged units x the
    price of the endpoint its inbox row named on its payee's list, or of the stream's own
    price; the endpoints and their prices are the chain's `EndpointAdded` events."""
    listed = {
        (bytes(r["payee"]), int(r["endpoint"])): (
            bytes(r["name"]).rstrip(b"\0").decode(),
            int(r["price"]),
        )
        for r in db.fetch("SELECT payee, endpoint, name, price FROM endpoint_added")
    }
    assert len(listed) == 9
    for (payee, endpoint), (name, price) in listed.items():
        assert (name, price) == (ENDPOINT_NAMES[endpoint - 1], endpoint_price(payee, endpoint))
    assert len({price for _, price in listed.values()}) == 9
    rows = db.fetch(
        "SELECT e.stream_id, e.endpoint, e.units, e.charged, e.shortfall, e.price, "
        "i.endpoint AS named, i.units AS row_units "
        "FROM usage_recorded e "
        "JOIN usage_reports r ON r.chain_id = e.chain_id AND r.stream_id = e.stream_id "
        "AND r.seq = e.seq AND r.state = 'recorded' "
        "JOIN usage_inbox i ON i.id = r.inbox_id"
    )
    charged_at: Counter[tuple[bytes, int]] = Counter()
    for r in rows:
        sid, endpoint, units = int(r["stream_id"]), int(r["endpoint"]), int(r["units"])
        assert units == int(r["row_units"]), sid
        assert int(r["shortfall"]) == 0, sid  # deep deposits: every charge in full
        if sid in LISTED:
            payee = list_payee(sid)
            assert listed[(payee, endpoint)][0] == r["named"], sid
            price = endpoint_price(payee, endpoint)
            charged_at[(payee, endpoint)] += 1
        else:
            assert (endpoint, r["named"]) == (0, None), sid
            price = own_price(sid)
        assert int(r["price"]) == price, sid
        assert int(r["charged"]) == units * price, sid
    # Billing happened on every endpoint of every list, at its own price.
    assert set(charged_at) == set(listed)
    assert len(rows) == db.value("SELECT count(*) FROM usage_recorded")
    # The operator's view of it, per stream and endpoint, says the same.
    totals = db.fetch(
        "SELECT stream_id, endpoint, endpoint_name, sum(reports) AS reports, "
        "sum(units) AS units, sum(charged) AS charged "
        "FROM keeper.usage_by_endpoint_daily GROUP BY stream_id, endpoint, endpoint_name"
    )
    assert sum(int(t["reports"]) for t in totals) == len(rows)
    for t in totals:
        sid, endpoint = int(t["stream_id"]), int(t["endpoint"])
        if sid in LISTED:
            assert t["endpoint_name"] == ENDPOINT_NAMES[endpoint - 1], sid
            price = endpoint_price(list_payee(sid), endpoint)
        else:
            assert endpoint == 0, sid
            price = own_price(sid)
        assert int(t["charged"]) == int(t["units"]) * price, sid


def _health(keeper: Keeper) -> str | None:
    """The running daemon's health port URL (None before it listens)."""
    listening = events(keeper, "health_listening")
    return str(listening[0]["url"]) if listening else None


def due_streams(state: Any) -> set[int]:
    """The streams due at `state`'s block by the configured rule."""
    now = state.timestamp
    due = set()
    for sid, s in state.streams.items():
        if s.status != "open" or s.rate == 0:
            continue
        accrued = min(s.balance, s.rate * max(0, now - s.settled_at))
        if accrued == 0:
            continue
        runway = max(0, s.settled_at + -(-s.balance // s.rate) - now)
        if runway <= HORIZON or accrued >= MIN_AMOUNT or now - s.settled_at >= MAX_INTERVAL:
            due.add(sid)
    return due


def test_the_keeper_does_its_whole_job_through_reorgs_and_kills(
    node_factory: Callable[[], DevNode],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = node_factory()
    # No notice period: the payer's closes (at the start and during the run) are immediate,
    # and rows of those streams are rejected as closed (test_front_running covers notice).
    d = deploy_all(node.url, DEV_KEY0, notice_period=0)
    build_world(node, d)
    chain = ChainView(node, d)
    signers = [dev_key(i).address for i in SIGNER_KEYS]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    # Two providers in front of the node; one of them misbehaves at any moment, in every way
    # in turn (tests.support.chaos), while the daemon works.
    proxies = [RpcProxy(node.url).start(), RpcProxy(node.url).start()]
    labels = [redact_url(p.url) for p in proxies]
    config = write_config(tmp_path, [p.url for p in proxies], d, database_url)
    keeper = Keeper(config, tmp_path / "keeper.log")
    chaos = Chaos(proxies, lambda: selected_from_status(lambda: _health(keeper), labels))
    db = Db(database_url)
    waves, bad = usage_waves()
    node.set_interval_mining(1)
    try:
        keeper.start()
        chaos.start()

        def run_for(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                assert keeper.alive(), keeper.tail()
                time.sleep(0.2)

        def restart() -> None:
            keeper.kill()
            keeper.start()

        def reorg(depth: int) -> None:
            """Let `depth` blocks be mined (with the keeper's transactions) and replace them."""
            fork = node.fork_point()
            deadline = time.monotonic() + 30
            while node.head() < fork.block + depth:
                assert time.monotonic() < deadline, "the node stopped mining"
                assert keeper.alive(), keeper.tail()
                time.sleep(0.1)
            assert node.reorg_to(fork) >= depth

        run_for(8)
        db.copy_usage(waves[0])
        run_for(2)
        reorg(3)
        db.copy_usage(waves[1])
        run_for(4)
        restart()
        run_for(4)
        reorg(2)
        # After the reorg: on Hardhat, it would drop these pending transactions too.
        batch(
            node.url,
            [tx(d.deployer, d.stream_manager, "closeStream(uint256)", s) for s in CLOSED_DURING],
        )
        db.copy_usage(waves[2])
        run_for(4)
        node.increase_time(JUMP)
        run_for(1.5)
        # The snapshot: what is due now must be settled after this block.
        snapshot = chain.state("latest")
        due = due_streams(snapshot)
        assert len(due) > 800, len(due)  # the jump made (nearly) every open stream due
        run_for(3.5)
        restart()
        db.copy_usage(waves[3])
        run_for(4)
        reorg(2)
        run_for(3)

        def done() -> tuple[bool, str]:
            now = chain.state("latest")
            unsettled = [
                s
                for s in due
                if now.streams[s].status == "open"
                and now.streams[s].settled_at < snapshot.timestamp
            ]
            open_usage = db.value(
                "SELECT count(*) FROM keeper.usage WHERE status NOT IN ('recorded', 'rejected')"
            )
            expired = [
                e
                for e, x in now.escrows.items()
                if x.status == "open" and x.expires_at <= now.timestamp
            ]
            return (
                not unsettled and open_usage == 0 and not expired,
                f"unsettled {len(unsettled)}, usage open {open_usage}, expired {len(expired)}",
            )

        deadline = time.monotonic() + 240
        ok, what = done()
        while not ok:
            assert time.monotonic() < deadline, f"not done: {what}\n{keeper.tail()}"
            assert keeper.alive(), keeper.tail()
            time.sleep(2)
            ok, what = done()

        # /status has the daemon's line for each provider.
        base = _health(keeper)
        assert base is not None
        shown = json.loads(get(f"{base}/status")[1])["process"]["providers"]
        assert [p["provider"] for p in shown] == labels
        assert sum(p["selected"] for p in shown) == 1
        chaos.stop()
        status, _ = keeper.terminate(within=30)
        assert status == 0, keeper.tail()
        logs_rejected = len(events(keeper, "logs_rejected"))
        node.set_interval_mining(0)
        node.mine()
        indexed = db.catch_up(node, d)
        final = chain.state(indexed.block)

        # The index equals the contracts, and the operator view shows each ledger exactly.
        assert_states_equal(indexed, final)
        ledger = {
            bytes.fromhex(r["account"][2:]): int(r["credited"])
            for r in db.fetch("SELECT account, credited FROM keeper.payee_ledger")
        }
        assert {a: c for a, c in ledger.items() if c} == {
            a: c for a, c in final.credited.items() if c
        }
        assert all(final.credited.get(p, 0) > 0 for p in PAYEES)

        # Usage: every row decided; the contract's sequence equals the recorded rows.
        usage = db.fetch("SELECT stream_id, producer_key, label, status, reason FROM keeper.usage")
        assert len(usage) == sum(len(w) for w in waves) == 9_500 + sum(BAD_REASONS.values())
        assert Counter(r["status"] for r in usage).keys() <= {"recorded", "rejected"}
        recorded = Counter(int(r["stream_id"]) for r in usage if r["status"] == "recorded")
        for sid in PRICED:
            assert final.streams[sid].usage_seq == recorded[sid], sid
        rejected = {
            f"{r['producer_key']}|{r['label']}": r["reason"]
            for r in usage
            if r["status"] == "rejected"
        }
        for key, reason in bad.items():
            assert rejected.get(key) == reason, key
        # Good rows are rejected only where their stream was closed during the run.
        good_rejected = {k: r for k, r in rejected.items() if k not in bad}
        assert set(good_rejected.values()) <= {"stream_closed"}
        assert all(int(k.split("-")[1]) in CLOSED_DURING for k in good_rejected)
        assert all(recorded[s] == GOOD_ROWS_PER_STREAM for s in range(1, 491))
        twice = db.value(
            "SELECT count(*) FROM (SELECT 1 FROM usage_recorded GROUP BY stream_id, seq "
            "HAVING count(*) > 1) x"
        )
        assert twice == 0
        charged = db.value("SELECT sum(charged) FROM keeper.usage WHERE status = 'recorded'")
        assert charged == db.value("SELECT sum(charged) FROM usage_recorded")
        assert_charged_at_endpoint_prices(db)

        # Escrows: the expired ones not released were refunded, no unexpired one was.
        refunded_at = {
            int(r["escrow_id"]): int(r["block_time"])
            for r in db.fetch("SELECT escrow_id, block_time FROM escrow_refunded")
        }
        for eid, e in final.escrows.items():
            released = eid <= 100 and eid % 3 == 0
            if eid <= 100 and not released:
                assert e.status == "refunded", eid
                assert snapshot.escrows[eid].expires_at <= refunded_at[eid]
            else:
                assert e.status == ("released" if released else "open"), eid
        assert len(refunded_at) == 100 - len(range(3, 101, 3))

        # Nonces: 0..n-1 on chain per signer, exactly the outbox's, nothing pending.
        for address in signers:
            mined = chain.nonce(address, "latest")
            assert chain.nonce(address, "pending") == mined
            assigned = db.fetch(
                "SELECT nonce FROM intents WHERE signer = $1 AND state <> 'replan' ORDER BY nonce",
                bytes.fromhex(address[2:]),
            )
            assert [int(r["nonce"]) for r in assigned] == list(range(mined)), address
            assert mined > 0
        failed = db.fetch("SELECT kind, reason FROM intents WHERE state = 'failed'")
        assert not failed, failed
        assert keeper.starts == 3

        # `keeper verify` (through both providers) finds the index equal to the contracts.
        verified = subprocess.run(
            [sys.executable, "-m", "keeper", "verify", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "the database matches the contracts" in verified.stdout

        # Every bad way of a provider met the keeper at least once, and it never exited.
        assert set(chaos.applied) == set(MODES), chaos.applied
        assert {m for m, n in chaos.effects.items() if n} == set(MODES), (
            chaos.effects,
            chaos.targets,
            [p.dropped_logs for p in proxies],
            logs_rejected,
        )
    finally:
        chaos.stop()
        keeper.stop()
        db.close()
        for proxy in proxies:
            proxy.stop()
