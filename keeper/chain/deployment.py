"""Deploy the contracts to any RPC endpoint with a given key, and describe the result.

This is an operator tool (and the dev chain's bootstrap), not part of the daemon's hot path, so
it uses web3's synchronous client. It signs locally; the key is never sent anywhere nor printed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, is_hex_address, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.types import Nonce, TxReceipt

from keeper.errors import KeeperError
from keeper.resources import load_artifact

DEFAULT_FEE_BPS = 250
MAX_FEE_BPS = 1000  # StreamManager.MAX_FEE_BPS
# How long a payer's close and a price decrease wait (chain seconds): the payee has that long
# to report the usage it served on the old terms. 0 makes them immediate (tests that want the
# v1 behaviour deploy with it).
DEFAULT_NOTICE_PERIOD = 600
MAX_NOTICE_PERIOD = 2**32 - 1  # the constructor's uint32
DEPLOYMENT_FORMAT = 1


class DeployError(KeeperError):
    """Deploying the contracts failed."""


class DeploymentFileError(KeeperError):
    """The deployment file cannot be read."""


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain: what the keeper's configuration points at."""

    chain_id: int
    deployment_block: int
    token: str
    stream_manager: str
    escrow_vault: str
    deployer: str
    oracle: str
    fee_recipient: str
    fee_bps: int
    notice_period: int = 0
    token_decimals: int = 6
    format: int = field(default=DEPLOYMENT_FORMAT)

    def to_json(self) -> str:
        """Serialise as the deployment file's JSON text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Write the deployment file atomically (write a temp file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "deployment data") -> Deployment:
        """Build from parsed JSON, checking every field: present, of the right type, in range,
        and addresses well-formed with a valid EIP-55 checksum when mixed-case.

        Errors name `source` (e.g. the file), the key, the value found and what is expected.
        """
        if not isinstance(data, dict):
            raise DeploymentFileError(f"{source}: expected a JSON object, found {type(data)!r}")
        fmt = _integer(data, "format", source, low=1, default=DEPLOYMENT_FORMAT)
        if fmt != DEPLOYMENT_FORMAT:
            raise DeploymentFileError(
                f"{source}: format: {fmt} is not a format this keeper reads "
                f"(expected {DEPLOYMENT_FORMAT})",
                help="the file was written by another version of keeper",
            )
        return cls(
            chain_id=_integer(data, "chain_id", source, low=1),
            deployment_block=_integer(data, "deployment_block", source, low=0),
            token=_checked_address(data, "token", source),
            stream_manager=_checked_address(data, "stream_manager", source),
            escrow_vault=_checked_address(data, "escrow_vault", source),
            deployer=_checked_address(data, "deployer", source),
            oracle=_checked_address(data, "oracle", source),
            fee_recipient=_checked_address(data, "fee_recipient", source),
            fee_bps=_integer(data, "fee_bps", source, low=0, high=MAX_FEE_BPS),
            # Files written before notice periods existed describe contracts without one.
            notice_period=_integer(
                data, "notice_period", source, low=0, high=MAX_NOTICE_PERIOD, default=0
            ),
            token_decimals=_integer(data, "token_decimals", source, low=0, high=77, default=6),
            format=fmt,
        )

    @classmethod
    def read(cls, path: Path) -> Deployment:
        """Read and check a deployment file written by `write` (see `from_dict`)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DeploymentFileError(
                f"cannot read deployment file {path}: {exc.strerror}",
                help="run `keeper deploy` (or `keeper devchain`) to create it",
            ) from exc
        except UnicodeDecodeError:
            raise DeploymentFileError(f"deployment file {path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DeploymentFileError(
                f"deployment file {path} is not JSON: {exc}",
                help="it is written by `keeper deploy`; restore it from there",
            ) from exc
        return cls.from_dict(data, source=f"deployment file {path}")


def _integer(
    data: dict[str, Any],
    key: str,
    source: str,
    *,
    low: int,
    high: int | None = None,
    default: int | None = None,
) -> int:
    value = data.get(key, default)
    if value is None:
        raise DeploymentFileError(f"{source}: {key} is missing")
    # JSON has no int type of its own: refuse true/false and 1.5, take 1 and "1" (older files).
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DeploymentFileError(f"{source}: {key}: {value!r} is not an integer")
    try:
        number = int(value)
    except ValueError:
        raise DeploymentFileError(f"{source}: {key}: {value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DeploymentFileError(f"{source}: {key}: {number} is out of range (expected {span})")
    return number


def _checked_address(data: dict[str, Any], key: str, source: str) -> str:
    """The checksummed form of the address at `key`, refusing a mixed-case address whose
    checksum is wrong (a typo in a hand-edited file: never silently "corrected")."""
    if key not in data:
        raise DeploymentFileError(f"{source}: {key} is missing")
    value = data[key]
    if not isinstance(value, str) or not is_hex_address(value):
        raise DeploymentFileError(
            f"{source}: {key}: {value!r} is not an address (expected 0x and 40 hex digits)"
        )
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise DeploymentFileError(
            f"{source}: {key}: {value!r} has an invalid EIP-55 checksum (expected the "
            "checksummed address `keeper deploy` wrote, or all lowercase)",
            help="a mixed-case address whose checksum does not match is usually a typo: "
            "compare it with the deployment's output",
        )
    return str(to_checksum_address(value))


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
