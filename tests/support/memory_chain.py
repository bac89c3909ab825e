"""A chain in memory for the manager's unit tests: a mempool with replacement rules, blocks with a
base fee, receipts, reorgs and scripted node answers. It answers the few calls the transaction
manager makes (the `ChainClient` methods head, finalized, request, batch and headers) and decodes
the signed bytes it is sent, so it holds the manager to what a node would do with them. The real
nodes (anvil, Hardhat) run the same manager in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import rlp
from eth_account import Account
from eth_utils import keccak

from keeper.chain.rpc import BlockHeader, RpcError, RpcResponseError

GWEI = 10**9
GAS_USED = 50_000
REPLACEMENT_PCT = 10  # geth's default price bump


@dataclass(frozen=True)
class Tx:
    sender: bytes
    nonce: int
    max_fee: int
    tip: int
    gas: int
    to: bytes
    data: bytes
    tx_hash: bytes


def decode(raw: bytes) -> Tx:
    """The fields of a signed type-2 or legacy transaction."""
    sender = bytes.fromhex(Account.recover_transaction(raw)[2:])
    if raw[0] == 2:
        _, nonce, tip, max_fee, gas, to, _, data, *_ = rlp.decode(raw[1:])
    else:
        nonce, max_fee, gas, to, _, data, *_ = rlp.decode(raw)
        tip = max_fee
    n = [int.from_bytes(x, "big") for x in (nonce, tip, max_fee, gas)]
    return Tx(sender, n[0], n[2], n[1], n[3], bytes(to), bytes(data), keccak(raw))


@dataclass
class MemoryChain:
    """One chain: blocks, a mempool, balances; `answers` scripts the next send answers."""

    chain_id: int = 31337
    base_fee: int = GWEI
    tip: int = GWEI
    blocks: list[bytes] = field(default_factory=lambda: [keccak(b"genesis")])
    pool: dict[tuple[bytes, int], Tx] = field(default_factory=dict)
    mined: dict[bytes, tuple[int, Tx]] = field(default_factory=dict)  # hash -> (block, tx)
    nonces: dict[bytes, int] = field(default_factory=dict)
    balances: dict[bytes, int] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)  # error texts for the next sends
    reverts: Callable[[bytes], bool] = lambda calldata: False  # which calls revert
    sent: list[Tx] = field(default_factory=list)  # every send the node took
    made: int = 0

    # ------------------------------------------------------------------ the test's side

    def mine(self, blocks: int = 1) -> None:
        """Add `blocks` blocks, each taking every payable pool transaction in nonce order."""
        for _ in range(blocks):
            number = len(self.blocks)
            self.made += 1  # every block is a new one, also at a height a reorg took back
            self.blocks.append(keccak(self.blocks[-1] + self.made.to_bytes(8, "big")))
            for sender in sorted({s for s, _ in self.pool}):
                nonce = self.nonces.get(sender, 0)
                while (
                    tx := self.pool.get((sender, nonce))
                ) is not None and tx.max_fee >= self.base_fee:
                    del self.pool[(sender, nonce)]
                    self.mined[tx.tx_hash] = (number, tx)
                    nonce += 1
                self.nonces[sender] = nonce

    def reorg(self, depth: int) -> None:
        """Drop the last `depth` blocks; their transactions go back to the pool."""
        cut = len(self.blocks) - depth
        for tx_hash, (number, tx) in list(self.mined.items()):
            if number >= cut:
                del self.mined[tx_hash]
                self.pool[(tx.sender, tx.nonce)] = tx
                self.nonces[tx.sender] = min(self.nonces[tx.sender], tx.nonce)
        del self.blocks[cut:]
        self.mine(depth + 1)  # the other branch is longer

    def use_nonce_elsewhere(self, sender: bytes) -> None:
        """The key sends a transaction outside the keeper: its next nonce is mined."""
        nonce = self.nonces.get(sender, 0)
        self.pool.pop((sender, nonce), None)
        self.nonces[sender] = nonce + 1

    @property
    def head_number(self) -> int:
        return len(self.blocks) - 1

    # ------------------------------------------------------------------ the client's side

    async def head(self) -> BlockHeader:
        return self._header(self.head_number)

    async def finalized(self, head: BlockHeader, depth: int) -> int:
        return max(head.number - depth, 0)

    async def headers(self, numbers: Sequence[int]) -> list[BlockHeader | None]:
        return [self._header(n) if n <= self.head_number else None for n in numbers]

    def _header(self, n: int) -> BlockHeader:
        parent = self.blocks[n - 1] if n else b"\x00" * 32
        return BlockHeader(
            n, "0x" + self.blocks[n].hex(), "0x" + parent.hex(), n * 12, self.base_fee
        )

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        return [await self.request(method, params) for method, params in calls]

    async def broadcast(self, method: str, params: Sequence[Any]) -> list[tuple[str, Any]]:
        """One provider's answer, as `ChainClient.broadcast` gives it."""
        try:
            return [("memory", await self.request(method, params))]
        except RpcError as exc:
            return [("memory", exc)]

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        if method == "eth_sendRawTransaction":
            return self._send(bytes.fromhex(params[0][2:]))
        if method in ("eth_estimateGas", "eth_call"):
            if self.reverts(bytes.fromhex(params[0]["data"][2:])):
                raise RpcResponseError(f"{method}: execution reverted: nope", method=method, code=3)
            return hex(GAS_USED) if method == "eth_estimateGas" else "0x"
        if method == "eth_getTransactionCount":
            sender = bytes.fromhex(params[0][2:])
            nonce = self.nonces.get(sender, 0)
            while params[1] == "pending" and (sender, nonce) in self.pool:
                nonce += 1
            return hex(nonce)
        if method == "eth_getBalance":
            return hex(self.balances.get(bytes.fromhex(params[0][2:]), 10**21))
        if method == "eth_getTransactionReceipt":
            return self._receipt(bytes.fromhex(params[0][2:]))
        if method in ("eth_gasPrice", "eth_maxPriorityFeePerGas"):
            return hex(self.base_fee + self.tip if method == "eth_gasPrice" else self.tip)
        raise AssertionError(f"the manager does not call {method}")

    def _send(self, raw: bytes) -> str:
        tx = decode(raw)
        if self.answers:
            answer = self.answers.pop(0)
            raise RpcResponseError(f"eth_sendRawTransaction: {answer}", method="x", code=-32000)
        if tx.tx_hash in self.mined or self.pool.get((tx.sender, tx.nonce)) == tx:
            raise RpcResponseError("already known", method="eth_sendRawTransaction")
        if tx.nonce < self.nonces.get(tx.sender, 0):
            raise RpcResponseError("nonce too low", method="eth_sendRawTransaction")
        old = self.pool.get((tx.sender, tx.nonce))
        if old is not None:
            bump = 100 + REPLACEMENT_PCT
            if tx.max_fee * 100 < old.max_fee * bump or tx.tip * 100 < old.tip * bump:
                raise RpcResponseError(
                    "replacement transaction underpriced", method="eth_sendRawTransaction"
                )
        self.pool[(tx.sender, tx.nonce)] = tx
        self.sent.append(tx)
        return "0x" + tx.tx_hash.hex()

    def _receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        found = self.mined.get(tx_hash)
        if found is None:
            return None
        number, tx = found
        return {
            "transactionHash": "0x" + tx_hash.hex(),
            "blockNumber": hex(number),
            "blockHash": "0x" + self.blocks[number].hex(),
            "status": "0x0" if self.reverts(tx.data) else "0x1",
            "gasUsed": hex(min(GAS_USED, tx.gas)),
            "effectiveGasPrice": hex(min(tx.max_fee, self.base_fee + tx.tip)),
        }
