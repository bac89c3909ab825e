"""`keeper run` sending transactions, killed with SIGKILL between the transaction manager's steps.

Real processes throughout: anvil (automine off: the test mines every block), PostgreSQL, and
the `keeper` console script with two signers (systemd credentials) reaching the node through
`RpcProxy`. For each kill point a batch of settle intents is planned into the outbox; the proxy
holds the daemon's request at one step of the pipeline and the test kills the process there:

    assign nonce ─► sign + store ─► broadcast ─► record ─► receipt ─► mined ─► confirmed ─► final

- `assigning`: inside the assignment transaction of the 2nd intent, under its lane's lock
  (its signer's `pending` nonce read is held; the last RPC call before the writes and the
  commit): nothing of that assignment may survive, nor the lock stop the restarted keeper.
  A kill just after the commit is the next point;
- `signed`: the 3rd attempt is stored, its `eth_sendRawTransaction` never reaches the node;
- `sent`: the node has the 3rd transaction, the daemon never hears back (stored as unsent);
- `recorded`: every send recorded, the first receipt request held before the node sees it;
- `receipt`: the receipts (the transactions are mined) fetched, the reply held back;
- `mined`: every intent recorded as mined, none confirmed yet;
- `confirmed`: every intent confirmed, none final yet;
- `bump-signed`, `bump-sent`: the node lost a transaction (dropped from its mempool), and after
  `bump_after_blocks` the keeper's replacement at the same nonce is stored but not sent, or
  sent but not recorded;
- `purge-signed`, `purge-sent`: the node lost a transaction and every replacement fails to
  reach it, until after `purge_after_blocks` the keeper gives the nonce to a zero-value
  self-send (the intent goes to `replan`); that purge is stored but not sent, or sent but not
  recorded. The test then plans the call again, as the planners would.

`…-chain-moved` variants mine what the mempool holds while the keeper is down, so the restarted
keeper's resends meet "nonce too low" rather than "already known". Right after each kill the
test checks that it landed where it was meant to (intent and attempt states, what the node
has). Then the keeper is started again without a hold and blocks are mined until every intent
is final; that run is also the one the next kill point stops (a process start costs seconds,
so the points of a group share one chain and one database, one batch of intents each; the
groups, `GROUPS` below, are the test's parameters).

At the end: every call is on-chain exactly once (the signers' mined transactions are read block
by block), each live intent's (all but the purged) is the transaction the outbox recorded, and
each purge is one self-send; each signer's nonces on-chain are 0..n-1 where n is the number of
nonces the outbox assigned to it (no gap, none reused, nothing left in the mempool); no attempt
is left unsent; no pass failed.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes
from web3 import Web3

from keeper.chain.deployment import Deployment
from keeper.db.outbox import IntentRequest
from keeper.dev.anvil import Anvil, dev_key, rpc
from keeper.ops.deploy import contract, deploy_all
from tests.support.daemon import Keeper, Outboxes
from tests.support.rpc_proxy import Hold, RpcProxy

SIGNER_KEYS = (5, 6)  # anvil dev accounts, funded
BATCH = 6  # intents planned for each kill point
CONFIRMATIONS = 2
FINALITY = 64  # anvil's `finalized` tag is head - 64
MINE_EVERY = 0.2  # seconds between blocks while the test waits for the keeper
BUMP_AFTER = 3  # blocks
PURGE_AFTER = 10  # blocks; a bumped transaction is mined well before


# --------------------------------------------------------------------------- the outbox


# --------------------------------------------------------------------------- the chain


@dataclass
class Chain:
    """anvil with the contracts deployed; the test mines every block."""

    node: Anvil
    deployment: Deployment
    signers: list[str] = field(default_factory=list)  # checksummed addresses
    _last_block_at: float = 0.0

    @property
    def url(self) -> str:
        return self.node.url

    def mine(self, blocks: int = 1) -> None:
        rpc(self.url, "anvil_mine", [hex(blocks)])
        self._last_block_at = time.monotonic()

    def drop(self, tx_hash: bytes) -> None:
        """Remove a transaction from the node's mempool (as a node that lost it would)."""
        rpc(self.url, "anvil_dropTransaction", ["0x" + tx_hash.hex()])

    def keep_mining(self, last: int | None = None) -> None:
        """Mine a block if the last one is `MINE_EVERY` seconds old (a steady block time), and
        the head is below `last` if given."""
        if time.monotonic() - self._last_block_at < MINE_EVERY:
            return
        if last is None or self.head() < last:
            self.mine()

    def mining_up_to(self, last: int) -> Callable[[], None]:
        """`keep_mining`, but no block after `last`."""
        return lambda: self.keep_mining(last)

    def head(self) -> int:
        return int(str(rpc(self.url, "eth_blockNumber")), 16)

    def node_view(self, tx_hash: bytes) -> str:
        """ "unknown", "pending" (in the mempool) or "mined"."""
        h = "0x" + tx_hash.hex()
        if rpc(self.url, "eth_getTransactionByHash", [h]) is None:
            return "unknown"
        return "mined" if rpc(self.url, "eth_getTransactionReceipt", [h]) is not None else "pending"

    def nonce(self, address: str, tag: str = "latest") -> int:
        return int(str(rpc(self.url, "eth_getTransactionCount", [address, tag])), 16)

    def mempool(self) -> tuple[int, int]:
        """(pending, queued) transactions in the node's mempool."""
        status = rpc(self.url, "txpool_status")
        assert isinstance(status, dict)
        return int(str(status["pending"]), 16), int(str(status["queued"]), 16)

    def signer_transactions(self) -> list[dict[str, Any]]:
        """Every mined transaction sent by a signer, in chain order."""
        ours = {s.lower() for s in self.signers}
        numbers = list(range(self.deployment.deployment_block, self.head() + 1))
        out: list[dict[str, Any]] = []
        for start in range(0, len(numbers), 200):
            body = [
                {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "eth_getBlockByNumber",
                    "params": [hex(n), True],
                }
                for n in numbers[start : start + 200]
            ]
            req = urllib.request.Request(  # noqa: S310 - our own local node
                self.url,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                blocks = sorted(json.loads(resp.read()), key=lambda r: r["id"])
            for reply in blocks:
                txs = reply["result"]["transactions"]
                out += [tx for tx in txs if str(tx["from"]).lower() in ours]
        return out


def settle_calldata(chain: Chain, ids: list[int]) -> bytes:
    w3 = Web3(Web3.HTTPProvider(chain.url))
    data = contract(w3, "StreamManager", chain.deployment.stream_manager).encode_abi(
        "settleStreams", [ids]
    )
    return bytes.fromhex(data[2:])


# --------------------------------------------------------------------------- the keeper


def write_config(path: Path, chain: Chain, rpc_url: str, database_url: str) -> Path:
    """A `keeper run` configuration whose signers are systemd credentials in `path/creds`."""
    deployment_file = path / "deployment.json"
    chain.deployment.write(deployment_file)
    creds = path / "creds"
    creds.mkdir()
    signers = ""
    for index in SIGNER_KEYS:
        (creds / f"signer-{index}").write_text(dev_key(index).reveal_hex() + "\n")
        signers += f'\n[[signers]]\ncredential = "signer-{index}"\n'
    config = path / "keeper.toml"
    # rpc_timeout: longer than any hold lasts, so the held call is still waiting when killed.
    config.write_text(
        f"""
[chain]
rpc_url = "{rpc_url}"
deployment_file = "{deployment_file}"
rpc_timeout = 20.0
rpc_attempts = 2

[database]
url = "{database_url}"
pool_min = 1
pool_max = 4

[ingest]
poll_interval = 0.1
max_follow_step = 128
recheck_delay = 0.0

[tx]
confirmations = {CONFIRMATIONS}
bump_after_blocks = {BUMP_AFTER}
purge_after_blocks = {PURGE_AFTER}
poll_interval = 0.05
tip_wei = 1000000000
{signers}
[log]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return config


def wait_for(
    what: str,
    check: Callable[[], bool],
    keeper: Keeper,
    *,
    timeout: float = 30.0,
    tick: Callable[[], None] | None = None,
) -> None:
    """Poll `check` (running `tick` between polls, e.g. to mine a block) until it holds; fail
    early when the keeper died, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if keeper.proc is not None and keeper.proc.poll() is not None:
            raise AssertionError(
                f"keeper exited ({keeper.proc.returncode}) waiting for {what}\n{keeper.tail()}"
            )
        if tick is not None:
            tick()
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}\n{keeper.tail()}")


# --------------------------------------------------------------------------- the kill points


def _pending_nonce(params: list[Any]) -> bool:
    return len(params) > 1 and params[1] == "pending"


def _a_receipt(result: Any) -> bool:
    return result is not None


def _self_send(params: list[Any]) -> bool:
    """Whether an `eth_sendRawTransaction` carries a zero-value self-send (a nonce purge)."""
    raw = HexBytes(params[0])
    tx = TypedTransaction.from_bytes(raw).as_dict()
    to = "0x" + bytes(tx["to"]).hex()
    return not tx["data"] and tx["value"] == 0 and to == Account.recover_transaction(raw).lower()


def _not_self_send(params: list[Any]) -> bool:
    return not _self_send(params)


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed, and what the outbox and the node hold right after."""

    name: str
    intents: dict[str, int]  # states of the batch's intents right after the kill
    attempts: dict[str, int] | None  # states of their attempts (None: not counted)
    hold: Callable[[RpcProxy], Hold] | None = None  # kill when this request is held
    mine_when_sent: int = 0  # blocks mined once every send of the batch was recorded
    state: str | None = None  # without a hold: kill once every intent is in this state
    node: str | None = None  # the node's view of the newest attempt: unknown, pending, mined
    chain_moves: bool = False  # mine what the mempool holds while the keeper is down
    resend: str | None = None  # the node's answer to the restarted keeper's resend, if an error
    # Once every send is recorded the node loses the newest transaction (dropped from its
    # mempool) and blocks come until the keeper replaces it (a fee bump at the same nonce).
    stall: bool = False
    # As `stall`, and every later send but a purge's self-send fails (HTTP 502) until the
    # keeper purges the nonce (the stuck intent goes to `replan`).
    purge: bool = False


def _send(nth: int, *, reply: bool) -> Callable[[RpcProxy], Hold]:
    return lambda p: p.hold("eth_sendRawTransaction", nth=nth, reply=reply)


def _receipts(*, reply: bool) -> Callable[[RpcProxy], Hold]:
    if reply:
        return lambda p: p.hold("eth_getTransactionReceipt", reply=True, result=_a_receipt)
    return lambda p: p.hold("eth_getTransactionReceipt")


THIRD_STORED = {"assigned": 3, "planned": BATCH - 3}
ALL_ASSIGNED = {"assigned": BATCH}
# The bump comes `bump_after_blocks` (3) blocks after the sends, when the others are confirmed.
ONE_STALLED = {"assigned": 1, "confirmed": BATCH - 1}
BUMP_STORED = {"mined": BATCH - 1, "broadcast": 1, "signed": 1}
PURGED = {"replan": 1, "confirmed": BATCH - 1}

GROUPS: dict[str, list[KillPoint]] = {
    "sending": [
        KillPoint(
            "assigning",
            {"assigned": 1, "planned": BATCH - 1},
            {"broadcast": 1},
            hold=lambda p: p.hold("eth_getTransactionCount", nth=2, params=_pending_nonce),
        ),
        KillPoint(
            "signed",
            THIRD_STORED,
            {"broadcast": 2, "signed": 1},
            hold=_send(3, reply=False),
            node="unknown",
        ),
        KillPoint(
            "signed-chain-moved",
            THIRD_STORED,
            {"broadcast": 2, "signed": 1},
            hold=_send(3, reply=False),
            node="unknown",
            chain_moves=True,
        ),
        KillPoint(
            "sent",
            THIRD_STORED,
            {"broadcast": 2, "signed": 1},
            hold=_send(3, reply=True),
            node="pending",
            resend="already_known",
        ),
        KillPoint(
            "sent-chain-moved",
            THIRD_STORED,
            {"broadcast": 2, "signed": 1},
            hold=_send(3, reply=True),
            node="pending",
            chain_moves=True,
            resend="nonce_too_low",
        ),
    ],
    "replacing": [
        KillPoint(
            "bump-signed",
            ONE_STALLED,
            BUMP_STORED,
            hold=_send(BATCH + 1, reply=False),
            node="unknown",
            stall=True,
        ),
        KillPoint(
            "bump-sent",
            ONE_STALLED,
            BUMP_STORED,
            hold=_send(BATCH + 1, reply=True),
            node="pending",
            resend="already_known",
            stall=True,
        ),
        KillPoint(
            "bump-sent-chain-moved",
            ONE_STALLED,
            BUMP_STORED,
            hold=_send(BATCH + 1, reply=True),
            node="pending",
            chain_moves=True,
            resend="nonce_too_low",
            stall=True,
        ),
    ],
    "purging": [
        KillPoint(
            "purge-signed",
            PURGED,
            None,
            hold=lambda p: p.hold("eth_sendRawTransaction", params=_self_send),
            node="unknown",
            purge=True,
        ),
        KillPoint(
            "purge-sent",
            PURGED,
            None,
            hold=lambda p: p.hold("eth_sendRawTransaction", params=_self_send, reply=True),
            node="pending",
            resend="already_known",
            purge=True,
        ),
    ],
    "confirming": [
        KillPoint(
            "recorded",
            ALL_ASSIGNED,
            {"broadcast": BATCH},
            hold=_receipts(reply=False),
            node="pending",
        ),
        KillPoint(
            "recorded-chain-moved",
            ALL_ASSIGNED,
            {"broadcast": BATCH},
            hold=_receipts(reply=False),
            node="pending",
            chain_moves=True,
        ),
        KillPoint(
            "receipt",
            ALL_ASSIGNED,
            {"broadcast": BATCH},
            hold=_receipts(reply=True),
            mine_when_sent=1,
            node="mined",
        ),
        KillPoint(
            "mined",
            {"mined": BATCH},
            {"mined": BATCH},
            mine_when_sent=1,
            state="mined",
            node="mined",
        ),
        KillPoint(
            "confirmed",
            {"confirmed": BATCH},
            {"mined": BATCH},
            mine_when_sent=CONFIRMATIONS,
            state="confirmed",
            node="mined",
        ),
    ],
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def chain(anvil_factory: Callable[..., Anvil]) -> Chain:
    node = anvil_factory()
    deployment = deploy_all(node.url, dev_key(0).reveal_hex())
    rpc(node.url, "evm_setAutomine", [False])
    return Chain(node, deployment, [dev_key(i).address for i in SIGNER_KEYS])


@pytest.fixture
def outbox(database_url: str) -> Iterator[Outboxes]:
    view = Outboxes(database_url)
    try:
        yield view
    finally:
        view.close()


# --------------------------------------------------------------------------- the test


def _all_in(outbox: Outboxes, ids: Sequence[int] | None, states: set[str]) -> Callable[[], bool]:
    """Whether every intent of `ids` (None: every intent) is in one of `states`."""

    def check() -> bool:
        counts = outbox.intent_states(ids)
        return (ids is None or sum(counts.values()) == len(ids)) and set(counts) <= states

    return check


def _sends_recorded(outbox: Outboxes, ids: Sequence[int]) -> Callable[[], bool]:
    return lambda: Counter(a["state"] for a in outbox.attempts(ids)) == {"broadcast": len(ids)}


@pytest.mark.parametrize("group", list(GROUPS))
def test_kill_9_between_steps(
    group: str,
    chain: Chain,
    outbox: Outboxes,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each point of the group in turn: plan a batch, kill at the point, restart, run the batch
    to final. Then every call exactly once on-chain and every assigned nonce used once."""
    calls: dict[int, bytes] = {}
    with RpcProxy(chain.url) as proxy:
        config = write_config(tmp_path, chain, proxy.url, database_url)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
        keeper = Keeper(config, tmp_path / "keeper.log")
        try:
            keeper.start()
            for n, point in enumerate(GROUPS[group]):
                # The hold first: the running keeper takes up a batch as soon as it is planned.
                held = point.hold(proxy) if point.hold is not None else None
                batch = _plan_batch(chain, outbox, n, point)
                calls.update(batch)
                unsent = _kill_at(point, held, proxy, chain, outbox, keeper, list(batch))
                _restart(keeper, proxy)
                if point.resend is not None:
                    assert _send_answers(keeper, unsent) == [point.resend], keeper.tail()
                _run_to_final(chain, outbox, keeper)
                if point.purge:
                    calls.update(_plan_again(chain, outbox))
                    _run_to_final(chain, outbox, keeper)
            status, _ = keeper.terminate()
            assert status == 0, keeper.tail()
        finally:
            keeper.stop()

    assert_exactly_once(chain, outbox, calls)
    assert '"tx_pass_failed"' not in keeper.log_file.read_text(encoding="utf-8")


def _plan_batch(chain: Chain, outbox: Outboxes, n: int, point: KillPoint) -> dict[int, bytes]:
    """Plan this point's intents (distinct stream ids, so distinct calldata); id -> calldata."""
    streams = [[1_000 + 10 * n + i] for i in range(BATCH)]
    data = [settle_calldata(chain, ids) for ids in streams]
    requests = [
        IntentRequest(
            kind="settle",
            key=f"settle:{point.name}:{i}",
            target=chain.deployment.stream_manager,
            calldata=calldata,
            items=ids,
        )
        for i, (ids, calldata) in enumerate(zip(streams, data, strict=True))
    ]
    return dict(zip(outbox.plan(chain.deployment.chain_id, requests), data, strict=True))


def _kill_at(
    point: KillPoint,
    held: Hold | None,
    proxy: RpcProxy,
    chain: Chain,
    outbox: Outboxes,
    keeper: Keeper,
    batch: list[int],
) -> list[int]:
    """Run the planned `batch` to `point` (`held`: its hold, set before the batch was planned),
    kill the keeper there, check where it stopped; mine while it is down if the point says so.
    Returns the attempts left unsent."""
    stalls = point.stall or point.purge
    if point.mine_when_sent or stalls:
        wait_for(f"{point.name}: every send recorded", _sends_recorded(outbox, batch), keeper)
    if point.mine_when_sent:
        chain.mine(point.mine_when_sent)
    if point.purge:
        proxy.fail_next(None, 502, methods=["eth_sendRawTransaction"], params=_not_self_send)
    tick = None
    if stalls:
        stalled = outbox.attempts(batch)[-1]
        chain.drop(bytes(stalled["tx_hash"]))
        # Up to the block that makes the keeper bump (or purge), and not one more: a block
        # mined while the held send is being forwarded would already hold it.
        last = stalled["broadcast_block"] + (PURGE_AFTER if point.purge else BUMP_AFTER)
        tick = chain.mining_up_to(last)
    if held is not None:
        wait_for(f"{point.name}: the held {held.method}", held.reached.is_set, keeper, tick=tick)
    else:
        assert point.state is not None
        wait_for(
            f"{point.name}: every intent {point.state}",
            _all_in(outbox, batch, {point.state}),
            keeper,
        )
    keeper.kill()
    if held is not None:
        held.drop()  # the request dies with its client: never forwarded, never answered
    proxy.clear_faults()

    where = f"killed at {point.name}\n{keeper.tail()}"
    assert outbox.intent_states(batch) == point.intents, where
    states = Counter(a["state"] for a in outbox.attempts(batch))
    if point.attempts is not None:
        assert states == point.attempts, where
    if point.purge:
        # The stuck intent's attempts (the first and its failed bumps) all gave way to this
        # point's purge (earlier points' purges are final by now).
        assert states["mined"] == BATCH - 1 and set(states) == {"mined", "superseded"}, where
        purges = outbox.fetch(
            "SELECT i.state, a.state AS attempt FROM intents i JOIN attempts a "
            "ON a.intent_id = i.id WHERE i.kind = 'purge' AND i.state <> 'final'"
        )
        assert [tuple(r.values()) for r in purges] == [("assigned", "signed")], where
    newest = outbox.attempts()  # earlier batches are final: the newest attempt is this point's
    if point.node is not None:
        assert chain.node_view(bytes(newest[-1]["tx_hash"])) == point.node, where
    if point.chain_moves:
        chain.mine()
    return [int(a["id"]) for a in newest if a["state"] == "signed"]


def _restart(keeper: Keeper, proxy: RpcProxy) -> None:
    """Start the keeper and wait for its first whole pass, mining nothing meanwhile: its
    resends meet the node as the kill left it (or as `chain_moves` changed it)."""
    passes = proxy.calls["eth_getBalance"]  # one per pass of the tx manager
    keeper.start()
    wait_for(
        "the first pass after the restart",
        lambda: proxy.calls["eth_getBalance"] >= passes + 2,
        keeper,
    )


def _send_answers(keeper: Keeper, attempts: list[int]) -> list[str]:
    """The outcomes of the error answers to sends of `attempts` that the keeper logged."""
    out = []
    for line in keeper.log_file.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            event.get("event") in ("send_answer", "send_refused")
            and event.get("attempt") in attempts
        ):
            out.append(str(event["outcome"]))
    return out


def _run_to_final(chain: Chain, outbox: Outboxes, keeper: Keeper) -> None:
    """Blocks every `MINE_EVERY` seconds until every intent is confirmed (or re-planned), then
    past finality until every one is final."""
    confirmed = _all_in(outbox, None, {"confirmed", "final", "replan"})
    wait_for("every intent confirmed", confirmed, keeper, tick=chain.keep_mining)
    chain.mine(FINALITY)
    final = _all_in(outbox, None, {"final", "replan"})
    wait_for("every intent final", final, keeper, tick=chain.keep_mining)


def _plan_again(chain: Chain, outbox: Outboxes) -> dict[int, bytes]:
    """Plan the calls of the purged intents again (what the planners do with `replan`)."""
    rows = outbox.fetch(
        "SELECT key, calldata, ARRAY(SELECT b.entity FROM batch_items b WHERE b.intent_id = i.id"
        " ORDER BY b.position) AS items FROM intents i WHERE state = 'replan' AND NOT EXISTS "
        "(SELECT 1 FROM intents j WHERE j.key = i.key || ':again')"
    )
    assert rows, "nothing was purged"
    requests = [
        IntentRequest(
            kind="settle",
            key=f"{r['key']}:again",
            target=chain.deployment.stream_manager,
            calldata=bytes(r["calldata"]),
            items=[int(i) for i in r["items"]],
        )
        for r in rows
    ]
    ids = outbox.plan(chain.deployment.chain_id, requests)
    return dict(zip(ids, (req.calldata for req in requests), strict=True))


def assert_exactly_once(chain: Chain, outbox: Outboxes, calls: dict[int, bytes]) -> None:
    """Every call the test planned mined exactly once; every live intent (all but the purged)
    mined as the transaction the outbox recorded, by its signer at its nonce, each purge as a
    zero-value self-send; every nonce the outbox assigned used exactly once on-chain, none
    beyond; no attempt left unsent."""
    mined = chain.signer_transactions()
    by_input = Counter(bytes.fromhex(str(tx["input"])[2:]) for tx in mined)
    wanted = set(calls.values())
    not_once = {data.hex()[:80]: by_input[data] for data in wanted if by_input[data] != 1}
    assert not not_once, f"calls not mined exactly once: {not_once}"

    intents = outbox.fetch(
        "SELECT id, kind, state, signer, nonce, tx_hash, receipt_status, target, calldata, value "
        "FROM intents ORDER BY id"
    )
    assert {r["id"] for r in intents if r["kind"] != "purge"} == set(calls)
    live = [r for r in intents if r["state"] != "replan"]
    purges = [r for r in live if r["kind"] == "purge"]
    assert by_input[b""] == len(purges)
    assert len(mined) == len(live), "a signer sent a transaction the outbox does not know"
    on_chain = {str(tx["hash"]).lower(): tx for tx in mined}
    for intent in live:
        assert intent["state"] == "final" and intent["receipt_status"] == 1, dict(intent)
        tx = on_chain["0x" + bytes(intent["tx_hash"]).hex()]
        assert bytes.fromhex(str(tx["input"])[2:]) == bytes(intent["calldata"])
        assert str(tx["to"]).lower() == "0x" + bytes(intent["target"]).hex()
        assert int(str(tx["value"]), 16) == intent["value"]
        assert str(tx["from"]).lower() == "0x" + bytes(intent["signer"]).hex()
        assert int(str(tx["nonce"]), 16) == intent["nonce"]
    for purge in purges:
        assert bytes(purge["target"]) == bytes(purge["signer"]) and not purge["calldata"]

    for address in chain.signers:
        ours = address.lower()
        lane = sorted(r["nonce"] for r in live if "0x" + bytes(r["signer"]).hex() == ours)
        sent = sorted(int(str(tx["nonce"]), 16) for tx in mined if str(tx["from"]).lower() == ours)
        assert lane == list(range(len(lane))), (address, lane)  # no gap, none reused
        assert sent == lane, (address, sent, lane)
        assert chain.nonce(address) == chain.nonce(address, "pending") == len(lane)
    assert len({bytes(r["signer"]) for r in live}) == len(chain.signers)  # both lanes used
    assert chain.mempool() == (0, 0)

    attempts = outbox.attempts()
    assert "signed" not in {a["state"] for a in attempts}
    per_intent = Counter(a["intent_id"] for a in attempts if a["state"] == "mined")
    assert per_intent == Counter({r["id"]: 1 for r in live})
