"""What the steps of a transaction-manager pass share: the chain, the outbox, the signers and the
`[tx]` section (`keeper.config.TxConfig`), and per pass the head, the fee quote and the signers'
nonces on chain (each read at most once a pass)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from eth_account import Account
from eth_utils import to_checksum_address

from keeper.chain.rpc import BlockHeader, ChainClient, RpcResponseError
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.db.outbox import OutboxStore
from keeper.db.outbox_rows import Call, Signed
from keeper.tx.faults import IntentFaults
from keeper.tx.fees import FeeCaps, Fees

log = structlog.get_logger("keeper.tx.manager")

DEFAULT_TIP = 10**9  # when the node cannot quote one (eth_maxPriorityFeePerGas unsupported)


@dataclass
class TickReport:
    """What one pass did (for logs, metrics and tests)."""

    # Every eth_sendRawTransaction the node took or may have (first sends, sends again,
    # bumps, purges), and every one it refused: `tx_pass` reports what went out.
    sent: int = 0
    assigned: int = 0
    failed: int = 0
    mined: int = 0
    confirmed: int = 0
    final: int = 0
    unmined: int = 0
    bumped: int = 0
    rebroadcast: int = 0
    replanned: int = 0
    refused: int = 0  # see `sent`
    purged: int = 0
    held_by_budget: int = 0
    split: int = 0
    effects_checked: int = 0
    no_effect: int = 0


def hex_of(data: bytes) -> str:
    return "0x" + data.hex()


class TxContext:
    """The manager's collaborators and this pass's reads."""

    def __init__(
        self,
        client: ChainClient,
        outbox: OutboxStore,
        *,
        chain_id: int,
        signers: Sequence[Signer],
        settings: TxConfig,
        finality_depth: int,
        max_batch_gas: int | None,
    ) -> None:
        if not signers:
            raise ValueError("the transaction manager needs at least one signer")
        self.client = client
        self.outbox = outbox
        self.chain_id = chain_id
        self.signers = {s.address_bytes: s for s in signers}
        self.settings = settings
        # From other sections: what is final ([ingest]) and the most gas a batch has ([plan]).
        self.finality_depth = finality_depth
        self.max_batch_gas = max_batch_gas
        self.faults = IntentFaults(outbox, chain_id, base_delay=settings.fault_backoff)
        self.log = log.bind(chain_id=chain_id)
        self.head = BlockHeader(0, "0x", "0x", 0)
        self.finalized = 0
        self.report = TickReport()
        self._quote: tuple[int | None, int] | None = None
        self._nonces: dict[tuple[bytes, str], int] = {}

    @property
    def caps(self) -> FeeCaps:
        """The fee caps."""
        return FeeCaps(self.settings.max_fee_wei, self.settings.max_priority_fee_wei)

    def begin(self, head: BlockHeader, finalized: int) -> TickReport:
        """Start a pass at `head`: the fee quote and the nonces are read again when needed."""
        self.head, self.finalized = head, finalized
        self.report = TickReport()
        self._quote = None
        self._nonces.clear()
        return self.report

    async def fees(self) -> tuple[int | None, int]:
        """(base fee or None for legacy, tip) for a new or bumped attempt; quoted once per pass
        (the base fee comes with the head's header, the tip from config or the node)."""
        if self._quote is not None:
            return self._quote
        if self.settings.legacy or self.head.base_fee is None:
            price = int(await self.client.request("eth_gasPrice"), 16)
            tip = self.settings.tip_wei
            self._quote = (None, tip if tip is not None else price)
            return self._quote
        tip = self.settings.tip_wei
        if tip is None:
            try:
                tip = int(await self.client.request("eth_maxPriorityFeePerGas"), 16)
            except RpcResponseError:
                tip = DEFAULT_TIP
        self._quote = (self.head.base_fee, tip)
        return self._quote

    async def nonce_on_chain(self, signer: bytes, block: str) -> int:
        """The signer's transaction count at `block` ("pending" or "latest"), once a pass."""
        count = self._nonces.get((signer, block))
        if count is None:
            count = int(
                await self.client.request("eth_getTransactionCount", [hex_of(signer), block]), 16
            )
            self._nonces[(signer, block)] = count
        return count

    def sign(self, signer: bytes, nonce: int, call: Call, gas_limit: int, fees: Fees) -> Signed:
        """`call` signed by `signer` at `nonce`."""
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": to_checksum_address(call.target),
            "data": hex_of(call.calldata),
            "value": call.value,
            "gas": gas_limit,
        }
        if fees.legacy:
            tx["gasPrice"] = fees.gas_price
        else:
            tx["maxFeePerGas"] = fees.max_fee
            tx["maxPriorityFeePerGas"] = fees.priority_fee
            tx["type"] = 2
        signed = Account.sign_transaction(tx, self.signers[signer].key.reveal_hex())
        return Signed(
            signer=signer,
            nonce=nonce,
            max_fee=fees.max_fee,
            priority_fee=fees.priority_fee,
            legacy=fees.legacy,
            gas_limit=gas_limit,
            raw=bytes(signed.raw_transaction),
            tx_hash=bytes(signed.hash),
        )

    def name(self, signer: bytes) -> str:
        """A signer's checksummed address (for logs and metric labels)."""
        return self.signers[signer].address


def call_json(signer: bytes, call: Call) -> dict[str, str]:
    """`call` from `signer` as eth_call / eth_estimateGas take it."""
    return {
        "from": hex_of(signer),
        "to": hex_of(call.target),
        "data": hex_of(call.calldata),
        "value": hex(call.value),
    }
