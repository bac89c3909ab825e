"""Something for a keeper on a dev chain to do: a stream or an escrow opened by an anvil dev
account (`keeper dev open-stream`, `keeper dev open-escrow`).

Only for a chain `keeper devchain` (or `keeper deploy` with anvil's account 0) set up: the payer
is given the test tokens it needs by the token's owner, dev account 0, and approves the contract
for them, so one command opens a stream or an escrow from nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import dev_key
from keeper.dev.demo_chain import DemoChain, DemoError
from keeper.dev.devchain import DEV_ROLES


@dataclass(frozen=True)
class Opened:
    """A stream or an escrow opened: its id, the two accounts and, for an escrow, its expiry."""

    id: int
    payer: str
    payee: str
    expires_at: int | None = None


def _connect(rpc_url: str, deployment: Deployment) -> DemoChain:
    chain = DemoChain.connect(rpc_url, deployment)
    owner = str(chain.token.functions.owner().call())
    if owner != dev_key(DEV_ROLES.deployer).address:
        raise DemoError(
            f"the token {deployment.token} is not the test token of a dev chain (its owner is "
            f"{owner}, not anvil's dev account {DEV_ROLES.deployer})",
            help="these commands are for `keeper devchain`; on another chain, open streams "
            "and escrows with the payer's own wallet",
        )
    return chain


def _fund(chain: DemoChain, payer: int, amount: int, spender: str) -> None:
    """Mint the payer what it lacks of `amount` and let `spender` take it."""
    address = dev_key(payer).address
    lacking = amount - int(chain.token.functions.balanceOf(address).call())
    if lacking > 0:
        chain.admin().call(chain.token.functions.mint(address, lacking))
    if int(chain.token.functions.allowance(address, spender).call()) < amount:
        chain.sender(payer).call(chain.token.functions.approve(spender, amount))


def open_stream(
    rpc_url: str,
    deployment: Deployment,
    *,
    payer: int,
    payee: int,
    rate: int,
    deposit: int,
    usage_price: int = 0,
) -> Opened:
    """Dev account `payer` opens a stream to dev account `payee` at `rate` base units per
    second with `deposit` (and `usage_price` per usage unit, unless 0)."""
    chain = _connect(rpc_url, deployment)
    _fund(chain, payer, deposit, chain.manager.address)
    to = dev_key(payee).address
    stream_id = chain.open_stream(chain.sender(payer), to, rate, deposit, usage_price=usage_price)
    return Opened(stream_id, dev_key(payer).address, to)


def open_escrow(
    rpc_url: str, deployment: Deployment, *, payer: int, payee: int, amount: int, timeout: int
) -> Opened:
    """Dev account `payer` puts `amount` in escrow for dev account `payee` for `timeout`
    seconds."""
    chain = _connect(rpc_url, deployment)
    _fund(chain, payer, amount, chain.vault.address)
    to = dev_key(payee).address
    escrow_id, expires_at = chain.create_escrow(chain.sender(payer), to, amount, timeout)
    return Opened(escrow_id, dev_key(payer).address, to, expires_at)
