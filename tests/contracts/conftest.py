"""Fixtures for the contract tests: freshly deployed contracts on the session anvil.

Every test gets its own deployment (a few hundred milliseconds), so no test sees another's
streams, escrows or balances. Actors are anvil's unlocked dev accounts. `chain` deploys
StreamManager with no notice period (closes and price decreases at once, as in v1);
`noticed` with `NOTICE` seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, rpc
from keeper.ops.deploy import contract
from keeper.plan.accrual import pack_report, unpack_report
from tests.support.chain import DEV_KEY0, deploy_contracts

FEE_BPS = 250
TOKEN = 10**6  # one whole token of 6 decimals, in base units
NOTICE = 600  # the notice period of the `noticed` fixture (the dev deployment's)
MASK_96 = 2**96 - 1


@dataclass
class Chain:
    """A deployment plus the actors and helpers the contract tests drive it with."""

    w3: Web3
    url: str
    deployment: Deployment
    token: Contract
    manager: Contract
    vault: Contract
    admin: str
    oracle: str
    fee_recipient: str
    payer: str
    payee: str
    other: str
    payer2: str
    payee2: str
    notice: int = 0
    receipts: list[dict[str, Any]] = field(default_factory=list)

    # ---------------------------------------------------------------- transactions

    def tx(self, fn: Any, sender: str, gas: int = 10_000_000) -> dict[str, Any]:
        """Send `fn` from `sender`, wait, assert it succeeded and return the receipt."""
        tx_hash = fn.transact({"from": sender, "gas": gas})
        receipt = dict(self.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.005))
        assert receipt["status"] == 1, f"transaction reverted: {fn.fn_name}"
        return receipt

    def send_async(self, fn: Any, sender: str, gas: int = 10_000_000) -> bytes:
        """Send without waiting (for several transactions in one block, automine off)."""
        return bytes(fn.transact({"from": sender, "gas": gas}))

    def reverts(self, fn: Any, sender: str, error: str) -> None:
        """Assert that `fn` from `sender` reverts with the custom error named `error`."""
        selector = "0x" + keccak(text=_error_signature(fn, error))[:4].hex()
        try:
            fn.call({"from": sender, "gas": 10_000_000})
        except Exception as exc:  # web3 raises several types; the revert data is what counts
            data = _revert_data(exc)
            assert data.startswith(selector), f"expected {error}, got revert data {data!r}"
        else:
            raise AssertionError(f"{fn.fn_name} did not revert (expected {error})")
        # And it really fails on chain too, not only in simulation.
        tx_hash = fn.transact({"from": sender, "gas": 2_000_000})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.005)
        assert receipt["status"] == 0

    # ---------------------------------------------------------------- events and state

    def events(self, c: Contract, receipt: dict[str, Any], name: str) -> list[dict[str, Any]]:
        """Decoded args of every `name` event `c` emitted in `receipt`, in log order."""
        found = getattr(c.events, name)().process_receipt(receipt, errors=DISCARD)
        return [dict(e["args"]) for e in found]

    def block_time(self, receipt: dict[str, Any]) -> int:
        """Timestamp of the block that mined `receipt`."""
        return int(self.w3.eth.get_block(receipt["blockNumber"])["timestamp"])

    def now(self) -> int:
        """Timestamp of the latest block."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        """Move chain time forward by `seconds` and mine a block."""
        rpc(self.url, "evm_increaseTime", [seconds])
        rpc(self.url, "evm_mine", [])

    def set_next_time(self, timestamp: int) -> None:
        """Make the next block's timestamp exactly `timestamp`."""
        rpc(self.url, "evm_setNextBlockTimestamp", [timestamp])

    def mine(self) -> None:
        """Mine one block."""
        rpc(self.url, "evm_mine", [])

    def automine(self, on: bool) -> None:
        """Switch anvil's automine on or off."""
        rpc(self.url, "evm_setAutomine", [on])

    def stream(self, sid: int) -> dict[str, int | str]:
        """`getStream(sid)` as a dict."""
        keys = ("payer", "payee", "balance", "rate", "settled_at", "usage_seq", "price", "status")
        return dict(zip(keys, self.manager.functions.getStream(sid).call(), strict=True))

    def escrow(self, eid: int) -> dict[str, int | str]:
        """`getEscrow(eid)` as a dict."""
        keys = ("payer", "payee", "amount", "expires_at", "status")
        return dict(zip(keys, self.vault.functions.getEscrow(eid).call(), strict=True))

    def balance(self, who: str) -> int:
        """Token balance of `who`."""
        return int(self.token.functions.balanceOf(who).call())

    def credited(self, who: str) -> int:
        """StreamManager ledger credit of `who`."""
        return int(self.manager.functions.credited(who).call())

    def vault_balance(self, who: str) -> tuple[int, int]:
        """(available, locked) of `who` in the vault."""
        available, locked = self.vault.functions.balanceOf(who).call()
        return int(available), int(locked)

    def ledger(self, who: str) -> tuple[int, int]:
        """(credited amount, fee remainder) of `who` in StreamManager's ledger."""
        amount, remainder = self.manager.functions.ledgerOf(who).call()
        return int(amount), int(remainder)

    def usage(self, reports: list[tuple[int, int, int, int]]) -> Any:
        """`recordUsage` of (stream id, seq, units, endpoint) reports, packed (a bound call)."""
        return self.manager.functions.recordUsage([pack_report(*r) for r in reports])

    def record(self, reports: list[tuple[int, int, int, int]]) -> dict[str, Any]:
        """Send `recordUsage` of (stream id, seq, units, endpoint) reports as the oracle."""
        return self.tx(self.usage(reports), self.oracle)

    def recorded(self, receipt: dict[str, Any]) -> list[dict[str, int]]:
        """Every UsageRecorded of `receipt`, its packed words decoded."""
        return [decode_recorded(e) for e in self.events(self.manager, receipt, "UsageRecorded")]

    # ---------------------------------------------------------------- set-up shortcuts

    def fund(self, who: str, amount: int) -> None:
        """Mint `amount` to `who` and approve both contracts for everything."""
        self.tx(self.token.functions.mint(who, amount), self.admin)
        self.tx(self.token.functions.approve(self.manager.address, 2**256 - 1), who)
        self.tx(self.token.functions.approve(self.vault.address, 2**256 - 1), who)

    def open(
        self, rate: int, deposit: int, *, payer: str | None = None, payee: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Open a stream and return (id, receipt)."""
        receipt = self.tx(
            self.manager.functions.openStream(payee or self.payee, rate, deposit),
            payer or self.payer,
        )
        (opened,) = self.events(self.manager, receipt, "StreamOpened")
        return int(opened["id"]), receipt

    def open_listed(
        self, rate: int, deposit: int, *, payer: str | None = None, payee: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Open a stream billed at its payee's price list and return (id, receipt)."""
        receipt = self.tx(
            self.manager.functions.openStreamOnPriceList(payee or self.payee, rate, deposit),
            payer or self.payer,
        )
        (opened,) = self.events(self.manager, receipt, "StreamOpened")
        assert opened["priceList"] is True
        return int(opened["id"]), receipt

    def add_endpoint(self, name: str, price: int, *, payee: str | None = None) -> int:
        """The payee lists endpoint `name` at `price`; returns its id."""
        receipt = self.tx(
            self.manager.functions.addEndpoint(name_word(name), price), payee or self.payee
        )
        (added,) = self.events(self.manager, receipt, "EndpointAdded")
        return int(added["endpoint"])

    def create_escrow(
        self, amount: int, timeout: int, *, payer: str | None = None, payee: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Deposit `amount` and escrow it; return (id, receipt of createEscrow)."""
        payer = payer or self.payer
        self.tx(self.vault.functions.deposit(amount), payer)
        receipt = self.tx(
            self.vault.functions.createEscrow(payee or self.payee, amount, timeout), payer
        )
        (created,) = self.events(self.vault, receipt, "EscrowCreated")
        return int(created["id"]), receipt


def name_word(name: str) -> bytes:
    """An endpoint name as the contract's bytes32 (UTF-8, NUL-padded on the right)."""
    raw = name.encode()
    assert 0 < len(raw) <= 32
    return raw.ljust(32, b"\0")


def decode_recorded(ev: dict[str, Any]) -> dict[str, int]:
    """A UsageRecorded event's three packed words as named fields."""
    sid, seq, endpoint, units = unpack_report(int(ev["report"]))
    assert int(ev["report"]) >> 192 == 0, "bits above 192 of the report must be cleared"
    charge, state = int(ev["charge"]), int(ev["state"])
    charged, fee = charge & MASK_96, charge >> 96
    balance_after, price = state & MASK_96, state >> 96
    return {
        "id": sid,
        "seq": seq,
        "endpoint": endpoint,
        "units": units,
        "charged": charged,
        "fee": fee,
        "shortfall": units * price - charged,
        "balance_after": balance_after,
        "price": price,
    }


def _error_signature(fn: Any, error: str) -> str:
    for item in fn.contract_abi:
        if item.get("type") == "error" and item["name"] == error:
            types = ",".join(i["type"] for i in item["inputs"])
            return f"{error}({types})"
    raise AssertionError(f"no error {error} in the ABI")


def simulated_revert(fn: Any, sender: str) -> str:
    """Revert data (hex) of simulating `fn` from `sender`; fails if it does not revert."""
    try:
        fn.call({"from": sender, "gas": 10_000_000})
    except Exception as exc:  # web3 raises several types; the revert data is what counts
        data = _revert_data(exc)
        if not data.startswith("0x"):
            raise AssertionError(f"no revert data in {data}") from exc
        return data
    raise AssertionError(f"{fn.fn_name} did not revert")


def _revert_data(exc: Exception) -> str:
    """The hex revert data web3 attached to `exc`, whatever its type."""
    data = getattr(exc, "data", None)
    if isinstance(data, str):
        return data
    for arg in exc.args:
        if isinstance(arg, str) and arg.startswith("0x"):
            return arg
        if isinstance(arg, dict) and isinstance(arg.get("data"), str):
            return str(arg["data"])
    return repr(exc)


def make_chain(url: str, notice_period: int = 0) -> Chain:
    """Deploy fresh contracts on the node at `url` and fund the actors."""
    accounts: list[str] = list(Web3(Web3.HTTPProvider(url)).eth.accounts)
    admin, oracle, fee_recipient, payer, payee, other, payer2, payee2 = accounts[:8]
    deployment = deploy_contracts(
        url,
        DEV_KEY0,
        oracle=oracle,
        fee_recipient=fee_recipient,
        fee_bps=FEE_BPS,
        notice_period=notice_period,
    )
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    c = Chain(
        w3=w3,
        url=url,
        deployment=deployment,
        token=contract(w3, "TestToken", deployment.token),
        manager=contract(w3, "StreamManager", deployment.stream_manager),
        vault=contract(w3, "EscrowVault", deployment.escrow_vault),
        admin=admin,
        oracle=oracle,
        fee_recipient=fee_recipient,
        payer=payer,
        payee=payee,
        other=other,
        payer2=payer2,
        payee2=payee2,
        notice=notice_period,
    )
    for who in (payer, payer2, other):
        c.fund(who, 1_000_000 * TOKEN)
    return c


@pytest.fixture
def chain(anvil: Anvil) -> Iterator[Chain]:
    """Fresh contracts on the session anvil, with funded actors; no notice period."""
    c = make_chain(anvil.url, 0)
    try:
        yield c
    finally:
        c.automine(True)


@pytest.fixture
def noticed(anvil: Anvil) -> Iterator[Chain]:
    """Fresh contracts whose StreamManager has a notice period of `NOTICE` seconds."""
    c = make_chain(anvil.url, NOTICE)
    try:
        yield c
    finally:
        c.automine(True)
