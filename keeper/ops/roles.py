"""The contracts' access roles: who holds them, and granting or revoking them (`keeper roles`).

StreamManager and EscrowVault use OpenZeppelin's AccessControl: DEFAULT_ADMIN_ROLE grants and
revokes the others, ORACLE_ROLE (StreamManager only) may record usage, PAUSER_ROLE may pause and
unpause. Role ids are read from the contracts' own constant getters, so a name here can only
ever mean what the deployed contract means by it. Like `keeper.ops.deploy`, an operator tool on
web3's synchronous client: each change waits for its receipt, then reads the role back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address
from web3 import Web3

from keeper.chain.deployment import Deployment
from keeper.chain.keys import PrivateKey
from keeper.errors import KeeperError
from keeper.ops.deploy import Deployer, contract

# The deployment file's name of each contract with roles, and its artifact.
CONTRACTS = {"stream_manager": "StreamManager", "escrow_vault": "EscrowVault"}
# A role's short name: its getter on the contracts, and the contracts that have it.
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("DEFAULT_ADMIN_ROLE", ("stream_manager", "escrow_vault")),
    "oracle": ("ORACLE_ROLE", ("stream_manager",)),
    "pauser": ("PAUSER_ROLE", ("stream_manager", "escrow_vault")),
}
# What `keeper roles grant/revoke` changes; the admin role is handed over with care, by hand.
CHANGEABLE = ("oracle", "pauser")


class RoleError(KeeperError):
    """A role could not be read or changed."""


def role_name(text: str) -> str:
    """The short name of a role given as `oracle`, `ORACLE_ROLE`, `Pauser`, ...; `ValueError`
    when it names no role."""
    name = text.strip().lower().removesuffix("_role")
    if name == "default_admin":
        name = "admin"
    if name not in ROLES:
        raise ValueError(f"no role {text!r}: expected one of {', '.join(sorted(ROLES))}")
    return name


def checked_address(text: str) -> str:
    """`text` as a checksummed address; `ValueError` when it is not an address."""
    if not is_address(text):
        raise ValueError(f"not an Ethereum address: {text!r}")
    return str(to_checksum_address(text))


@dataclass(frozen=True)
class Change:
    """One role changed (or already as asked) on one contract."""

    contract: str  # stream_manager or escrow_vault
    role: str  # the getter's name, e.g. ORACLE_ROLE
    account: str
    holds: bool  # whether the account holds the role now (read back from the chain)
    tx_hash: str | None  # None: nothing was sent, the role was already as asked


class RoleBook:
    """The deployment's contracts with roles, on one node that serves the deployment's chain."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.contracts: dict[str, Any] = {
            key: contract(w3, artifact, getattr(deployment, key))
            for key, artifact in CONTRACTS.items()
        }
        self._ids: dict[tuple[str, str], bytes] = {}

    @classmethod
    def connect(cls, rpc_url: str, deployment: Deployment) -> RoleBook:
        """Connect to `rpc_url`; `RoleError` unless it serves the deployment's chain."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        try:
            chain_id = int(w3.eth.chain_id)
        except Exception as exc:
            raise RoleError(f"cannot reach the RPC: {exc}") from exc
        if chain_id != deployment.chain_id:
            raise RoleError(
                f"the RPC serves chain {chain_id}, the deployment file is for chain "
                f"{deployment.chain_id}",
                help="point chain.rpc_url and chain.deployment_file at the same chain",
            )
        return cls(w3, deployment)

    def role_id(self, key: str, role: str) -> bytes:
        """The id of `role` (short name) on contract `key`, from the contract's getter."""
        getter = ROLES[role][0]
        if (key, getter) not in self._ids:
            value: bytes = getattr(self.contracts[key].functions, getter)().call()
            self._ids[key, getter] = bytes(value)
        return self._ids[key, getter]

    def has(self, key: str, role: str, account: str) -> bool:
        """Whether `account` holds `role` on contract `key`."""
        return bool(self.contracts[key].functions.hasRole(self.role_id(key, role), account).call())

    def held(self, account: str) -> dict[str, list[str]]:
        """The roles (short names) `account` holds, per contract."""
        return {
            key: [r for r, (_, on) in ROLES.items() if key in on and self.has(key, r, account)]
            for key in CONTRACTS
        }

    def change(
        self,
        key: PrivateKey,
        role: str,
        account: str,
        *,
        grant: bool,
        contracts: Sequence[str] | None = None,
    ) -> list[Change]:
        """Grant (or revoke) `role` to `account` on `contracts` (default: each that has the
        role), signed by `key`, which must hold the role's admin role there. A contract where
        the role is already as asked gets no transaction. Each change is read back."""
        getter, having = ROLES[role]
        targets = list(contracts or having)
        for target in targets:
            if target not in having:
                raise RoleError(f"{CONTRACTS[target]} has no {getter}")
        for target in targets:
            admin_role = self.contracts[target].functions.getRoleAdmin(self.role_id(target, role))
            if not self.contracts[target].functions.hasRole(admin_role.call(), key.address).call():
                raise RoleError(
                    f"{key.address} may not {'grant' if grant else 'revoke'} {getter} on "
                    f"{CONTRACTS[target]} {getattr(self.deployment, target)}: it does not "
                    "hold the role's admin role (DEFAULT_ADMIN_ROLE)",
                    help="sign with the admin's key: the deployer "
                    f"({self.deployment.deployer}) unless the admin role was handed on",
                )
        sender = Deployer(self.w3, key.account())
        done = []
        for target in targets:
            functions = self.contracts[target].functions
            tx_hash = None
            if self.has(target, role, account) != grant:
                call = (functions.grantRole if grant else functions.revokeRole)(
                    self.role_id(target, role), account
                )
                try:
                    receipt = sender.send(call.build_transaction({"from": key.address}))
                except KeeperError:
                    raise
                except Exception as exc:
                    # A node's refusal (no gas money, a revert) as a message, never the key.
                    raise RoleError(
                        f"sending {'grantRole' if grant else 'revokeRole'} to "
                        f"{CONTRACTS[target]} failed: {exc}"
                    ) from exc
                tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
            holds = self.has(target, role, account)
            if holds != grant:
                raise RoleError(
                    f"{account} {'still lacks' if grant else 'still holds'} {getter} on "
                    f"{CONTRACTS[target]} after the transaction {tx_hash}"
                )
            done.append(Change(target, getter, account, holds, tx_hash))
        return done
