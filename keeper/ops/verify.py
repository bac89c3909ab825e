"""`keeper verify`: the index against what the contracts themselves say, at one block.

The projections in the database (streams, escrows, the payee ledger, vault accounts and the
contract parameters) describe the chain at the indexed block; they are read in one REPEATABLE
READ transaction together with the cursor, so a keeper writing meanwhile does not mix two
blocks. The contracts are then read with `eth_call` at that very block, named by its hash
(EIP-1898), in JSON-RPC batches. A node that refuses a block hash there (Ganache, older nodes)
is asked by block number instead, and that number's block hash is checked before and after the
calls: a reorg in between voids the comparison and is reported. The calls read every stream
below `nextStreamId` (`getStream`: payer, payee, balance, rate, settledAt, usage sequence,
price in force, status), every escrow below `nextEscrowId` (`getEscrow`), `credited` (what
`claim()` pays) and vault `balanceOf` of every account the index or those streams and escrows
name, the price list of each of those accounts (`endpointCount`, `endpointPrice`), and the fee,
fee recipient, pause flags and notice period. An account the index has never seen and no stream or
escrow names cannot be enumerated by `eth_call`, and is not read.

The indexer never calls the contracts to learn state (events carry it); this is the check
that it got it right.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from eth_utils import keccak

from keeper.chain.deployment import Deployment
from keeper.chain.rpc import ChainClient, RpcResponseError
from keeper.db import Conn, to_int
from keeper.db.queries import load_queries
from keeper.errors import KeeperError

log = structlog.get_logger(__name__)

BATCH_CALLS = 500  # eth_calls per JSON-RPC batch
ZERO = bytes(20)
STREAM_STATUS = {0: "none", 1: "open", 2: "closed", 3: "closing"}
ESCROW_STATUS = {0: "none", 1: "open", 2: "released", 3: "refunded"}
STREAM_FIELDS = ("payer", "payee", "balance", "rate", "settled_at", "usage_seq", "price", "status")
ESCROW_FIELDS = ("payer", "payee", "amount", "expires_at", "status")
# What getEscrow still reports of a refunded escrow (it clears payer and amount).
REFUNDED_FIELDS = ("payee", "expires_at", "status")
# An endpoint's terms at the block: its price in force, and a change not in force yet (0, 0:
# none). Compared so, not as stored: when a passed change is folded in is the contract's own
# business.
ENDPOINT_FIELDS = ("name", "price", "pending", "effective_at")
PARAM_FIELDS = ("fee_bps", "fee_recipient", "manager_paused", "vault_paused", "notice_period")


class VerifyError(KeeperError):
    """The index cannot be verified."""


@dataclass(frozen=True)
class Difference:
    """One value the database and the contracts disagree on."""

    kind: str  # stream, escrow, credited, vault, endpoint, contract
    key: str  # the stream or escrow id, the account, payee/endpoint, or the contract
    field: str
    database: str
    chain: str

    def text(self) -> str:
        """`stream 7 balance: database 100, chain 90`"""
        return f"{self.kind} {self.key} {self.field}: database {self.database}, chain {self.chain}"


@dataclass
class Report:
    """What `verify` compared, and every difference it found."""

    chain_id: int
    block: int
    block_hash: str
    pinned_by: str = "hash"  # how the eth_calls named the block: "hash" (EIP-1898) or "number"
    streams: int = 0
    escrows: int = 0
    accounts: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the database matches the contracts."""
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass
class State:
    """What the projections, or the contracts, say at one block (addresses as 20 raw bytes)."""

    streams: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # STREAM_FIELDS
    escrows: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # ESCROW_FIELDS
    credited: dict[bytes, int] = field(default_factory=dict)
    vault: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # (available, locked)
    params: dict[str, Any] = field(default_factory=dict)
    # (payee, endpoint) -> ENDPOINT_FIELDS
    endpoints: dict[tuple[bytes, int], tuple[Any, ...]] = field(default_factory=dict)

    def accounts(self) -> set[bytes]:
        """Every account this state names (the zero address left out)."""
        found = set(self.credited) | set(self.vault) | {payee for payee, _ in self.endpoints}
        for s in self.streams.values():
            found |= {s[0], s[1]}
        for e in self.escrows.values():
            found |= {e[0], e[1]}
        if isinstance(self.params.get("fee_recipient"), bytes):
            found.add(self.params["fee_recipient"])
        found.discard(ZERO)
        return found


# --------------------------------------------------------------------------- the database


async def read_index(conn: Conn, chain_id: int) -> tuple[int, str, State]:
    """The indexed block, its hash and the projections, as of one snapshot."""
    q = load_queries("verify.sql")
    state = State()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.fetchrow(q["cursor"], chain_id)
        if cursor is None or cursor["indexed_hash"] is None:
            raise VerifyError(
                f"chain {chain_id}: nothing is indexed yet",
                help="run `keeper run` or `keeper backfill` first",
            )
        for r in await conn.fetch(q["streams"], chain_id, cursor["indexed_timestamp"]):
            state.streams[to_int(r["stream_id"])] = (
                bytes(r["payer"]),
                bytes(r["payee"]),
                to_int(r["balance"]),
                to_int(r["rate"]),
                int(r["settled_at"]),
                to_int(r["usage_seq"]),
                to_int(r["price"]),
                str(r["status"]),
            )
        for r in await conn.fetch(q["escrows"], chain_id):
            state.escrows[to_int(r["escrow_id"])] = (
                bytes(r["payer"]),
                bytes(r["payee"]),
                to_int(r["amount"]),
                int(r["expires_at"]),
                str(r["status"]),
            )
        for r in await conn.fetch(q["ledger"], chain_id):
            state.credited[bytes(r["account"])] = to_int(r["credited"])
        for r in await conn.fetch(q["vault_accounts"], chain_id):
            state.vault[bytes(r["account"])] = (to_int(r["available"]), to_int(r["locked"]))
        now = int(cursor["indexed_timestamp"])
        for r in await conn.fetch(q["endpoints"], chain_id):
            terms = price_terms(
                to_int(r["price"]),
                to_int(r["price_pending"] or 0),
                int(r["price_effective_at"] or 0),
                now,
            )
            state.endpoints[(bytes(r["payee"]), to_int(r["endpoint"]))] = (str(r["name"]), *terms)
        p = await conn.fetchrow(q["contract_params"], chain_id)
        if p is not None:
            state.params = {
                "fee_bps": p["fee_bps"],
                "fee_recipient": bytes(p["fee_recipient"]) if p["fee_recipient"] else None,
                "manager_paused": bool(p["manager_paused"]),
                "vault_paused": bool(p["vault_paused"]),
                "notice_period": p["notice_period"],
            }
    block_hash = "0x" + bytes(cursor["indexed_hash"]).hex()
    return int(cursor["indexed_block"]), block_hash, state


# --------------------------------------------------------------------------- the contracts


@functools.cache
def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


def _call(to: str, signature: str, args: Sequence[int | bytes], at: dict[str, str] | str) -> Any:
    """An eth_call of a view with static arguments (uint256 values or 20-byte addresses)."""
    words = "".join(
        (a.rjust(32, b"\0") if isinstance(a, bytes) else a.to_bytes(32, "big")).hex() for a in args
    )
    return ("eth_call", [{"to": to, "data": _selector(signature) + words}, at])


def _words(answer: Any) -> list[int]:
    raw = bytes.fromhex(str(answer)[2:])
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def _address(word: int) -> bytes:
    return word.to_bytes(32, "big")[-20:]


def price_terms(price: int, pending: int, effective_at: int, now: int) -> tuple[int, int, int]:
    """(price in force at `now`, pending price, its effective time); a change whose time has
    come is in force, and then nothing is pending (0, 0)."""
    if effective_at and effective_at <= now:
        return pending, 0, 0
    if effective_at:
        return price, pending, effective_at
    return price, 0, 0


def endpoint_name(word: int) -> str:
    """A bytes32 endpoint name as the index keeps it (the SQL function endpoint_name): trailing
    NULs stripped, read as UTF-8; the 0x-hex of all 32 bytes when that fails or a NUL is left."""
    raw = word.to_bytes(32, "big")
    text = raw.rstrip(b"\0")
    if b"\0" not in text:
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "0x" + raw.hex()


async def _batched(client: ChainClient, calls: list[Any]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(calls), BATCH_CALLS):
        answers = await client.batch(calls[start : start + BATCH_CALLS])
        out += [_words(a) for a in answers]
    return out


async def read_contracts(
    client: ChainClient,
    deployment: Deployment,
    block_hash: str,
    accounts: Iterable[bytes],
    *,
    by_number: int | None = None,
) -> State:
    """What the contracts report at the block `block_hash`, by eth_call in batches; `credited`
    and vault balances of `accounts` and of every account the streams and escrows name.

    The calls name the block by its hash (EIP-1898), or by the number `by_number` when given;
    then the caller checks that the number still names `block_hash` (see `verify`)."""
    at: dict[str, str] | str = {"blockHash": block_hash} if by_number is None else hex(by_number)
    m, v = deployment.stream_manager, deployment.escrow_vault
    header = await client.request("eth_getBlockByHash", [block_hash, False])
    if not header:
        raise VerifyError(f"block {block_hash} is not on the node's chain")
    now = int(header["timestamp"], 16)
    first = await _batched(
        client,
        [
            _call(m, "nextStreamId()", [], at),
            _call(v, "nextEscrowId()", [], at),
            _call(m, "feeBps()", [], at),
            _call(m, "feeRecipient()", [], at),
            _call(m, "paused()", [], at),
            _call(v, "paused()", [], at),
            _call(m, "noticePeriod()", [], at),
        ],
    )
    n_streams, n_escrows, fee_bps, recipient, m_paused, v_paused, notice = (w[0] for w in first)
    state = State(
        params={
            "fee_bps": fee_bps,
            "fee_recipient": _address(recipient),
            "manager_paused": m_paused == 1,
            "vault_paused": v_paused == 1,
            "notice_period": notice,
        }
    )
    calls = [_call(m, "getStream(uint256)", [i], at) for i in range(1, n_streams)]
    calls += [_call(v, "getEscrow(uint256)", [i], at) for i in range(1, n_escrows)]
    answers = iter(await _batched(client, calls))
    for i in range(1, n_streams):
        payer, payee, balance, rate, settled, seq, price, status = next(answers)
        if status:
            state.streams[i] = (
                _address(payer),
                _address(payee),
                balance,
                rate,
                settled,
                seq,
                price,
                STREAM_STATUS.get(status, str(status)),
            )
    for i in range(1, n_escrows):
        payer, payee, amount, expires, status = next(answers)
        if status:
            state.escrows[i] = (
                _address(payer),
                _address(payee),
                amount,
                expires,
                ESCROW_STATUS.get(status, str(status)),
            )
    who = sorted((set(accounts) | state.accounts()) - {ZERO})
    calls = [_call(m, "credited(address)", [a], at) for a in who]
    calls += [_call(v, "balanceOf(address)", [a], at) for a in who]
    answers = iter(await _batched(client, calls))
    for a in who:
        (credit,) = next(answers)
        state.credited[a] = credit
    for a in who:
        available, locked = next(answers)
        state.vault[a] = (available, locked)
    counts = await _batched(client, [_call(m, "endpointCount(address)", [a], at) for a in who])
    keys = [(a, e) for a, (count,) in zip(who, counts, strict=True) for e in range(1, count + 1)]
    prices = await _batched(
        client, [_call(m, "endpointPrice(address,uint256)", [a, e], at) for a, e in keys]
    )
    for key, (price, pending, effective_at, _listed, name) in zip(keys, prices, strict=True):
        terms = price_terms(price, pending, effective_at, now)
        state.endpoints[key] = (endpoint_name(name), *terms)
    return state


# --------------------------------------------------------------------------- the comparison


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value).lower() if isinstance(value, bool) else str(value)


def compare(index: State, chain: State) -> list[Difference]:
    """Every difference between the projections and the contracts' state."""
    out: list[Difference] = []

    def differ(kind: str, key: Any, name: str, mine: Any, theirs: Any) -> None:
        if mine != theirs:
            out.append(Difference(kind, _shown(key), name, _shown(mine), _shown(theirs)))

    for kind, mine_all, theirs_all, names in (
        ("stream", index.streams, chain.streams, STREAM_FIELDS),
        ("escrow", index.escrows, chain.escrows, ESCROW_FIELDS),
    ):
        for key in sorted(set(mine_all) | set(theirs_all)):
            mine, theirs = mine_all.get(key), theirs_all.get(key)
            if mine is None or theirs is None:
                differ(kind, key, "exists", mine is not None, theirs is not None)
                continue
            fields: Sequence[str] = names
            if kind == "escrow" and "refunded" in (mine[4], theirs[4]):
                fields = REFUNDED_FIELDS
            for name in fields:
                i = names.index(name)
                differ(kind, key, name, mine[i], theirs[i])
    for account in sorted(index.accounts() | chain.accounts()):
        differ(
            "credited",
            account,
            "credited",
            index.credited.get(account, 0),
            chain.credited.get(account, 0),
        )
        mine_v = index.vault.get(account, (0, 0))
        theirs_v = chain.vault.get(account, (0, 0))
        differ("vault", account, "available", mine_v[0], theirs_v[0])
        differ("vault", account, "locked", mine_v[1], theirs_v[1])
    for payee, endpoint in sorted(set(index.endpoints) | set(chain.endpoints)):
        mine_e = index.endpoints.get((payee, endpoint))
        theirs_e = chain.endpoints.get((payee, endpoint))
        shown_key = f"{_shown(payee)}/{endpoint}"
        if mine_e is None or theirs_e is None:
            differ("endpoint", shown_key, "exists", mine_e is not None, theirs_e is not None)
            continue
        for i, name in enumerate(ENDPOINT_FIELDS):
            differ("endpoint", shown_key, name, mine_e[i], theirs_e[i])
    for name in PARAM_FIELDS:
        contract = "EscrowVault" if name == "vault_paused" else "StreamManager"
        differ("contract", contract, name, index.params.get(name), chain.params.get(name))
    return out


async def verify(
    conn: Conn, client: ChainClient, deployment: Deployment, *, block: int | None = None
) -> Report:
    """Compare the index of `deployment`'s chain with its contracts at the indexed block.

    `block`, when given, must be the indexed block: the database holds the state of that one
    block only. Raises `VerifyError` when it is not, when nothing is indexed, or when the
    indexed block is no longer on the node's chain (a reorg the keeper has not handled yet).
    """
    chain_id = deployment.chain_id
    indexed, block_hash, index = await read_index(conn, chain_id)
    if block is not None and block != indexed:
        raise VerifyError(
            f"--block {block}: the database holds the state at its indexed block {indexed} "
            "only, so that is the one block it can be verified at",
            help=f"omit --block, or pass --block {indexed}",
        )
    header = await client.request("eth_getBlockByHash", [block_hash, False])
    if not header:
        raise VerifyError(
            f"chain {chain_id}: the indexed block {indexed} ({block_hash}) is not on the "
            "node's chain: a reorg the index has not caught up with yet",
            help="let `keeper run` handle it (or run it), then verify again",
        )
    report = Report(chain_id, indexed, block_hash)
    if await takes_block_hash(client, deployment, block_hash):
        chain = await read_contracts(client, deployment, block_hash, index.accounts())
    else:
        report.pinned_by = "number"
        await _check_hash(client, chain_id, indexed, block_hash, when="before")
        chain = await read_contracts(
            client, deployment, block_hash, index.accounts(), by_number=indexed
        )
        await _check_hash(client, chain_id, indexed, block_hash, when="after")
    report.streams = len(set(index.streams) | set(chain.streams))
    report.escrows = len(set(index.escrows) | set(chain.escrows))
    report.accounts = len(index.accounts() | chain.accounts())
    report.differences = compare(index, chain)
    return report


async def takes_block_hash(client: ChainClient, deployment: Deployment, block_hash: str) -> bool:
    """Whether the node answers an eth_call at `{"blockHash": …}` (EIP-1898). Any error answer
    counts as no: Ganache, for one, refuses the object form of the block parameter."""
    probe = _call(deployment.stream_manager, "nextStreamId()", [], {"blockHash": block_hash})
    try:
        await client.request(*probe)
    except RpcResponseError as exc:
        log.warning("verify_pinned_by_number", block_hash=block_hash, reason=exc.message)
        return False
    return True


async def _check_hash(
    client: ChainClient, chain_id: int, number: int, block_hash: str, *, when: str
) -> None:
    """Raise `VerifyError` unless block `number` of the node's chain is `block_hash`."""
    header = await client.header(number)
    found = header.hash.lower() if header is not None else None
    if found == block_hash.lower():
        return
    if when == "before":
        raise VerifyError(
            f"chain {chain_id}: block {number} is {found or 'unknown'} on the node, not the "
            f"indexed {block_hash}: a reorg the index has not caught up with yet",
            help="let `keeper run` handle it (or run it), then verify again",
        )
    raise VerifyError(
        f"chain {chain_id}: block {number} changed while the contracts were read "
        f"(was {block_hash}, now {found or 'unknown'}): a reorg during verify, so the reads "
        "may mix two blocks and nothing was compared",
        help="this node cannot pin eth_call to a block hash (EIP-1898); verify again once "
        "the chain is quiet, or point chain.rpc_url at a node that supports it",
    )
