"""Gas per item of the keeper-driven batch calls, measured on a fresh anvil.

Shared by `make bench-gas` (prints the figures) and the gas snapshot test (fails when a figure
rises above the committed snapshot). Every figure is the receipt's gasUsed of one whole batch
transaction divided by the number of items, in the steady state: payees (and the fee recipient)
have been credited once before, as they are for a keeper that has been running. Usage goes
through `recordUsage` (packed reports): own-price streams (`usage_100`), streams on one payee's
price list spread over 3 endpoints (`usage_endpoints_100`), and streams on the lists of 100
distinct payees (`usage_endpoints_distinct_100`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract
from keeper.plan.accrual import pack_report
from tests.support.chain import DEV_KEY0, deploy_contracts

SETTLE_SIZES = (1, 10, 100, 200)
SNAPSHOT_PATH = Path(__file__).resolve().parents[2] / "gas-snapshot.json"
# The goals of DESIGN.md, gas per item at N = 100.
GOALS = {
    "settle_shared_100": 10_000,
    "settle_distinct_100": 15_000,
    "refund_100": 12_000,
    "usage_100": 12_000,
    # Issue 13: reports priced by the payee's list (one payee over 3 endpoints; 100 payees).
    "usage_endpoints_100": 12_000,
    "usage_endpoints_distinct_100": 15_000,
}
RATE = 1_000  # base units per second
DEPOSIT = 10**12


def synthetic_address(tag: int, i: int) -> str:
    """A deterministic address nobody holds a key for (payees need none to be credited)."""
    return to_checksum_address(f"0x{tag:04x}{i:036x}")


@dataclass
class Env:
    """A deployed set of contracts and helpers to drive them by impersonation."""

    w3: Web3
    url: str
    token: Contract
    manager: Contract
    vault: Contract
    admin: str
    last_fired: bytes | None = None

    def sync(self) -> None:
        """Wait until the last setup call is mined (anvil mines in arrival order, so then all
        earlier ones are too) and check it succeeded."""
        if self.last_fired is not None:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                HexBytes(self.last_fired), poll_latency=0.005
            )
            if receipt["status"] != 1:
                raise AssertionError("a setup transaction reverted")
            self.last_fired = None

    def send(self, fn: Any, sender: str, gas: int = 30_000_000) -> dict[str, Any]:
        """Send a contract call as `sender` (impersonated) and return its receipt."""
        self.sync()
        tx_hash = self.fire(fn, sender, gas)
        self.last_fired = None
        # anvil automines: the receipt is there almost at once, so poll tightly.
        receipt = dict(
            self.w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), poll_latency=0.005)
        )
        if receipt["status"] != 1:
            raise AssertionError(f"transaction reverted: {fn}")
        return receipt

    def fire(self, fn: Any, sender: str, gas: int = 2_000_000) -> bytes:
        """Send a setup call without waiting for its receipt (anvil mines it at once; a setup
        call that failed shows up as a missing item in the measured batch)."""
        self.last_fired = bytes(fn.transact({"from": sender, "gas": gas}))
        return self.last_fired

    def fund(self, who: str, amount: int) -> None:
        """Give `who` ETH for gas and `amount` tokens, approved to both contracts."""
        rpc(self.url, "anvil_setBalance", [who, hex(10**20)])
        self.fire(self.token.functions.mint(who, amount), self.admin)
        self.fire(self.token.functions.approve(self.manager.address, 2**256 - 1), who)
        self.fire(self.token.functions.approve(self.vault.address, 2**256 - 1), who)

    def advance(self, seconds: int) -> None:
        """Move chain time forward and mine a block."""
        self.sync()
        rpc(self.url, "evm_increaseTime", [seconds])
        rpc(self.url, "evm_mine", [])


def setup(url: str) -> Env:
    """Deploy the contracts on the node at `url` and switch on auto-impersonation."""
    dep = deploy_contracts(url, DEV_KEY0)
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    rpc(url, "anvil_autoImpersonateAccount", [True])
    return Env(
        w3=w3,
        url=url,
        token=contract(w3, "TestToken", dep.token),
        manager=contract(w3, "StreamManager", dep.stream_manager),
        vault=contract(w3, "EscrowVault", dep.escrow_vault),
        admin=dep.deployer,
    )


def _open_streams(env: Env, payer: str, payees: list[str]) -> list[int]:
    first = int(env.manager.functions.nextStreamId().call())
    for payee in payees:
        env.fire(env.manager.functions.openStream(payee, RATE, DEPOSIT), payer)
    return list(range(first, first + len(payees)))


def _per_item(receipt: dict[str, Any], n: int) -> int:
    return int(receipt["gasUsed"]) // n


def settle_gas(env: Env, n: int, *, shared: bool, tag: int) -> int:
    """Gas per stream of settleStreams over `n` streams, one payee or `n` distinct payees."""
    payer = synthetic_address(0xFA00 + tag, 0)
    env.fund(payer, DEPOSIT * n)
    payees = [synthetic_address(tag, 0 if shared else i) for i in range(n)]
    ids = _open_streams(env, payer, payees)
    env.advance(60)
    env.send(env.manager.functions.settleStreams(ids), env.admin)  # payees credited once
    env.advance(60)
    receipt = env.send(env.manager.functions.settleStreams(ids), env.admin)
    settled = env.manager.events.StreamSettled().process_receipt(receipt, errors=DISCARD)
    assert len(settled) == n, "every stream must have been settled"
    return _per_item(receipt, n)


def refund_gas(env: Env, n: int) -> int:
    """Gas per escrow of refundExpired over `n` expired escrows of distinct payers."""
    payee = synthetic_address(0xE5C0, 0)
    first = int(env.vault.functions.nextEscrowId().call())
    ids = list(range(first, first + n))
    for i in range(n):
        payer = synthetic_address(0xE5C1, i)
        env.fund(payer, 2_000_000)
        env.fire(env.vault.functions.deposit(2_000_000), payer)
        env.fire(env.vault.functions.createEscrow(payee, 1_000_000, 3600), payer)
    env.advance(3601)
    receipt = env.send(env.vault.functions.refundExpired(ids), env.admin)
    refunded = env.vault.events.EscrowRefunded().process_receipt(receipt, errors=DISCARD)
    assert len(refunded) == n, "every escrow must have been refunded"
    return _per_item(receipt, n)


def _usage_words(ids: list[int], seq: int, units: int, endpoints: list[int]) -> list[int]:
    return [pack_report(sid, seq, units, ep) for sid, ep in zip(ids, endpoints, strict=True)]


def _record(env: Env, words: list[int]) -> int:
    """Send one recordUsage batch (as the oracle, the deployer) twice: the first report of
    each stream, then the second (the measured, steady-state one). Returns gas per report."""
    oracle = env.admin
    env.send(env.manager.functions.recordUsage(words), oracle)
    second = [w + (1 << 64) for w in words]  # seq 1 -> 2, each with the same units
    receipt = env.send(env.manager.functions.recordUsage(second), oracle)
    recorded = env.manager.events.UsageRecorded().process_receipt(receipt, errors=DISCARD)
    assert len(recorded) == len(words), "every report must have been recorded"
    charged = [int(e["args"]["charge"]) & (2**96 - 1) for e in recorded]
    assert all(charged), "every report must have charged something"
    return _per_item(receipt, len(words))


def usage_gas(env: Env, n: int) -> int:
    """Gas per report of recordUsage over `n` own-price streams of one payee (second report)."""
    payer = synthetic_address(0xA5E0, 0)
    env.fund(payer, DEPOSIT * n)
    payee = synthetic_address(0xA5E1, 0)
    ids = _open_streams(env, payer, [payee] * n)
    for sid in ids:
        env.fire(env.manager.functions.setUsagePrice(sid, 25), payer)
    return _record(env, _usage_words(ids, 1, 7, [0] * n))


def _list_endpoints(env: Env, payee: str, prices: list[int]) -> list[int]:
    """The payee (impersonated) lists one endpoint per price; returns their ids."""
    rpc(env.url, "anvil_setBalance", [payee, hex(10**20)])
    first = int(env.manager.functions.endpointCount(payee).call()) + 1
    for i, price in enumerate(prices):
        env.fire(
            env.manager.functions.addEndpoint(f"endpoint-{i}".encode().ljust(32, b"\0"), price),
            payee,
        )
    return list(range(first, first + len(prices)))


def _open_listed(env: Env, payer: str, payees: list[str]) -> list[int]:
    env.sync()
    first = int(env.manager.functions.nextStreamId().call())
    for payee in payees:
        env.fire(env.manager.functions.openStreamOnPriceList(payee, RATE, DEPOSIT), payer)
    return list(range(first, first + len(payees)))


def usage_endpoints_gas(env: Env, n: int, *, distinct: bool) -> int:
    """Gas per report of recordUsage over `n` streams on price lists: one payee whose reports
    spread over 3 endpoints of its list, or `n` distinct payees with one endpoint each."""
    tag = 0xA5E3 if distinct else 0xA5E2
    payer = synthetic_address(tag, 0xFFFF)
    env.fund(payer, DEPOSIT * n)
    if distinct:
        payees = [synthetic_address(tag, i) for i in range(n)]
        endpoints = [_list_endpoints(env, p, [25])[0] for p in payees]
    else:
        payees = [synthetic_address(tag, 0)] * n
        listed = _list_endpoints(env, payees[0], [25, 40, 3])
        endpoints = [listed[i % 3] for i in range(n)]
    ids = _open_listed(env, payer, payees)
    return _record(env, _usage_words(ids, 1, 7, endpoints))


def measure(url: str, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Deploy on the (fresh) node at `url` and measure every figure of the snapshot."""
    env = setup(url)
    figures: dict[str, int] = {}
    tag = 1
    for shared in (True, False):
        for n in SETTLE_SIZES:
            key = f"settle_{'shared' if shared else 'distinct'}_{n}"
            figures[key] = settle_gas(env, n, shared=shared, tag=tag)
            tag += 1
            if progress:
                progress(f"{key}: {figures[key]}")
    figures["refund_100"] = refund_gas(env, 100)
    if progress:
        progress(f"refund_100: {figures['refund_100']}")
    figures["usage_100"] = usage_gas(env, 100)
    figures["usage_endpoints_100"] = usage_endpoints_gas(env, 100, distinct=False)
    figures["usage_endpoints_distinct_100"] = usage_endpoints_gas(env, 100, distinct=True)
    if progress:
        for key in ("usage_100", "usage_endpoints_100", "usage_endpoints_distinct_100"):
            progress(f"{key}: {figures[key]}")
    return figures
