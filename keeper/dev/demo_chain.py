"""The demo's hands on the chain: its contracts, and the transactions its dev accounts send.

The set-up workload (`keeper.dev.demo_workload`), the keeper's preparation
(`keeper.dev.demo_keeper`) and the workload that keeps coming while the keeper runs
(`keeper.dev.demo_live`) all open streams, create escrows and send as anvil dev accounts; they
do it through one `DemoChain`. web3 here is synchronous: each transaction waits for its block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import dev_key
from keeper.dev.devchain import DEV_ROLES
from keeper.errors import KeeperError
from keeper.ops.deploy import Deployer, contract, receipt_logs


class DemoError(KeeperError):
    """The demo could not be set up."""


@dataclass(frozen=True)
class DemoChain:
    """The deployed contracts on the demo's chain, through one web3 connection."""

    w3: Any
    token: Any
    manager: Any  # StreamManager
    vault: Any  # EscrowVault

    @classmethod
    def connect(cls, rpc_url: str, deployment: Deployment) -> DemoChain:
        """Connect to the node at `rpc_url` and bind the contracts of `deployment`."""
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        return cls(
            w3=w3,
            token=contract(w3, "TestToken", deployment.token),
            manager=contract(w3, "StreamManager", deployment.stream_manager),
            vault=contract(w3, "EscrowVault", deployment.escrow_vault),
        )

    def sender(self, index: int) -> Deployer:
        """Sends as anvil dev account `index` (its nonce is read when it first sends)."""
        return Deployer(self.w3, dev_key(index).account())

    def admin(self) -> Deployer:
        """Sends as the deployer, which holds the contracts' admin roles."""
        return self.sender(DEV_ROLES.deployer)

    def open_stream(
        self,
        sender: Deployer,
        payee: str,
        rate: int,
        deposit: int,
        *,
        price_list: bool = False,
        usage_price: int = 0,
    ) -> int:
        """Open a stream to `payee` (on its price list, or with `usage_price` per unit if not
        0) and return its id."""
        functions = self.manager.functions
        if price_list:
            opening = functions.openStreamOnPriceList(payee, rate, deposit)
        else:
            opening = functions.openStream(payee, rate, deposit)
        (opened,) = receipt_logs(self.manager, sender.call(opening), "StreamOpened")
        stream_id = int(opened["id"])
        if usage_price:
            sender.call(functions.setUsagePrice(stream_id, usage_price))
        return stream_id

    def create_escrow(
        self, sender: Deployer, payee: str, amount: int, timeout: int
    ) -> tuple[int, int]:
        """Deposit `amount` into the vault and put it in escrow for `payee` for `timeout`
        seconds; returns the escrow's id and its expiry (chain time)."""
        sender.call(self.vault.functions.deposit(amount))
        receipt = sender.call(self.vault.functions.createEscrow(payee, amount, timeout))
        (created,) = receipt_logs(self.vault, receipt, "EscrowCreated")
        return int(created["id"]), int(created["expiresAt"])

    def grant_oracle_role(self, addresses: list[str]) -> None:
        """Grant ORACLE_ROLE on StreamManager to `addresses` (sent by the admin)."""
        role = self.manager.functions.ORACLE_ROLE().call()
        admin = self.admin()
        for address in addresses:
            if not self.manager.functions.hasRole(role, address).call():
                admin.call(self.manager.functions.grantRole(role, address))
