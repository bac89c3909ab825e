"""Deploy the contracts to any RPC endpoint with a given key (`keeper deploy`, and the dev
chain's bootstrap), and describe the result as a deployment file (`keeper.chain.deployment`).

This is an operator tool, not part of the daemon's hot path, so it uses web3's synchronous client.
It signs locally; the key is never sent anywhere nor printed.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.types import Nonce, TxReceipt

from keeper.chain.deployment import MAX_NOTICE_PERIOD, Deployment
from keeper.errors import KeeperError
from keeper.resources import load_artifact

DEFAULT_FEE_BPS = 250


# How long a payer's close and a price decrease wait (chain seconds): the payee has that long
# to report the usage it served on the old terms. 0 makes them immediate (tests that want the
# v1 behaviour deploy with it).
DEFAULT_NOTICE_PERIOD = 600


class DeployError(KeeperError):
    """Deploying the contracts failed."""


class Deployer:
    """Sends transactions signed by one local key and waits for their receipts."""

    def __init__(self, w3: Web3, account: LocalAccount, *, timeout: float = 120.0) -> None:
        self.w3 = w3
        self.account = account
        self.timeout = timeout
        self._nonce: int = int(w3.eth.get_transaction_count(account.address, "pending"))

    def __repr__(self) -> str:
        return f"Deployer(address={self.account.address})"

    def send(self, tx: dict[str, Any]) -> TxReceipt:
        """Fill nonce/chain/fees, sign, send and wait; raise `DeployError` on revert."""
        tx = dict(tx)
        tx.setdefault("from", self.account.address)
        tx["nonce"] = Nonce(self._nonce)
        tx["chainId"] = self.w3.eth.chain_id
        if "gas" not in tx:
            tx["gas"] = int(self.w3.eth.estimate_gas(tx) * 12 // 10)  # type: ignore[arg-type]
        if "maxFeePerGas" not in tx and "gasPrice" not in tx:
            base = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
            tip = int(self.w3.eth.max_priority_fee)
            tx["maxPriorityFeePerGas"] = tip
            tx["maxFeePerGas"] = 2 * base + tip
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self._nonce += 1
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout)
        if receipt["status"] != 1:
            raise DeployError(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def deploy(self, name: str, *args: Any) -> tuple[Contract, TxReceipt]:
        """Deploy the artifact `name` with constructor `args`."""
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.account.address})
        receipt = self.send({"data": tx["data"], "from": self.account.address})
        address = receipt["contractAddress"]
        if address is None:
            raise DeployError(f"{name}: no contract address in receipt")
        return self.w3.eth.contract(address=address, abi=art.abi), receipt

    def call(self, fn: Any) -> TxReceipt:
        """Send a bound contract function call (e.g. `token.functions.mint(a, 1)`)."""
        return self.send(fn.build_transaction({"from": self.account.address, "gas": 2_000_000}))


def contract(w3: Web3, name: str, address: str) -> Contract:
    """A web3 contract object for the artifact `name` at `address`."""
    return w3.eth.contract(address=to_checksum_address(address), abi=load_artifact(name).abi)


def deploy_all(
    rpc_url: str,
    private_key: str,
    *,
    oracle: str | None = None,
    fee_recipient: str | None = None,
    fee_bps: int = DEFAULT_FEE_BPS,
    token_address: str | None = None,
    notice_period: int = DEFAULT_NOTICE_PERIOD,
) -> Deployment:
    """Deploy (TestToken unless `token_address` is given), StreamManager and EscrowVault.

    The deployer becomes admin and pauser; `oracle` (default: the deployer) gets ORACLE_ROLE;
    `fee_recipient` defaults to the deployer. `notice_period` (seconds, immutable) is how long
    a payer's close and a price decrease wait; 0 makes them immediate.
    """
    if not 0 <= notice_period <= MAX_NOTICE_PERIOD:
        raise DeployError(
            f"notice period {notice_period} is out of range (0 to {MAX_NOTICE_PERIOD} seconds)"
        )
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        chain_id = w3.eth.chain_id
    except Exception as exc:
        raise DeployError(f"cannot reach the RPC at {rpc_url}: {exc}") from exc
    try:
        account: LocalAccount = Account.from_key(private_key)
    except Exception:
        # The key's text must never reach an error message.
        raise DeployError("the deployer key is not a valid private key") from None
    deployer = Deployer(w3, account)
    admin = account.address
    oracle = to_checksum_address(oracle or admin)
    fee_recipient = to_checksum_address(fee_recipient or admin)
    first_block = w3.eth.block_number + 1
    if token_address is None:
        token, _ = deployer.deploy("TestToken", "Test USD", "tUSD", admin)
        token_addr = token.address
    else:
        token_addr = to_checksum_address(token_address)
    manager, _ = deployer.deploy(
        "StreamManager", token_addr, admin, fee_recipient, fee_bps, notice_period
    )
    vault, _ = deployer.deploy("EscrowVault", token_addr, admin)
    role = manager.functions.ORACLE_ROLE().call()
    deployer.call(manager.functions.grantRole(role, oracle))
    return Deployment(
        chain_id=chain_id,
        deployment_block=first_block,
        token=token_addr,
        stream_manager=manager.address,
        escrow_vault=vault.address,
        deployer=admin,
        oracle=oracle,
        fee_recipient=fee_recipient,
        fee_bps=fee_bps,
        notice_period=notice_period,
    )


def receipt_logs(c: Contract, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
    """Decode every `event` log of contract `c` in `receipt` into plain dicts of its args."""
    ev = getattr(c.events, event)()
    out = []
    for log in receipt["logs"]:
        if log["address"] != c.address:
            continue
        try:
            decoded = ev.process_log(log)
        except Exception:  # noqa: S112 - a log of another event type
            continue
        out.append(dict(decoded["args"]))
    return out
