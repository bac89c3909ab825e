"""TestToken: the USDC-like dev token (6 decimals, minted by its owner)."""

from __future__ import annotations

from typing import Any

from eth_utils import keccak, to_checksum_address

from tests.contracts.conftest import TOKEN, Chain, simulated_revert

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
FUNDED = 1_000_000 * TOKEN  # what the fixture mints to each of payer, payer2 and other


def expect_revert(chain: Chain, fn: Any, sender: str, error: str, *args: Any) -> None:
    """Assert `fn` reverts with `error(*args)` in simulation, then on chain."""
    types = next(
        [i["type"] for i in item["inputs"]]
        for item in fn.contract_abi
        if item.get("type") == "error" and item["name"] == error
    )
    data = simulated_revert(fn, sender)
    assert data[:10] == "0x" + keccak(text=f"{error}({','.join(types)})")[:4].hex(), data
    decoded = tuple(
        to_checksum_address(v) if isinstance(v, str) else v
        for v in chain.w3.codec.decode(types, bytes.fromhex(data[10:]))
    )
    assert decoded == args
    chain.reverts(fn, sender, error)


def test_metadata(chain: Chain) -> None:
    t = chain.token.functions
    assert t.decimals().call() == 6
    assert t.name().call() == "Test USD"
    assert t.symbol().call() == "tUSD"
    assert t.owner().call() == chain.admin
    assert t.totalSupply().call() == 3 * FUNDED
    assert chain.balance(chain.payer) == FUNDED
    assert chain.balance(chain.payee) == 0


def test_mint_by_owner(chain: Chain) -> None:
    amount = 123 * TOKEN + 456
    supply = chain.token.functions.totalSupply().call()
    receipt = chain.tx(chain.token.functions.mint(chain.payee, amount), chain.admin)
    assert chain.events(chain.token, receipt, "Transfer") == [
        {"from": ZERO_ADDRESS, "to": chain.payee, "value": amount}
    ]
    assert chain.balance(chain.payee) == amount
    assert chain.token.functions.totalSupply().call() == supply + amount


def test_mint_by_anyone_else_refused(chain: Chain) -> None:
    supply = chain.token.functions.totalSupply().call()
    for who in (chain.other, chain.payer, chain.oracle):
        expect_revert(
            chain,
            chain.token.functions.mint(who, TOKEN),
            who,
            "OwnableUnauthorizedAccount",
            who,
        )
    assert chain.token.functions.totalSupply().call() == supply
    assert chain.balance(chain.other) == FUNDED


def test_transfer(chain: Chain) -> None:
    amount = 42 * TOKEN + 1
    receipt = chain.tx(chain.token.functions.transfer(chain.payee, amount), chain.payer)
    assert chain.events(chain.token, receipt, "Transfer") == [
        {"from": chain.payer, "to": chain.payee, "value": amount}
    ]
    assert chain.balance(chain.payer) == FUNDED - amount
    assert chain.balance(chain.payee) == amount
    assert chain.token.functions.totalSupply().call() == 3 * FUNDED


def test_transfer_failures(chain: Chain) -> None:
    t = chain.token.functions
    expect_revert(
        chain,
        t.transfer(chain.payer, 1),
        chain.payee,
        "ERC20InsufficientBalance",
        chain.payee,
        0,
        1,
    )
    expect_revert(
        chain,
        t.transfer(chain.payee, FUNDED + 1),
        chain.payer,
        "ERC20InsufficientBalance",
        chain.payer,
        FUNDED,
        FUNDED + 1,
    )
    expect_revert(
        chain, t.transfer(ZERO_ADDRESS, 1), chain.payer, "ERC20InvalidReceiver", ZERO_ADDRESS
    )
    assert chain.balance(chain.payer) == FUNDED
    assert chain.balance(chain.payee) == 0


def test_approve_and_transfer_from(chain: Chain) -> None:
    t = chain.token.functions
    allowance, spent = 10 * TOKEN, 4 * TOKEN + 3
    receipt = chain.tx(t.approve(chain.other, allowance), chain.payer)
    assert chain.events(chain.token, receipt, "Approval") == [
        {"owner": chain.payer, "spender": chain.other, "value": allowance}
    ]
    assert t.allowance(chain.payer, chain.other).call() == allowance

    receipt = chain.tx(t.transferFrom(chain.payer, chain.payee2, spent), chain.other)
    assert chain.events(chain.token, receipt, "Transfer") == [
        {"from": chain.payer, "to": chain.payee2, "value": spent}
    ]
    assert t.allowance(chain.payer, chain.other).call() == allowance - spent
    assert chain.balance(chain.payer) == FUNDED - spent
    assert chain.balance(chain.payee2) == spent
    assert chain.balance(chain.other) == FUNDED

    expect_revert(
        chain,
        t.transferFrom(chain.payer, chain.payee2, allowance - spent + 1),
        chain.other,
        "ERC20InsufficientAllowance",
        chain.other,
        allowance - spent,
        allowance - spent + 1,
    )
    assert chain.balance(chain.payee2) == spent

    # An unlimited approval (the fixture's, to the vault) is not consumed by spending.
    assert t.allowance(chain.payer, chain.vault.address).call() == 2**256 - 1
    chain.tx(chain.vault.functions.deposit(TOKEN), chain.payer)
    assert t.allowance(chain.payer, chain.vault.address).call() == 2**256 - 1
