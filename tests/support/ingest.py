"""Shared machinery of the ingest integration tests: a chain driver and the index checks.

- `Driver` deploys the contracts on an anvil node and performs random, mostly valid contract
  activity drawn from a `random.Random` (so a failing run is replayed from its seed): streams
  opened (own price or on the payee's price list), topped up (depleted ones too), re-rated,
  priced (increases at once, decreases after the notice period), charged by usage reports with
  correct, replayed and gapped sequence numbers and listed, unlisted or no endpoints, settled in
  mixed batches, closed (a payer's close first requests it, then finalizes after the notice
  period) and withdrawn; endpoints added and repriced by payees; ledger claims; vault
  deposits, withdrawals and escrows released, refunded and refunded in expired batches; fee
  and pause changes; time moving on. It also reorganises the chain (`anvil_reorg`, optionally
  with fresh random transactions in the new branch) and rolls it back (`anvil_rollback`).
  Every choice is made from the chain's own state (read by eth_call), never from a model of
  it, so the driver stays valid across reorgs.
  Automine is off after set-up: each block holds what was sent since the last `mine`.
- `contract_state` reads what the contracts themselves say (getStream, getEscrow, credited,
  vault balanceOf, endpointPrice, fee, pause and notice settings) at one block, in JSON-RPC
  batches; `projection_state` reads the same shape from the database's projections.
- `dump` is every row the index must agree on with a fresh index of the same chain: all event
  tables, all projections and the cursor (volatile columns such as `updated_at` left out;
  `blocks` and `reorgs` only on request, as they record history, not state).
- `index_until_caught_up`, `fresh_index` and `verify_index` (the three-way check: the index
  equals a fresh index, its projections equal the contracts' state, and its event rows are
  exactly the contracts' logs).
"""

from __future__ import annotations

import contextvars
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import asyncpg
from eth_utils import keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from keeper import db as keeper_db
from keeper.chain.deployment import Deployment
from keeper.chain.rpc import ChainClient, RpcResponseError, RpcUnavailable
from keeper.config import IngestConfig
from keeper.dev.anvil import Anvil
from keeper.ingest.indexer import Indexer
from keeper.ops.deploy import contract, deploy_all
from keeper.ops.verify import price_terms
from tests.support.chain import DEV_KEY0, calldata

Row = tuple[Any, ...]
Dump = dict[str, list[Row]]

ZERO_ADDRESS = bytes(20)
# Columns that say when something was written, not what: they differ between two indexes.
VOLATILE_COLUMNS = frozenset({"updated_at", "detected_at", "created_at"})
# Columns of ingest_cursor that record what the node said last (not what was indexed).
OBSERVED_COLUMNS = frozenset({"head_block", "head_timestamp", "finalized_block"})
PROJECTION_TABLES = (
    "streams",
    "escrows",
    "payee_ledger",
    "vault_accounts",
    "contract_params",
    "endpoints",
)
INDEXER_TABLES = ("blocks", "ingest_cursor", "reorgs")  # its bookkeeping
EVENT_COLUMNS = ("block_number", "log_index", "tx_hash", "block_time")
STREAM_STATUS = {1: "open", 2: "closed", 3: "closing"}
DRIVER_NOTICE_PERIOD = 60  # seconds: pending prices and closes come due within a run
ESCROW_STATUS = {1: "open", 2: "released", 3: "refunded"}
ANVIL_FINALITY = 64  # anvil answers the `finalized` tag with head - 64
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _raw(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def _ident(name: str) -> str:
    """A table or column name from the catalog, checked before it is put into SQL text."""
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unexpected identifier {name!r}")
    return f'"{name}"'


# ---------------------------------------------------------------------- state of the contracts


@dataclass(frozen=True)
class StreamState:
    """One stream as `getStream` reports it (addresses as 20 raw bytes)."""

    payer: bytes
    payee: bytes
    balance: int
    rate: int
    settled_at: int
    usage_seq: int
    price: int  # the own price in force (0 on a price list)
    status: str  # "open" | "closing" | "closed"


@dataclass(frozen=True)
class EscrowState:
    """One escrow as `getEscrow` reports it (a refunded escrow has payer 0 and amount 0)."""

    payer: bytes
    payee: bytes
    amount: int
    expires_at: int
    status: str  # "open" | "released" | "refunded"


@dataclass
class ContractState:
    """Everything the projections claim to know, as of one block."""

    block: int
    timestamp: int
    streams: dict[int, StreamState] = field(default_factory=dict)
    escrows: dict[int, EscrowState] = field(default_factory=dict)
    credited: dict[bytes, int] = field(default_factory=dict)
    vault: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # (available, locked)
    fee_bps: int | None = None
    fee_recipient: bytes | None = None
    manager_paused: bool = False
    vault_paused: bool = False
    notice_period: int | None = None
    # (payee, endpoint) -> (name bytes32, price, pending or 0, effective_at or 0), endpointPrice
    endpoints: dict[tuple[bytes, int], tuple[bytes, int, int, int]] = field(default_factory=dict)

    def accounts(self) -> set[bytes]:
        """Every account this state mentions."""
        found = set(self.credited) | set(self.vault) | {p for p, _ in self.endpoints}
        for s in self.streams.values():
            found |= {s.payer, s.payee}
        for e in self.escrows.values():
            found |= {e.payer, e.payee}
        found.discard(ZERO_ADDRESS)
        return found

    def comparable(self, accounts: Iterable[bytes]) -> dict[str, Any]:
        """A plain dict for `==`: zero balances filled in for `accounts`, refunded escrows
        reduced to what `getEscrow` still reports (payer and amount are cleared on chain)."""
        escrows = {
            i: EscrowState(ZERO_ADDRESS, e.payee, 0, e.expires_at, e.status)
            if e.status == "refunded"
            else e
            for i, e in self.escrows.items()
        }
        accounts = set(accounts)
        return {
            "streams": dict(sorted(self.streams.items())),
            "escrows": dict(sorted(escrows.items())),
            "credited": {a: self.credited.get(a, 0) for a in sorted(accounts)},
            "vault": {a: self.vault.get(a, (0, 0)) for a in sorted(accounts)},
            "fee_bps": self.fee_bps,
            "fee_recipient": self.fee_recipient,
            "manager_paused": self.manager_paused,
            "vault_paused": self.vault_paused,
            "notice_period": self.notice_period,
            # Each endpoint's terms at the block (in force, and a change not in force yet):
            # when a change that came due is folded into the stored price is the contract's.
            "endpoints": {
                k: (e[0], *price_terms(*e[1:], self.timestamp))
                for k, e in sorted(self.endpoints.items())
            },
        }


def assert_states_equal(indexed: ContractState, chain: ContractState) -> None:
    """Fail, naming the first differences, unless the two states agree."""
    accounts = indexed.accounts() | chain.accounts()
    a, b = indexed.comparable(accounts), chain.comparable(accounts)
    if a == b:
        return
    problems = []
    for key in a:
        if a[key] == b[key]:
            continue
        if isinstance(a[key], dict):
            ids = sorted(set(a[key]) | set(b[key]), key=repr)
            diffs = [
                f"  {k!r}: index {a[key].get(k)!r} != chain {b[key].get(k)!r}"
                for k in ids
                if a[key].get(k) != b[key].get(k)
            ]
            problems.append(f"{key} ({len(diffs)} differ):\n" + "\n".join(diffs[:8]))
        else:
            problems.append(f"{key}: index {a[key]!r} != chain {b[key]!r}")
    raise AssertionError(
        f"projections at block {indexed.block} differ from the contracts at block "
        f"{chain.block}:\n" + "\n".join(problems)
    )


# ---------------------------------------------------------------------- transactions


@dataclass(frozen=True)
class Tx:
    """A transaction to send from an unlocked anvil account."""

    label: str
    sender: str
    to: str
    data: str
    gas: int = 3_000_000

    def json(self) -> dict[str, str]:
        """The `eth_sendTransaction` / `anvil_reorg` form (anvil fills nonce and fees)."""
        return {"from": self.sender, "to": self.to, "data": self.data, "gas": hex(self.gas)}


@dataclass(frozen=True)
class Target:
    """What an Indexer needs to know about a deployment."""

    chain_id: int
    addresses: dict[str, str]
    start_block: int


# Actions of `Driver.random_txs` and their weights.
ACTIONS = {
    "open": 12,
    "top_up": 6,
    "update_rate": 4,
    "set_price": 4,
    "add_endpoint": 2,
    "set_endpoint_price": 3,
    "usage": 8,
    "settle": 8,
    "close": 3,
    "withdraw_available": 2,
    "claim": 3,
    "deposit": 5,
    "vault_withdraw": 2,
    "create_escrow": 5,
    "release": 2,
    "refund": 2,
    "refund_expired": 3,
    "admin_action": 1,
}
STREAM_ACTIONS = ("open", "top_up", "update_rate", "set_price", "usage", "settle", "close")
ENDPOINT_NAMES = [b"api/v1", b"search", b"embed", b"batch"]


class Driver:
    """Contracts on one anvil node, and random activity on them (see the module docstring).

    Actors are anvil's dev accounts: 0 admin/deployer, 1 oracle, 2 and 8 fee recipients,
    3-5 payers (funded and approved), 6-7 payees that sign (claim, close, withdraw) plus two
    synthetic payees nobody holds a key for, 9 a bystander calling permissionless batches.
    """

    def __init__(
        self,
        node: Anvil,
        rng: random.Random,
        *,
        funds: int = 10**18,
        notice_period: int = DRIVER_NOTICE_PERIOD,
    ) -> None:
        self.url = node.url
        self.rng = rng
        self.provider = HTTPProvider(node.url, request_kwargs={"timeout": 120})
        self.w3 = Web3(self.provider)
        accounts = [str(a) for a in self.w3.eth.accounts]
        self.admin, self.oracle = accounts[0], accounts[1]
        self.fee_recipients = [accounts[2], accounts[8]]
        self.payers = accounts[3:6]
        self.signing_payees = accounts[6:8]
        self.payees = [
            *self.signing_payees,
            to_checksum_address("0x" + "5a" * 19 + "01"),
            to_checksum_address("0x" + "5a" * 19 + "02"),
        ]
        self.bystander = accounts[9]
        self.deployment: Deployment = deploy_all(
            node.url,
            DEV_KEY0,
            oracle=self.oracle,
            fee_recipient=self.fee_recipients[0],
            notice_period=notice_period,
        )
        d = self.deployment
        self.chain_id = d.chain_id
        self.token: Contract = contract(self.w3, "TestToken", d.token)
        self.manager: Contract = contract(self.w3, "StreamManager", d.stream_manager)
        self.vault: Contract = contract(self.w3, "EscrowVault", d.escrow_vault)
        self.history: list[str] = []
        self.rpc("evm_setAutomine", [False])
        for payer in self.payers:
            self.send(
                [
                    self.tx("mint", self.token, "mint", [payer, funds], self.admin),
                    self.tx(
                        "approve", self.token, "approve", [d.stream_manager, 2**256 - 1], payer
                    ),
                    self.tx("approve", self.token, "approve", [d.escrow_vault, 2**256 - 1], payer),
                ]
            )
        self.mine()
        self.setup_block = self.head()

    # ------------------------------------------------------------------ plumbing

    @property
    def target(self) -> Target:
        """The Indexer's view of the deployment."""
        d = self.deployment
        return Target(
            chain_id=d.chain_id,
            addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
            start_block=d.deployment_block,
        )

    @property
    def accounts(self) -> set[bytes]:
        """Every address the driver ever credits, charges or pays."""
        addrs = [
            self.admin,
            self.oracle,
            *self.fee_recipients,
            *self.payers,
            *self.payees,
            self.bystander,
        ]
        return {_raw(a) for a in addrs}

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call; raise on an error answer."""
        reply = self.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result")

    def rpc_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in JSON-RPC batches, answers in call order; raise on any error."""
        out: list[Any] = []
        for i in range(0, len(calls), 2_000):
            chunk = calls[i : i + 2_000]
            replies = self.provider.make_batch_request(
                [(RPCEndpoint(m), list(p)) for m, p in chunk]
            )
            if not isinstance(replies, list):
                raise RuntimeError(f"batch refused: {replies}")
            for reply in sorted(replies, key=lambda r: int(str(r["id"]))):
                if "error" in reply:
                    raise RuntimeError(f"batch call failed: {reply['error']}")
                out.append(reply.get("result"))
        return out

    def head(self) -> int:
        """The latest block number."""
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, number: int | str) -> dict[str, Any]:
        """`eth_getBlockByNumber` (hashes only)."""
        tag = hex(number) if isinstance(number, int) else number
        result = self.rpc("eth_getBlockByNumber", [tag, False])
        assert result is not None, f"no block {number}"
        return cast(dict[str, Any], result)

    def block_hashes(self, first: int, last: int) -> dict[int, str]:
        """Hashes of blocks [first, last] (those that exist)."""
        if last < first:
            return {}
        blocks = self.rpc_batch(
            [("eth_getBlockByNumber", [hex(n), False]) for n in range(first, last + 1)]
        )
        return {int(b["number"], 16): str(b["hash"]) for b in blocks if b}

    def finalized(self) -> int:
        """The node's `finalized` block number."""
        return int(self.block("finalized")["number"], 16)

    def tx(
        self, label: str, c: Contract, fn: str, args: Sequence[Any], sender: str, gas: int = 0
    ) -> Tx:
        """A call of `c.fn(*args)` from `sender` (gas 3M unless given)."""
        data = c.encode_abi(fn, list(args))
        return Tx(label=label, sender=sender, to=str(c.address), data=data, gas=gas or 3_000_000)

    def send(self, txs: Iterable[Tx]) -> list[str]:
        """Send `txs` into the pool (mined by the next `mine`); returns their hashes."""
        hashes = []
        for tx in txs:
            hashes.append(str(self.rpc("eth_sendTransaction", [tx.json()])))
            self.history.append(f"send {tx.label}")
        return hashes

    def mine(self, blocks: int = 1, *, seconds: int = 0) -> None:
        """Mine `blocks` blocks, the first `seconds` after the head (0: the same second), the
        others a second apart. Timestamps are set, never taken from the wall clock, so a run
        replays exactly from its seed."""
        head_time = int(self.block("latest")["timestamp"], 16)
        self.rpc("evm_setNextBlockTimestamp", [head_time + seconds])
        if blocks == 1:
            self.rpc("evm_mine")
        else:
            self.rpc("anvil_mine", [hex(blocks), hex(1)])
        self.history.append(f"mine {blocks} (+{seconds}s) -> head {self.head()}")
        # Everything sent must be in a block now: a leftover would be mined into a later block
        # (or, after a reorg, sit in the pool with a nonce gap).
        for _ in range(20):
            status = self.rpc("txpool_status")
            if int(status["pending"], 16) == 0 and int(status["queued"], 16) == 0:
                return
            self.rpc("evm_mine")
        raise AssertionError(f"transactions stuck in the pool: {self.rpc('txpool_content')}")

    def mine_at(self, timestamp: int) -> None:
        """Mine one block with exactly `timestamp` (not before the head's)."""
        head_time = int(self.block("latest")["timestamp"], 16)
        assert timestamp >= head_time
        self.mine(seconds=timestamp - head_time)

    def act(
        self,
        n_txs: int | None = None,
        *,
        seconds: int | None = None,
        only: Sequence[str] | None = None,
    ) -> list[str]:
        """One block of `n_txs` random transactions (random count if None), `seconds` after
        the previous block (random if None); `only` restricts the actions (names as in
        `ACTIONS`). Returns the transactions' labels."""
        view = contract_state(self, "latest")
        n = self.rng.randint(1, 6) if n_txs is None else n_txs
        txs = [tx for _ in range(n) for tx in self.random_txs(view, only)]
        self.send(txs)
        self.mine(seconds=self.rng.choice([0, 0, 1, 7, 60, 3600]) if seconds is None else seconds)
        return [t.label for t in txs]

    def reorg(self, depth: int, n_txs: int = 0, *, fork: bool | str = True) -> None:
        """Replace the last `depth` blocks (`anvil_reorg`), putting `n_txs` random transactions
        (chosen from the state at the common ancestor) into the new blocks.

        anvil gives the new blocks the old ones' timestamps, so an empty replacement of an
        empty block is the very same block. With `fork`, a plain transfer goes into the first
        new block, so every replaced block really changes (a reorg of exactly `depth`);
        `fork="log"` also puts a call that always logs (settleStreams of an unknown id) into
        the last new block."""
        assert 1 <= depth <= self.head() - self.setup_block, "reorg below the set-up"
        txs: list[list[Any]] = []
        if fork:
            mark = {"from": self.bystander, "to": self.bystander, "value": hex(depth)}
            txs.append([mark, 0])
        if fork == "log":
            data = calldata("settleStreams(uint256[])", [32, 1, 2**255 + depth])
            call = {"from": self.bystander, "to": str(self.manager.address), "data": data}
            txs.append([{**call, "gas": hex(200_000)}, depth - 1])
        if n_txs:
            view = contract_state(self, self.head() - depth)
            for _ in range(n_txs):
                for tx in self.random_txs(view):
                    txs.append([tx.json(), self.rng.randrange(depth)])
            txs.sort(key=lambda t: int(t[1]))
        self.rpc("anvil_reorg", [depth, txs])
        self.rpc("anvil_dropAllTransactions")
        self.history.append(f"reorg depth {depth} with {len(txs)} txs -> head {self.head()}")

    def rollback(self, depth: int) -> None:
        """Remove the last `depth` blocks (`anvil_rollback`)."""
        assert 1 <= depth <= self.head() - self.setup_block, "rollback below the set-up"
        self.rpc("anvil_rollback", [depth])
        self.rpc("anvil_dropAllTransactions")
        self.history.append(f"rollback {depth} -> head {self.head()}")

    # ------------------------------------------------------------------ random activity

    def random_txs(self, view: ContractState, only: Sequence[str] | None = None) -> list[Tx]:
        """One random action (usually one transaction) chosen from the state `view`."""
        names = [n for n in ACTIONS if only is None or n in only]
        assert names, f"no action among {only}"
        name = self.rng.choices(names, [ACTIONS[n] for n in names])[0]
        action: Callable[[ContractState], list[Tx]] = getattr(self, f"_{name}")
        return action(view)

    def _open_ids(self, view: ContractState) -> list[int]:
        return [i for i, s in view.streams.items() if s.status in ("open", "closing")]

    def _some_stream(self, view: ContractState, *, open_only: float = 0.9) -> int:
        """A stream id: usually an open one, sometimes any, closed or unknown (reverts)."""
        open_ids = self._open_ids(view)
        if open_ids and self.rng.random() < open_only:
            return self.rng.choice(open_ids)
        if view.streams and self.rng.random() < 0.8:
            return self.rng.choice(list(view.streams))
        return len(view.streams) + 1 + self.rng.randrange(3)

    def _open(self, view: ContractState) -> list[Tx]:
        rng = self.rng
        rate = rng.choice([0, 1, 3, 17, 250, rng.randint(1, 5_000)])
        deposit = rng.choice([0, rng.randint(1, 2_000), rng.randint(2_000, 10**6), 10**9])
        payer, payee = rng.choice(self.payers), rng.choice(self.payees)
        fn = "openStreamOnPriceList" if rng.random() < 0.4 else "openStream"
        return [self.tx(fn, self.manager, fn, [payee, rate, deposit], payer)]

    def _top_up(self, view: ContractState) -> list[Tx]:
        depleted = [
            i
            for i, s in view.streams.items()
            if s.status == "open" and _accrued(s, view.timestamp) >= s.balance
        ]
        sid = (
            self.rng.choice(depleted)
            if depleted and self.rng.random() < 0.6
            else self._some_stream(view)
        )
        amount = self.rng.choice([1, self.rng.randint(1, 10**5), 10**7])
        sender = self.rng.choice(self.payers)
        return [self.tx("topUp", self.manager, "topUp", [sid, amount], sender)]

    def _payer_of(self, view: ContractState, sid: int) -> str:
        s = view.streams.get(sid)
        if s is None or self.rng.random() < 0.05:
            return self.rng.choice(self.payers)  # not the payer: reverts
        return to_checksum_address(s.payer)

    def _update_rate(self, view: ContractState) -> list[Tx]:
        sid = self._some_stream(view)
        rate = self.rng.choice([0, 1, 5, 100, self.rng.randint(1, 10_000)])
        return [
            self.tx(
                "updateRate", self.manager, "updateRate", [sid, rate], self._payer_of(view, sid)
            )
        ]

    def _set_price(self, view: ContractState) -> list[Tx]:
        sid = self._some_stream(view)
        price = self.rng.choice([0, 1, 3, 1_000, self.rng.randint(1, 10**6)])
        return [
            self.tx(
                "setUsagePrice",
                self.manager,
                "setUsagePrice",
                [sid, price],
                self._payer_of(view, sid),
            )
        ]

    def _add_endpoint(self, view: ContractState) -> list[Tx]:
        """A signing payee lists an endpoint (a name it listed already reverts)."""
        payee = self.rng.choice(self.signing_payees)
        name = self.rng.choice(ENDPOINT_NAMES).ljust(32, b"\0")
        price = self.rng.choice([0, 1, 7, 1_000, self.rng.randint(1, 10**5)])
        return [self.tx("addEndpoint", self.manager, "addEndpoint", [name, price], payee)]

    def _set_endpoint_price(self, view: ContractState) -> list[Tx]:
        """A payee reprices one of its endpoints (in force after the notice period); an
        unknown endpoint reverts."""
        listed = [k for k in view.endpoints if k[0] in {_raw(p) for p in self.signing_payees}]
        if listed and self.rng.random() < 0.9:
            payee, endpoint = self.rng.choice(listed)
            sender = str(to_checksum_address(payee))
        else:
            sender, endpoint = self.rng.choice(self.signing_payees), self.rng.randint(1, 5)
        price = self.rng.choice([0, 1, 5, 2_000, self.rng.randint(1, 10**5)])
        return [
            self.tx("setEndpointPrice", self.manager, "setEndpointPrice", [endpoint, price], sender)
        ]

    def _usage(self, view: ContractState) -> list[Tx]:
        """A usage batch: correct next sequence numbers, replays, gaps, bad units, unknown ids,
        listed, unlisted and no endpoints."""
        rng = self.rng
        last = {i: s.usage_seq for i, s in view.streams.items()}
        reports, kinds = [], []
        for _ in range(rng.randint(1, 6)):
            sid = self._some_stream(view, open_only=0.85)
            seen = last.get(sid, 0)
            kind = rng.choices(["next", "replay", "gap", "bad_units"], [60, 15, 15, 10])[0]
            u = rng.choice([1, 2, 10, rng.randint(1, 10**4), 10**6])
            if kind == "next":
                seq = seen + 1
                last[sid] = seq
            elif kind == "replay":
                seq = rng.randint(0, seen)
            elif kind == "gap":
                seq = seen + 2 + rng.randrange(3)
            else:
                seq, u = seen + 1, 0
            s = view.streams.get(sid)
            listed = [e for p, e in view.endpoints if s is not None and p == s.payee]
            endpoint = (
                rng.choice(listed) if listed and rng.random() < 0.8 else rng.choice([0, 0, 1, 2, 9])
            )
            reports.append(usage_report(sid, seq, endpoint, u))
            kinds.append(kind)
        return [self.tx(f"recordUsage{kinds}", self.manager, "recordUsage", [reports], self.oracle)]

    def _settle(self, view: ContractState) -> list[Tx]:
        """settleStreams over a mix of open, closed, unknown and repeated ids."""
        rng = self.rng
        known = list(view.streams)
        ids = rng.sample(known, min(len(known), rng.randint(0, 12))) if known else []
        ids += [len(known) + 1 + rng.randrange(5) for _ in range(rng.randint(0, 2))]
        if ids and rng.random() < 0.3:
            ids.append(rng.choice(ids))  # the same id twice: the second finds nothing due
        rng.shuffle(ids)
        sender = rng.choice([self.bystander, self.admin, *self.payers])
        return [self.tx(f"settleStreams({len(ids)})", self.manager, "settleStreams", [ids], sender)]

    def _close(self, view: ContractState) -> list[Tx]:
        sid = self._some_stream(view)
        s = view.streams.get(sid)
        sender = self._payer_of(view, sid)
        signing = {_raw(p) for p in self.signing_payees}
        if s is not None and s.payee in signing and self.rng.random() < 0.4:
            sender = to_checksum_address(s.payee)
        return [self.tx("closeStream", self.manager, "closeStream", [sid], sender)]

    def _withdraw_available(self, view: ContractState) -> list[Tx]:
        signing = {_raw(p) for p in self.signing_payees}
        mine = [i for i in self._open_ids(view) if view.streams[i].payee in signing]
        if not mine:
            return self._settle(view)
        sid = self.rng.choice(mine)
        payee = to_checksum_address(view.streams[sid].payee)
        return [self.tx("withdrawAvailable", self.manager, "withdrawAvailable", [sid], payee)]

    def _claim(self, view: ContractState) -> list[Tx]:
        signers = [*self.signing_payees, *self.fee_recipients]
        owed = [a for a in signers if view.credited.get(_raw(a), 0) > 0]
        who = self.rng.choice(owed) if owed else self.rng.choice(signers)
        return [self.tx("claim", self.manager, "claim", [], who)]

    def _deposit(self, view: ContractState) -> list[Tx]:
        amount = self.rng.choice([1, self.rng.randint(1, 10**6), 10**8])
        payer = self.rng.choice(self.payers)
        return [self.tx("deposit", self.vault, "deposit", [amount], payer)]

    def _vault_withdraw(self, view: ContractState) -> list[Tx]:
        holders = [a for a in [*self.payers, *self.signing_payees] if view.vault.get(_raw(a))]
        holders = [a for a in holders if view.vault[_raw(a)][0] > 0]
        if not holders:
            return self._deposit(view)
        who = self.rng.choice(holders)
        available = view.vault[_raw(who)][0]
        amount = available if self.rng.random() < 0.3 else self.rng.randint(1, available)
        return [self.tx("withdraw", self.vault, "withdraw", [amount], who)]

    def _create_escrow(self, view: ContractState) -> list[Tx]:
        funded = [p for p in self.payers if view.vault.get(_raw(p), (0, 0))[0] > 0]
        if not funded:
            return self._deposit(view)
        payer = self.rng.choice(funded)
        available = view.vault[_raw(payer)][0]
        amount = self.rng.randint(1, available)
        timeout = self.rng.choice([0, 1, 10, 60, 600, 3_600])
        payee = self.rng.choice([*self.payees, *self.payers])
        return [
            self.tx("createEscrow", self.vault, "createEscrow", [payee, amount, timeout], payer)
        ]

    def _some_escrow(self, view: ContractState) -> int | None:
        open_ids = [i for i, e in view.escrows.items() if e.status == "open"]
        if open_ids and self.rng.random() < 0.9:
            return self.rng.choice(open_ids)
        if view.escrows:
            return self.rng.choice(list(view.escrows))
        return None

    def _release(self, view: ContractState) -> list[Tx]:
        eid = self._some_escrow(view)
        if eid is None:
            return self._create_escrow(view)
        e = view.escrows[eid]
        payer = str(to_checksum_address(e.payer)) if e.payer != ZERO_ADDRESS else self.payers[0]
        return [self.tx("releaseEscrow", self.vault, "releaseEscrow", [eid], payer)]

    def _refund(self, view: ContractState) -> list[Tx]:
        eid = self._some_escrow(view)
        if eid is None:
            return self._create_escrow(view)
        e = view.escrows[eid]
        if e.payer != ZERO_ADDRESS and e.expires_at <= view.timestamp and self.rng.random() < 0.7:
            sender = str(to_checksum_address(e.payer))
        else:
            sender = self.admin  # the arbiter may refund at any time
        return [self.tx("refundEscrow", self.vault, "refundEscrow", [eid], sender)]

    def _refund_expired(self, view: ContractState) -> list[Tx]:
        """refundExpired over expired, unexpired, closed and unknown ids."""
        rng = self.rng
        known = list(view.escrows)
        ids = rng.sample(known, min(len(known), rng.randint(0, 8))) if known else []
        ids += [len(known) + 1 + rng.randrange(4) for _ in range(rng.randint(0, 2))]
        if ids and rng.random() < 0.3:
            ids.append(rng.choice(ids))
        rng.shuffle(ids)
        sender = rng.choice([self.bystander, *self.payers])
        return [self.tx(f"refundExpired({len(ids)})", self.vault, "refundExpired", [ids], sender)]

    def _admin_action(self, view: ContractState) -> list[Tx]:
        """Fee, fee recipient, a role grant, or a pause immediately lifted (both in one block)."""
        rng = self.rng
        kind = rng.choice(["fee", "recipient", "role", "pause_manager", "pause_vault"])
        if kind == "fee":
            return [self.tx("setFee", self.manager, "setFee", [rng.randint(0, 1_000)], self.admin)]
        if kind == "recipient":
            who = rng.choice(self.fee_recipients)
            return [self.tx("setFeeRecipient", self.manager, "setFeeRecipient", [who], self.admin)]
        if kind == "role":
            role = keccak(text="PAUSER_ROLE")
            who = rng.choice(self.payers)
            return [self.tx("grantRole", self.manager, "grantRole", [role, who], self.admin)]
        c = self.manager if kind == "pause_manager" else self.vault
        return [
            self.tx(f"{kind}", c, "pause", [], self.admin),
            self.tx(f"un{kind}", c, "unpause", [], self.admin),
        ]


def usage_report(stream_id: int, seq: int, endpoint: int, units: int) -> int:
    """One packed word of `recordUsage`: id | seq << 64 | endpoint << 96 | units << 128."""
    return stream_id | seq << 64 | endpoint << 96 | units << 128


def _accrued(s: StreamState, now: int) -> int:
    if s.status != "open" or now <= s.settled_at:
        return 0
    return min(s.balance, s.rate * (now - s.settled_at))


def _view_call(
    to: str, signature: str, args: Sequence[int | bytes], tag: str
) -> tuple[str, list[Any]]:
    """An eth_call of a view taking static arguments."""
    return ("eth_call", [{"to": to, "data": calldata(signature, args)}, tag])


def _words(answer: str) -> list[int]:
    raw = bytes.fromhex(answer[2:])
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def _address(word: int) -> bytes:
    return word.to_bytes(32, "big")[-20:]


def contract_state(
    driver: Driver, block: int | str, accounts: Iterable[bytes] = ()
) -> ContractState:
    """What the contracts report at `block` (a number or "latest"), by eth_call in batches.

    Reads every stream id below `nextStreamId`, every escrow id below `nextEscrowId`, and
    `credited` and vault `balanceOf` of the driver's accounts plus `accounts`.
    """
    m, v = str(driver.manager.address), str(driver.vault.address)
    header = driver.block(block)
    number = int(header["number"], 16)
    tag = hex(number)  # "latest" pinned to one block for every call below
    first = driver.rpc_batch(
        [
            _view_call(m, "nextStreamId()", [], tag),
            _view_call(v, "nextEscrowId()", [], tag),
            _view_call(m, "feeBps()", [], tag),
            _view_call(m, "feeRecipient()", [], tag),
            _view_call(m, "paused()", [], tag),
            _view_call(v, "paused()", [], tag),
            _view_call(m, "noticePeriod()", [], tag),
        ]
    )
    n_streams, n_escrows, fee_bps, recipient, m_paused, v_paused, notice = (
        _words(a)[0] for a in first
    )
    who = sorted(driver.accounts | set(accounts))
    calls = [_view_call(m, "getStream(uint256)", [i], tag) for i in range(1, n_streams)]
    calls += [_view_call(v, "getEscrow(uint256)", [i], tag) for i in range(1, n_escrows)]
    calls += [_view_call(m, "credited(address)", [a], tag) for a in who]
    calls += [_view_call(v, "balanceOf(address)", [a], tag) for a in who]
    answers = iter([_words(a) for a in driver.rpc_batch(calls)])
    state = ContractState(
        block=number,
        timestamp=int(header["timestamp"], 16),
        fee_bps=fee_bps,
        fee_recipient=_address(recipient),
        manager_paused=m_paused == 1,
        vault_paused=v_paused == 1,
        notice_period=notice,
    )
    for i in range(1, n_streams):
        payer, payee, balance, rate, settled, seq, price, status = next(answers)
        state.streams[i] = StreamState(
            _address(payer),
            _address(payee),
            balance,
            rate,
            settled,
            seq,
            price,
            STREAM_STATUS[status],
        )
    for i in range(1, n_escrows):
        payer, payee, amount, expires, status = next(answers)
        state.escrows[i] = EscrowState(
            _address(payer), _address(payee), amount, expires, ESCROW_STATUS[status]
        )
    for a in who:
        (credit,) = next(answers)
        if credit:
            state.credited[a] = credit
    for a in who:
        available, locked = next(answers)
        if available or locked:
            state.vault[a] = (available, locked)
    counts = driver.rpc_batch([_view_call(m, "endpointCount(address)", [a], tag) for a in who])
    keys = [(a, e) for a, c in zip(who, counts, strict=True) for e in range(1, _words(c)[0] + 1)]
    prices = driver.rpc_batch(
        [_view_call(m, "endpointPrice(address,uint256)", [a, e], tag) for a, e in keys]
    )
    for key, answer in zip(keys, prices, strict=True):
        price, pending, effective_at, _listed, name = _words(answer)
        state.endpoints[key] = (name.to_bytes(32, "big"), price, pending, effective_at)
    return state


def accrued_of(driver: Driver, ids: Sequence[int], block: int) -> dict[int, int]:
    """`accruedOf(id)` of each of `ids` by eth_call at `block`."""
    m = str(driver.manager.address)
    answers = driver.rpc_batch([_view_call(m, "accruedOf(uint256)", [i], hex(block)) for i in ids])
    return {i: _words(a)[0] for i, a in zip(ids, answers, strict=True)}


def chain_log_keys(driver: Driver, first: int, last: int) -> list[tuple[int, int, bytes, int]]:
    """(block, log index, tx hash, block timestamp) of every log the two contracts emitted in
    blocks [first, last]; the timestamp from the block header, not the log."""
    if last < first:
        return []
    t = driver.target
    logs = driver.rpc(
        "eth_getLogs",
        [{"address": list(t.addresses.values()), "fromBlock": hex(first), "toBlock": hex(last)}],
    )
    numbers = sorted({int(lg["blockNumber"], 16) for lg in logs})
    headers = driver.rpc_batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
    times = {int(h["number"], 16): int(h["timestamp"], 16) for h in headers}
    keys = [
        (
            int(lg["blockNumber"], 16),
            int(lg["logIndex"], 16),
            bytes.fromhex(lg["transactionHash"][2:]),
            times[int(lg["blockNumber"], 16)],
        )
        for lg in logs
        if not lg.get("removed")
    ]
    return sorted(keys)


# ---------------------------------------------------------------------- the database side


async def event_tables(conn: keeper_db.Conn) -> list[str]:
    """Every table in `public` shaped like an event table (the five common columns)."""
    rows = await conn.fetch(
        """
        SELECT table_name FROM information_schema.columns
        WHERE table_schema = 'public' AND column_name = ANY($1::text[])
        GROUP BY table_name HAVING count(*) = 5 ORDER BY table_name
        """,
        ["chain_id", *EVENT_COLUMNS],
    )
    return [str(r["table_name"]) for r in rows]


async def _columns(conn: keeper_db.Conn, table: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT column_name FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position
        """,
        table,
    )
    return [str(r["column_name"]) for r in rows]


async def dump(
    conn: keeper_db.Conn,
    chain_id: int,
    *,
    blocks: bool = False,
    reorgs: bool = False,
    observed: bool = True,
) -> Dump:
    """Every row of the chain in the event tables, the projections and the cursor, sorted.

    Volatile columns (`updated_at`, ...) are left out. `blocks` and `reorgs` add those tables
    (history: a fresh index need not have the same); `observed=False` leaves out what the
    cursor records of the node's last answer (head and finalized block).
    """
    tables = [*await event_tables(conn), *PROJECTION_TABLES, "ingest_cursor"]
    if blocks:
        tables.append("blocks")
    if reorgs:
        tables.append("reorgs")
    out: Dump = {}
    for table in tables:
        skip = VOLATILE_COLUMNS | (frozenset() if observed else OBSERVED_COLUMNS)
        cols = [c for c in await _columns(conn, table) if c not in skip]
        order = ", ".join(str(i) for i in range(1, len(cols) + 1))
        select = ", ".join(_ident(c) for c in cols)
        rows = await conn.fetch(
            f"SELECT {select} FROM {_ident(table)} WHERE chain_id = $1 ORDER BY {order}",  # noqa: S608
            chain_id,
        )
        out[table] = [tuple(r.values()) for r in rows]
    return out


def assert_dumps_equal(actual: Dump, expected: Dump, *, what: str = "fresh index") -> None:
    """Fail, naming each table that differs and rows only on one side, unless equal."""
    if actual == expected:
        return
    problems = []
    for table in sorted(set(actual) | set(expected)):
        a, b = actual.get(table), expected.get(table)
        if a == b:
            continue
        if a is None or b is None:
            problems.append(f"{table}: only in {'index' if b is None else what}")
            continue
        only_a = [r for r in a if r not in b]
        only_b = [r for r in b if r not in a]
        problems.append(
            f"{table}: {len(a)} rows vs {len(b)} in the {what}\n"
            f"    only in the index: {only_a[:4]!r}\n    only in the {what}: {only_b[:4]!r}"
        )
    raise AssertionError(f"the index differs from the {what}:\n" + "\n".join(problems))


async def event_keys(conn: keeper_db.Conn, chain_id: int) -> list[tuple[int, int, bytes, int]]:
    """(block, log index, tx hash, block time) of every event row of the chain, sorted (with
    repetitions, if any table held the same log twice)."""
    keys: list[tuple[int, int, bytes, int]] = []
    for table in await event_tables(conn):
        rows = await conn.fetch(
            f"SELECT block_number, log_index, tx_hash, block_time FROM {_ident(table)} "  # noqa: S608
            "WHERE chain_id = $1",
            chain_id,
        )
        keys += [
            (r["block_number"], r["log_index"], bytes(r["tx_hash"]), r["block_time"]) for r in rows
        ]
    return sorted(keys)


def _int(value: Decimal | int) -> int:
    return keeper_db.to_int(value)


async def projection_state(conn: keeper_db.Conn, chain_id: int) -> ContractState:
    """The projections of the chain, in the shape `contract_state` returns."""
    cursor = await conn.fetchrow(
        "SELECT indexed_block, indexed_timestamp FROM ingest_cursor WHERE chain_id = $1", chain_id
    )
    assert cursor is not None, "no cursor: nothing indexed"
    state = ContractState(block=cursor["indexed_block"], timestamp=cursor["indexed_timestamp"] or 0)
    for r in await conn.fetch("SELECT * FROM streams WHERE chain_id = $1", chain_id):
        # getStream's price: the own price in force at the block (0 on a price list).
        price = _int(r["price"])
        if r["price_effective_at"] is not None and r["price_effective_at"] <= state.timestamp:
            price = _int(r["price_pending"])
        state.streams[_int(r["stream_id"])] = StreamState(
            bytes(r["payer"]),
            bytes(r["payee"]),
            _int(r["balance"]),
            _int(r["rate"]),
            int(r["settled_at"]),
            _int(r["usage_seq"]),
            0 if r["price_list"] else price,
            str(r["status"]),
        )
    # endpointPrice's name is the bytes32 itself: the event row keeps it.
    names = {
        (bytes(r["payee"]), _int(r["endpoint"])): bytes(r["name"])
        for r in await conn.fetch(
            "SELECT payee, endpoint, name FROM endpoint_added WHERE chain_id = $1", chain_id
        )
    }
    for r in await conn.fetch("SELECT * FROM endpoints WHERE chain_id = $1", chain_id):
        key = (bytes(r["payee"]), _int(r["endpoint"]))
        state.endpoints[key] = (
            names[key],
            _int(r["price"]),
            _int(r["price_pending"] or 0),
            int(r["price_effective_at"] or 0),
        )
    for r in await conn.fetch("SELECT * FROM escrows WHERE chain_id = $1", chain_id):
        state.escrows[_int(r["escrow_id"])] = EscrowState(
            bytes(r["payer"]),
            bytes(r["payee"]),
            _int(r["amount"]),
            int(r["expires_at"]),
            str(r["status"]),
        )
    for r in await conn.fetch("SELECT * FROM payee_ledger WHERE chain_id = $1", chain_id):
        if r["credited"]:
            state.credited[bytes(r["account"])] = _int(r["credited"])
    for r in await conn.fetch("SELECT * FROM vault_accounts WHERE chain_id = $1", chain_id):
        if r["available"] or r["locked"]:
            state.vault[bytes(r["account"])] = (_int(r["available"]), _int(r["locked"]))
    p = await conn.fetchrow("SELECT * FROM contract_params WHERE chain_id = $1", chain_id)
    if p is not None:
        state.fee_bps = p["fee_bps"]
        state.fee_recipient = bytes(p["fee_recipient"]) if p["fee_recipient"] else None
        state.manager_paused = bool(p["manager_paused"])
        state.vault_paused = bool(p["vault_paused"])
        state.notice_period = p["notice_period"]
    return state


async def reorg_rows(conn: keeper_db.Conn, chain_id: int) -> list[asyncpg.Record]:
    """The chain's `reorgs` rows, oldest first."""
    return list(await conn.fetch("SELECT * FROM reorgs WHERE chain_id = $1 ORDER BY id", chain_id))


# ---------------------------------------------------------------------- indexers


# Set while FaultyClient.batch forwards to ChainClient.batch (per task, unlike an attribute:
# backfill reads ranges in a task of its own).
_forwarding: contextvars.ContextVar[bool] = contextvars.ContextVar("_forwarding", default=False)


class FaultyClient(ChainClient):
    """A ChainClient in front of a real node that records and can distort a few answers.

    - `get_logs_calls`: every eth_getLogs range it served, with the number of logs, in order.
    - `before_get_logs(from, to)`: called before each eth_getLogs (e.g. to reorganise the
      chain between the indexer's header reads and its log read).
    - `fail_get_logs(after=n, times=k)`: the k eth_getLogs calls after the next n raise
      RpcUnavailable (an outage in the middle of a backfill); later ones pass again.
    - `finalized_mode`: "node" (pass through), "null" (the `finalized` tag answers null, as on
      a node without it) or "error" (the node refuses the tag with a JSON-RPC error).
    - `lag(head, round_trips)`: for the next `round_trips` calls (a batch is one), the node
      lags behind at block `head`: "latest" is `head`, any block above it is unknown (null).
    """

    def __init__(self, url: str) -> None:
        super().__init__(url, attempts=2, max_backoff=0.05)
        self.get_logs_calls: list[tuple[int, int, int]] = []
        self.before_get_logs: Callable[[int, int], None] | None = None
        self.fail_after: int | None = None
        self.failures_left = 0
        self.finalized_mode: str = "node"
        self.lag_head: int | None = None
        self.lag_round_trips = 0

    def fail_get_logs(self, *, after: int, times: int = 1) -> None:
        """Let `after` more eth_getLogs calls through, then fail the next `times`."""
        self.fail_after, self.failures_left = len(self.get_logs_calls) + after, times

    def lag(self, head: int, round_trips: int) -> None:
        """Serve a node stuck at `head` for the next `round_trips` calls."""
        self.lag_head, self.lag_round_trips = head, round_trips

    def _rewrite(self, method: str, params: Sequence[Any], lagging: bool) -> tuple[bool, Any]:
        """(True, answer) when this call's answer is made up here, else (False, params)."""
        if method != "eth_getBlockByNumber":
            return False, params
        tag = params[0]
        if tag == "finalized" and self.finalized_mode != "node":
            if self.finalized_mode == "error":
                raise RpcResponseError(
                    "eth_getBlockByNumber: invalid block tag finalized", method=method, code=-32602
                )
            return True, None
        if lagging and self.lag_head is not None:
            if tag == "latest":
                return False, [hex(self.lag_head), *params[1:]]
            if isinstance(tag, str) and tag.startswith("0x") and int(tag, 16) > self.lag_head:
                return True, None
        return False, params

    def _tick(self) -> bool:
        lagging = self.lag_round_trips > 0
        if lagging:
            self.lag_round_trips -= 1
        return lagging

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        if _forwarding.get():  # ChainClient.batch falling back to single calls
            return await super().request(method, params)
        made_up, value = self._rewrite(method, params, self._tick())
        if made_up:
            return value
        return await super().request(method, value)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        lagging = self._tick()
        answers: list[tuple[bool, Any]] = [self._rewrite(m, p, lagging) for m, p in calls]
        real = [(m, a[1]) for (m, _), a in zip(calls, answers, strict=True) if not a[0]]
        token = _forwarding.set(True)
        try:
            got = iter(await super().batch(real))
        finally:
            _forwarding.reset(token)
        return [a[1] if a[0] else next(got) for a in answers]

    async def get_logs(
        self, addresses: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        if self.before_get_logs is not None:
            self.before_get_logs(from_block, to_block)
        if (
            self.fail_after is not None
            and len(self.get_logs_calls) >= self.fail_after
            and self.failures_left > 0
        ):
            self.failures_left -= 1
            raise RpcUnavailable("eth_getLogs: injected outage", method="eth_getLogs")
        logs = await super().get_logs(addresses, from_block, to_block)
        self.get_logs_calls.append((from_block, to_block, len(logs)))
        return logs


def make_indexer(
    client: ChainClient,
    pool: asyncpg.Pool,
    target: Target,
    settings: IngestConfig | None = None,
) -> Indexer:
    """An Indexer of `target`'s contracts."""
    return Indexer(
        client,
        pool,
        chain_id=target.chain_id,
        addresses=dict(target.addresses),
        start_block=target.start_block,
        settings=settings,
    )


@asynccontextmanager
async def open_indexer(
    rpc: str | ChainClient,
    database_url: str,
    target: Target,
    settings: IngestConfig | None = None,
) -> AsyncIterator[Indexer]:
    """An Indexer with its own pool (and client, given a URL), closed on exit."""
    client = ChainClient(rpc) if isinstance(rpc, str) else rpc
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield make_indexer(client, pool, target, settings)
    finally:
        await pool.close()
        await client.close()


async def index_until_caught_up(indexer: Indexer, *, max_polls: int = 2_000) -> int:
    """Poll `sync_once` until the cursor is the node's head block; return blocks advanced
    (a handled reorg counts as the 1 `sync_once` reports)."""
    total = 0
    for _ in range(max_polls):
        advanced = await indexer.sync_once()
        total += advanced
        if advanced:
            continue
        head = await indexer.client.head()
        async with indexer.pool.acquire() as conn:
            cursor = await indexer.store.cursor(conn, indexer.start_block)
        if cursor.indexed_block == head.number and cursor.indexed_hash == head.hash:
            return total
    raise AssertionError(f"the indexer did not catch up in {max_polls} polls")


async def fresh_index(
    rpc_url: str,
    target: Target,
    database_url: str,
    settings: IngestConfig | None = None,
    *,
    observed: bool = False,
) -> Dump:
    """Index the chain from scratch into `database_url` (an empty, migrated database) and dump
    it (without the node's last answers unless `observed`: see `dump`)."""
    async with open_indexer(rpc_url, database_url, target, settings) as indexer:
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            return await dump(conn, target.chain_id, observed=observed)


@dataclass
class FreshDatabases:
    """Where reference indexes are built: one scratch database (a migrated copy made by `new`
    on first use), whose indexer tables are emptied before each index. Emptying the (small)
    tables is much cheaper than a CREATE/DROP DATABASE per index (DROP forces a checkpoint)
    or a TRUNCATE (new files); only sequences keep counting, and no compared column comes
    from one."""

    new: Callable[[], str]  # e.g. lambda: database_factory(template_database)
    url: str | None = None

    async def reset(self) -> str:
        """The scratch database's URL, every table the indexer writes empty."""
        if self.url is None:
            self.url = self.new()
            return self.url
        conn = await keeper_db.connect(self.url)
        try:
            tables = [*await event_tables(conn), *PROJECTION_TABLES, *INDEXER_TABLES]
            async with conn.transaction():
                for table in tables:
                    await conn.execute(f"DELETE FROM {_ident(table)}")  # noqa: S608
        finally:
            await conn.close()
        return self.url

    async def index(self, rpc_url: str, target: Target) -> Dump:
        """`fresh_index` of the chain at `rpc_url` into an empty database."""
        return await fresh_index(rpc_url, target, await self.reset())


async def verify_index(
    indexer: Indexer, driver: Driver, fresh: FreshDatabases, *, finalized: int | None = None
) -> Dump:
    """Catch the index up with the node, then check it three ways; return its dump.

    1. It equals a fresh index of the same chain (`dump`: events, projections, cursor; not
       the node's finalized block as last seen, which depends on the client used).
    2. Its projections equal the contracts' state by eth_call at the indexed block.
    3. Its event rows are exactly the contracts' logs, none missing, none twice, each with its
       block's timestamp. Stored `blocks` rows are all canonical, and every block above the
       finalized one (the cursor's, or `finalized` if higher) is there: the parent-hash chain
       the next reorg is checked against.
    """
    await index_until_caught_up(indexer)
    chain_id = driver.chain_id
    async with indexer.pool.acquire() as conn:
        mine = await dump(conn, chain_id, observed=False)
        indexed = await projection_state(conn, chain_id)
        keys = await event_keys(conn, chain_id)
        cursor = await indexer.store.cursor(conn, indexer.start_block)
        stored = {
            int(r["number"]): "0x" + bytes(r["hash"]).hex()
            for r in await conn.fetch(
                "SELECT number, hash FROM blocks WHERE chain_id = $1", chain_id
            )
        }
    head = driver.head()
    assert cursor.indexed_block == cursor.head_block == head
    assert cursor.indexed_hash == driver.block(head)["hash"]

    assert_dumps_equal(mine, await fresh.index(driver.url, driver.target))

    chain = contract_state(driver, cursor.indexed_block, indexed.accounts())
    assert chain.timestamp == cursor.indexed_timestamp
    assert_states_equal(indexed, chain)

    expected = chain_log_keys(driver, indexer.start_block, cursor.indexed_block)
    assert len(set(keys)) == len(keys), "an event row is stored twice"
    if keys != expected:
        missing = sorted(set(expected) - set(keys))
        extra = sorted(set(keys) - set(expected))
        raise AssertionError(f"event rows != logs: missing {missing[:5]}, stale {extra[:5]}")

    canonical = driver.block_hashes(min(stored, default=0), max(stored, default=-1))
    stale = {n: h for n, h in stored.items() if canonical.get(n) != h}
    assert not stale, f"blocks rows not on the canonical chain: {sorted(stale)}"
    floor = max(cursor.finalized_block or 0, finalized or 0, cursor.start_block - 1)
    window = range(floor + 1, head + 1)
    missing_blocks = [n for n in window if n not in stored]
    assert not missing_blocks, f"unfinalized blocks missing from `blocks`: {missing_blocks}"
    return mine
