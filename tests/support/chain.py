"""Contracts deployed for a test, with the well-known development key."""

from __future__ import annotations

from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3

from keeper.anvil import DEV_MNEMONIC
from keeper.deploy import DEFAULT_FEE_BPS, Deployer, Deployment

# anvil's account 0 for DEV_MNEMONIC; a public, well-known development key.
DEV_KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
assert DEV_MNEMONIC  # the key above belongs to this mnemonic


def deploy_contracts(
    url: str,
    key: str = DEV_KEY0,
    *,
    oracle: str | None = None,
    fee_recipient: str | None = None,
    fee_bps: int = DEFAULT_FEE_BPS,
    notice_period: int = 0,
) -> Deployment:
    """Deploy TestToken, StreamManager (with `notice_period`) and EscrowVault for the tests.

    The tests choose the notice period themselves (0: closes and price decreases at once),
    so they do not depend on the operator tool's default. The deployer is admin and pauser;
    `oracle` (default: the deployer) gets ORACLE_ROLE.
    """
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    account = Account.from_key(key)
    deployer = Deployer(w3, account)
    admin = str(account.address)
    oracle = to_checksum_address(oracle or admin)
    fee_recipient = to_checksum_address(fee_recipient or admin)
    first_block = int(w3.eth.block_number) + 1
    token, _ = deployer.deploy("TestToken", "Test USD", "tUSD", admin)
    manager, _ = deployer.deploy(
        "StreamManager", token.address, admin, fee_recipient, fee_bps, notice_period
    )
    vault, _ = deployer.deploy("EscrowVault", token.address, admin)
    deployer.call(manager.functions.grantRole(manager.functions.ORACLE_ROLE().call(), oracle))
    return Deployment(
        chain_id=int(w3.eth.chain_id),
        deployment_block=first_block,
        token=str(token.address),
        stream_manager=str(manager.address),
        escrow_vault=str(vault.address),
        deployer=admin,
        oracle=oracle,
        fee_recipient=fee_recipient,
        fee_bps=fee_bps,
        notice_period=notice_period,
    )
