"""The demo's set-up workload: anvil's dev accounts publish a price list of endpoints, open
streams on it and with their own usage prices, create escrows, report usage per endpoint
through the oracle and settle a batch (`create_workload`). What they did is a `Workload`, which
`keeper.dev.demo_report` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import dev_key, rpc
from keeper.dev.demo_chain import DemoChain, DemoError
from keeper.dev.devchain import DEV_ROLES
from keeper.ingest.events import unpack_usage_recorded
from keeper.ops.deploy import Deployer, receipt_logs
from keeper.plan.batches import pack_usage

# anvil dev accounts used by the workload, after the ones DEV_ROLES takes (0-2).
PAYERS = {"payer-a": 3, "payer-b": 4, "payer-c": 5}
PAYEES = {"payee-x": 6, "payee-y": 7, "payee-z": 8}

UNIT = 10**6  # one whole token of the dev token (6 decimals)
MINT_PER_PAYER = 10_000 * UNIT

# The price list LIST_PAYEE publishes (addEndpoint): endpoint names as the usage producer
# writes them, and prices in token base units per unit of usage.
LIST_PAYEE = "payee-x"
ENDPOINTS = (("GET /v1/quote", 50), ("POST /v1/chat", 2_500), ("POST /v1/embed", 400))


@dataclass(frozen=True)
class StreamPlan:
    """A stream the demo opens: on its payee's price list, or with a usage price of its own."""

    payer: str
    payee: str
    rate: int  # base units per second
    deposit: int
    usage_price: int = 0  # own price, base units per usage unit; 0: no usage pricing
    note: str = ""
    price_list: bool = False  # openStreamOnPriceList: usage billed at the payee's list


@dataclass(frozen=True)
class EscrowPlan:
    """An escrow the demo creates."""

    payer: str
    payee: str
    amount: int
    timeout: int  # seconds
    release: bool = False
    note: str = ""


STREAMS = (
    StreamPlan("payer-a", "payee-x", 1_000, 500 * UNIT, price_list=True),
    StreamPlan("payer-a", "payee-y", 250, 100 * UNIT, 100),
    StreamPlan("payer-b", "payee-x", 10_000, 1_000 * UNIT, price_list=True),
    StreamPlan("payer-b", "payee-z", 5_000, 1_500_000, 0, "small deposit: depletes soon"),
    StreamPlan("payer-c", "payee-z", 2_000, 250 * UNIT, 50),
)
ESCROWS = (
    EscrowPlan("payer-a", "payee-x", 100 * UNIT, 7 * 24 * 3600),
    EscrowPlan("payer-b", "payee-y", 50 * UNIT, 60, note="short timeout: the keeper refunds it"),
    EscrowPlan("payer-c", "payee-z", 25 * UNIT, 24 * 3600, release=True),
)
# (stream index into STREAMS, endpoint name or None, units): a stream's reports take its usage
# seqs 1, 2, ... in this order. Streams on the price list name an endpoint; own-price streams
# name none. The batch ends with a replay of the first report, which the contract skips:
# exactly once per seq.
USAGE: tuple[tuple[int, str | None, int], ...] = (
    (0, "GET /v1/quote", 1_200),
    (0, "POST /v1/embed", 300),
    (2, "POST /v1/chat", 40),
    (1, None, 700),
    (4, None, 10_000),
)
# Chain time the streams run for between opening and the usage and settlement batches.
STREAMING_SECONDS = 120


@dataclass(frozen=True)
class UsageReport:
    """One usage report as the contract applied it (from its `UsageRecorded` event)."""

    stream_id: int
    seq: int
    endpoint: int  # 0: none (an own-price stream)
    units: int
    charged: int
    fee: int
    balance_after: int
    price: int  # the price in force that was charged


def usage_recorded(ev: dict[str, Any]) -> UsageReport:
    """Unpack a decoded `UsageRecorded` event's three words (as the indexer does)."""
    sid, seq, endpoint, units, charged, fee, _shortfall, balance_after, price = (
        unpack_usage_recorded([int(ev["report"]), int(ev["charge"]), int(ev["state"])])
    )
    return UsageReport(sid, seq, endpoint, units, charged, fee, balance_after, price)


@dataclass
class StreamResult:
    """A stream the demo opened, with what happened to it."""

    id: int
    plan: StreamPlan
    usage: list[UsageReport] = field(default_factory=list)
    settled: int = 0
    fee: int = 0
    balance: int = 0


@dataclass
class EscrowResult:
    """An escrow the demo created."""

    id: int
    plan: EscrowPlan
    expires_at: int
    status: str


@dataclass
class Workload:
    """Everything the demo did on chain."""

    accounts: dict[str, str]
    symbol: str
    decimals: int
    endpoints: dict[str, int] = field(default_factory=dict)  # LIST_PAYEE's: name -> id
    streams: list[StreamResult] = field(default_factory=list)
    escrows: list[EscrowResult] = field(default_factory=list)
    replays_skipped: int = 0
    settle_block: int = 0
    head_block: int = 0
    head_timestamp: int = 0


def create_workload(rpc_url: str, deployment: Deployment) -> Workload:
    """Publish a price list, open streams, create escrows, report usage and settle a batch
    with the dev accounts."""
    chain = DemoChain.connect(rpc_url, deployment)
    keys = {name: dev_key(i) for name, i in {**PAYERS, **PAYEES}.items()}
    senders = {name: chain.sender(index) for name, index in PAYERS.items()}
    admin = chain.admin()
    work = Workload(
        accounts={name: key.address for name, key in keys.items()},
        symbol=str(chain.token.functions.symbol().call()),
        decimals=deployment.token_decimals,
    )
    addr = work.accounts

    for name, sender in senders.items():
        admin.call(chain.token.functions.mint(addr[name], MINT_PER_PAYER))
        for spender in (chain.manager.address, chain.vault.address):
            sender.call(chain.token.functions.approve(spender, 2**256 - 1))

    work.endpoints = publish_price_list(chain.sender(PAYEES[LIST_PAYEE]), chain.manager)
    for sp in STREAMS:
        stream_id = chain.open_stream(
            senders[sp.payer],
            addr[sp.payee],
            sp.rate,
            sp.deposit,
            price_list=sp.price_list,
            usage_price=sp.usage_price,
        )
        work.streams.append(StreamResult(id=stream_id, plan=sp, balance=sp.deposit))

    # Let the streams run for a while before usage and settlement, so both have something to
    # move. Only a dev node's clock is moved, and only forward.
    rpc(rpc_url, "evm_increaseTime", [STREAMING_SECONDS])
    _record_usage(chain, work)
    _settle(chain, admin, work)
    for ep in ESCROWS:
        sender = senders[ep.payer]
        escrow_id, expires_at = chain.create_escrow(sender, addr[ep.payee], ep.amount, ep.timeout)
        escrow = EscrowResult(id=escrow_id, plan=ep, expires_at=expires_at, status="open")
        if ep.release:
            sender.call(chain.vault.functions.releaseEscrow(escrow.id))
            escrow.status = "released"
        work.escrows.append(escrow)
    head = chain.w3.eth.get_block("latest")
    work.head_block, work.head_timestamp = int(head["number"]), int(head["timestamp"])
    return work


def _record_usage(chain: DemoChain, work: Workload) -> None:
    """The oracle reports `USAGE` in one batch, ending with a replay the contract skips."""
    seqs: dict[int, int] = {}
    words = []
    for index, named, units in USAGE:
        seqs[index] = seqs.get(index, 0) + 1
        endpoint = work.endpoints[named] if named is not None else 0
        words.append(pack_usage(work.streams[index].id, units, seqs[index], endpoint))
    words.append(words[0])  # the replay
    oracle = chain.sender(DEV_ROLES.oracle)
    receipt = oracle.call(chain.manager.functions.recordUsage(words))
    by_id = {s.id: s for s in work.streams}
    for ev in receipt_logs(chain.manager, receipt, "UsageRecorded"):
        report = usage_recorded(ev)
        s = by_id[report.stream_id]
        s.usage.append(report)
        s.balance = report.balance_after
    work.replays_skipped = len(receipt_logs(chain.manager, receipt, "UsageSkipped"))


def _settle(chain: DemoChain, admin: Deployer, work: Workload) -> None:
    # Settled by the admin account here; in operation the keeper's signers send this.
    receipt = admin.call(chain.manager.functions.settleStreams([s.id for s in work.streams]))
    by_id = {s.id: s for s in work.streams}
    for ev in receipt_logs(chain.manager, receipt, "StreamSettled"):
        s = by_id[int(ev["id"])]
        s.settled, s.fee, s.balance = int(ev["amount"]), int(ev["fee"]), int(ev["balanceAfter"])
    work.settle_block = int(receipt["blockNumber"])


def publish_price_list(payee: Deployer, manager: Any) -> dict[str, int]:
    """`payee` adds the `ENDPOINTS` to its price list; returns their ids by name."""
    ids = {}
    for name, price in ENDPOINTS:
        receipt = payee.call(manager.functions.addEndpoint(endpoint_name(name), price))
        (added,) = receipt_logs(manager, receipt, "EndpointAdded")
        ids[name] = int(added["endpoint"])
    return ids


def endpoint_name(name: str) -> bytes:
    """An endpoint's name as the contract keeps it: UTF-8, NUL-padded to 32 bytes."""
    raw = name.encode()
    if not 0 < len(raw) <= 32:
        raise DemoError(f"endpoint name {name!r} must be 1 to 32 bytes of UTF-8")
    return raw.ljust(32, b"\0")
