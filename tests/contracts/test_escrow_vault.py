"""EscrowVault: every function, its events (all fields, post-state included) and failure modes.

Every expected figure is computed here from the test's inputs; balances are checked on both
sides (token balances and the vault's available/locked ledger), and the vault's token balance is
held equal to the sum of everything it owes.
"""

from __future__ import annotations

from typing import Any

from eth_utils import keccak, to_checksum_address
from web3 import Web3

from tests.contracts.conftest import TOKEN, Chain, simulated_revert

DAY = 24 * 60 * 60
DEFAULT_TIMEOUT = 7 * DAY
MAX_TIMEOUT = 3650 * DAY
UINT88_MAX = 2**88 - 1
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

STATUS_NONE, STATUS_OPEN, STATUS_RELEASED, STATUS_REFUNDED = 0, 1, 2, 3
SKIP_UNKNOWN, SKIP_NOT_OPEN, SKIP_NOT_EXPIRED = 1, 2, 3


# -------------------------------------------------------------------------------- helpers


def _error_types(abi: list[dict[str, Any]], error: str) -> list[str]:
    for item in abi:
        if item.get("type") == "error" and item["name"] == error:
            return [i["type"] for i in item["inputs"]]
    raise AssertionError(f"no error {error} in the ABI")


def _normalise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


def expect_revert(
    chain: Chain,
    fn: Any,
    sender: str,
    error: str,
    *args: Any,
    abi: Any = None,
) -> None:
    """Assert `fn` reverts with custom error `error(*args)`, in simulation and on chain.

    `abi` names where the error is declared when it is not in `fn`'s own contract (an ERC-20
    error bubbling up through the vault).
    """
    types = _error_types(abi if abi is not None else fn.contract_abi, error)
    selector = "0x" + keccak(text=f"{error}({','.join(types)})")[:4].hex()
    data = simulated_revert(fn, sender)
    assert data[:10] == selector, f"expected {error}, got revert data {data!r}"
    raw = chain.w3.codec.decode(types, bytes.fromhex(data[10:]))
    decoded = tuple(_normalise(v) for v in raw)
    assert decoded == args, f"{error} args {decoded!r} != expected {args!r}"
    if abi is None:
        chain.reverts(fn, sender, error)
    else:
        tx_hash = fn.transact({"from": sender, "gas": 2_000_000})
        receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.005)
        assert receipt["status"] == 0


def vault_logs(chain: Chain, receipt: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every vault event in `receipt`, in log order, as (name, args)."""
    by_topic: dict[bytes, str] = {}
    vault_abi: Any = chain.vault.abi
    for item in vault_abi:
        if item.get("type") == "event":
            sig = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            by_topic[keccak(text=sig)] = item["name"]
    out: list[tuple[str, dict[str, Any]]] = []
    for log in receipt["logs"]:
        if log["address"] != chain.vault.address:
            continue
        name = by_topic[bytes(log["topics"][0])]
        decoded = getattr(chain.vault.events, name)().process_log(log)
        out.append((name, dict(decoded["args"])))
    return out


def assert_solvent(chain: Chain) -> None:
    """The vault holds exactly what its ledger owes every account (available + locked)."""
    accounts = chain.w3.eth.accounts
    owed = sum(sum(chain.vault_balance(a)) for a in accounts)
    assert chain.balance(chain.vault.address) == owed


def escrow_tuple(chain: Chain, eid: int) -> tuple[str, str, int, int, int]:
    e = chain.escrow(eid)
    return (
        str(e["payer"]),
        str(e["payee"]),
        int(e["amount"]),
        int(e["expires_at"]),
        int(e["status"]),
    )


def created(chain: Chain, receipt: dict[str, Any]) -> dict[str, Any]:
    (ev,) = chain.events(chain.vault, receipt, "EscrowCreated")
    return ev


def extra_payers(chain: Chain) -> list[str]:
    """The two dev accounts the fixture leaves unused, funded like the others."""
    accounts: Any = chain.w3.eth.accounts
    extra: list[str] = [str(a) for a in accounts[8:10]]
    for who in extra:
        chain.fund(who, 1_000_000 * TOKEN)
    return extra


# -------------------------------------------------------------------------------- views


def test_constants_and_wiring(chain: Chain) -> None:
    v = chain.vault.functions
    assert v.token().call() == chain.token.address
    assert v.DEFAULT_TIMEOUT().call() == DEFAULT_TIMEOUT
    assert v.MAX_TIMEOUT().call() == MAX_TIMEOUT
    assert v.nextEscrowId().call() == 1
    assert v.PAUSER_ROLE().call() == Web3.keccak(text="PAUSER_ROLE")
    assert (
        v.STATUS_NONE().call(),
        v.STATUS_OPEN().call(),
        v.STATUS_RELEASED().call(),
        v.STATUS_REFUNDED().call(),
    ) == (STATUS_NONE, STATUS_OPEN, STATUS_RELEASED, STATUS_REFUNDED)
    assert (v.SKIP_UNKNOWN().call(), v.SKIP_NOT_OPEN().call(), v.SKIP_NOT_EXPIRED().call()) == (
        SKIP_UNKNOWN,
        SKIP_NOT_OPEN,
        SKIP_NOT_EXPIRED,
    )
    assert v.hasRole(b"\x00" * 32, chain.admin).call()
    assert v.hasRole(v.PAUSER_ROLE().call(), chain.admin).call()
    assert not v.hasRole(v.PAUSER_ROLE().call(), chain.other).call()
    assert not v.paused().call()
    assert escrow_tuple(chain, 1) == (ZERO_ADDRESS, ZERO_ADDRESS, 0, 0, STATUS_NONE)
    assert chain.vault_balance(chain.payer) == (0, 0)


# -------------------------------------------------------------------------------- deposit


def test_deposit_moves_tokens_and_emits_post_state(chain: Chain) -> None:
    first, second = 250 * TOKEN, 3 * TOKEN + 7
    tokens_before = chain.balance(chain.payer)
    vault_tokens_before = chain.balance(chain.vault.address)

    receipt = chain.tx(chain.vault.functions.deposit(first), chain.payer)
    assert chain.events(chain.vault, receipt, "Deposited") == [
        {"account": chain.payer, "amount": first, "availableAfter": first}
    ]
    assert chain.events(chain.token, receipt, "Transfer") == [
        {"from": chain.payer, "to": chain.vault.address, "value": first}
    ]
    assert chain.balance(chain.payer) == tokens_before - first
    assert chain.balance(chain.vault.address) == vault_tokens_before + first
    assert chain.vault_balance(chain.payer) == (first, 0)

    receipt = chain.tx(chain.vault.functions.deposit(second), chain.payer)
    assert chain.events(chain.vault, receipt, "Deposited") == [
        {"account": chain.payer, "amount": second, "availableAfter": first + second}
    ]
    assert chain.balance(chain.payer) == tokens_before - first - second
    assert chain.vault_balance(chain.payer) == (first + second, 0)
    # Another depositor's ledger is separate.
    assert chain.vault_balance(chain.payer2) == (0, 0)
    assert_solvent(chain)


def test_deposit_zero_reverts(chain: Chain) -> None:
    tokens_before = chain.balance(chain.payer)
    expect_revert(chain, chain.vault.functions.deposit(0), chain.payer, "ZeroAmount")
    assert chain.balance(chain.payer) == tokens_before
    assert chain.vault_balance(chain.payer) == (0, 0)


def test_deposit_above_uint128_reverts(chain: Chain) -> None:
    expect_revert(chain, chain.vault.functions.deposit(2**128), chain.payer, "AmountTooLarge")
    assert chain.vault_balance(chain.payer) == (0, 0)


def test_deposit_without_allowance_reverts_in_the_token(chain: Chain) -> None:
    amount = 5 * TOKEN
    chain.tx(chain.token.functions.mint(chain.payee2, amount), chain.admin)
    expect_revert(
        chain,
        chain.vault.functions.deposit(amount),
        chain.payee2,
        "ERC20InsufficientAllowance",
        chain.vault.address,
        0,
        amount,
        abi=chain.token.abi,
    )
    assert chain.balance(chain.payee2) == amount
    assert chain.vault_balance(chain.payee2) == (0, 0)


def test_deposit_beyond_token_balance_reverts_in_the_token(chain: Chain) -> None:
    held = chain.balance(chain.payer)
    expect_revert(
        chain,
        chain.vault.functions.deposit(held + 1),
        chain.payer,
        "ERC20InsufficientBalance",
        chain.payer,
        held,
        held + 1,
        abi=chain.token.abi,
    )
    assert chain.balance(chain.payer) == held
    assert chain.vault_balance(chain.payer) == (0, 0)


# -------------------------------------------------------------------------------- withdraw


def test_withdraw_part_then_everything(chain: Chain) -> None:
    deposit, part = 100 * TOKEN, 30 * TOKEN + 1
    tokens_before = chain.balance(chain.payer)
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)

    receipt = chain.tx(chain.vault.functions.withdraw(part), chain.payer)
    assert chain.events(chain.vault, receipt, "Withdrawn") == [
        {"account": chain.payer, "amount": part, "availableAfter": deposit - part}
    ]
    assert chain.events(chain.token, receipt, "Transfer") == [
        {"from": chain.vault.address, "to": chain.payer, "value": part}
    ]
    assert chain.vault_balance(chain.payer) == (deposit - part, 0)
    assert chain.balance(chain.payer) == tokens_before - deposit + part
    assert_solvent(chain)

    rest = deposit - part
    receipt = chain.tx(chain.vault.functions.withdraw(rest), chain.payer)
    assert chain.events(chain.vault, receipt, "Withdrawn") == [
        {"account": chain.payer, "amount": rest, "availableAfter": 0}
    ]
    assert chain.vault_balance(chain.payer) == (0, 0)
    assert chain.balance(chain.payer) == tokens_before
    assert chain.balance(chain.vault.address) == 0
    # Nothing left: even one unit more is refused.
    expect_revert(
        chain, chain.vault.functions.withdraw(1), chain.payer, "InsufficientBalance", 0, 1
    )


def test_withdraw_zero_reverts(chain: Chain) -> None:
    chain.tx(chain.vault.functions.deposit(TOKEN), chain.payer)
    expect_revert(chain, chain.vault.functions.withdraw(0), chain.payer, "ZeroAmount")
    assert chain.vault_balance(chain.payer) == (TOKEN, 0)


def test_withdraw_more_than_available_reverts(chain: Chain) -> None:
    deposit = 10 * TOKEN
    expect_revert(
        chain, chain.vault.functions.withdraw(1), chain.payer, "InsufficientBalance", 0, 1
    )
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    tokens = chain.balance(chain.payer)
    expect_revert(
        chain,
        chain.vault.functions.withdraw(deposit + 1),
        chain.payer,
        "InsufficientBalance",
        deposit,
        deposit + 1,
    )
    assert chain.vault_balance(chain.payer) == (deposit, 0)
    assert chain.balance(chain.payer) == tokens
    # Someone else cannot draw on the payer's deposit.
    expect_revert(
        chain, chain.vault.functions.withdraw(1), chain.other, "InsufficientBalance", 0, 1
    )


def test_withdraw_cannot_touch_locked_funds(chain: Chain) -> None:
    deposit, locked = 100 * TOKEN, 60 * TOKEN
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    chain.tx(chain.vault.functions.createEscrow(chain.payee, locked, 0), chain.payer)
    free = deposit - locked
    expect_revert(
        chain,
        chain.vault.functions.withdraw(free + 1),
        chain.payer,
        "InsufficientBalance",
        free,
        free + 1,
    )
    receipt = chain.tx(chain.vault.functions.withdraw(free), chain.payer)
    assert chain.events(chain.vault, receipt, "Withdrawn") == [
        {"account": chain.payer, "amount": free, "availableAfter": 0}
    ]
    assert chain.vault_balance(chain.payer) == (0, locked)
    assert chain.balance(chain.vault.address) == locked
    assert_solvent(chain)


# -------------------------------------------------------------------------------- createEscrow


def test_create_escrow_locks_funds_and_emits_every_field(chain: Chain) -> None:
    deposit, amount, timeout = 100 * TOKEN, 40 * TOKEN + 3, 3600
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    tokens = chain.balance(chain.payer)
    vault_tokens = chain.balance(chain.vault.address)

    fn = chain.vault.functions.createEscrow(chain.payee, amount, timeout)
    assert fn.call({"from": chain.payer}) == 1
    receipt = chain.tx(fn, chain.payer)
    expires_at = chain.block_time(receipt) + timeout
    assert chain.events(chain.vault, receipt, "EscrowCreated") == [
        {
            "id": 1,
            "payer": chain.payer,
            "payee": chain.payee,
            "amount": amount,
            "expiresAt": expires_at,
            "payerAvailableAfter": deposit - amount,
        }
    ]
    assert vault_logs(chain, receipt) == [
        ("EscrowCreated", chain.events(chain.vault, receipt, "EscrowCreated")[0])
    ]
    assert chain.vault_balance(chain.payer) == (deposit - amount, amount)
    assert chain.vault_balance(chain.payee) == (0, 0)
    # Creating moves no tokens.
    assert chain.balance(chain.payer) == tokens
    assert chain.balance(chain.vault.address) == vault_tokens
    assert escrow_tuple(chain, 1) == (chain.payer, chain.payee, amount, expires_at, STATUS_OPEN)
    assert chain.vault.functions.nextEscrowId().call() == 2
    assert_solvent(chain)


def test_create_escrow_default_timeout_is_seven_days(chain: Chain) -> None:
    amount = 5 * TOKEN
    eid, receipt = chain.create_escrow(amount, 0)
    expires_at = chain.block_time(receipt) + 604_800
    assert created(chain, receipt)["expiresAt"] == expires_at
    assert escrow_tuple(chain, eid) == (chain.payer, chain.payee, amount, expires_at, STATUS_OPEN)


def test_create_escrow_maximum_timeout(chain: Chain) -> None:
    chain.tx(chain.vault.functions.deposit(10 * TOKEN), chain.payer)
    expect_revert(
        chain,
        chain.vault.functions.createEscrow(chain.payee, TOKEN, MAX_TIMEOUT + 1),
        chain.payer,
        "TimeoutTooLong",
    )
    expect_revert(
        chain,
        chain.vault.functions.createEscrow(chain.payee, TOKEN, 2**256 - 1),
        chain.payer,
        "TimeoutTooLong",
    )
    assert chain.vault_balance(chain.payer) == (10 * TOKEN, 0)
    assert chain.vault.functions.nextEscrowId().call() == 1

    receipt = chain.tx(
        chain.vault.functions.createEscrow(chain.payee, TOKEN, MAX_TIMEOUT), chain.payer
    )
    assert created(chain, receipt)["expiresAt"] == chain.block_time(receipt) + MAX_TIMEOUT
    assert escrow_tuple(chain, 1)[3] == chain.block_time(receipt) + MAX_TIMEOUT


def test_create_escrow_argument_errors(chain: Chain) -> None:
    deposit = 5 * TOKEN
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    f = chain.vault.functions
    expect_revert(chain, f.createEscrow(ZERO_ADDRESS, TOKEN, 0), chain.payer, "ZeroAddress")
    # An escrow released to the vault itself could never be withdrawn.
    expect_revert(chain, f.createEscrow(chain.vault.address, TOKEN, 0), chain.payer, "ZeroAddress")
    expect_revert(chain, f.createEscrow(chain.payee, 0, 0), chain.payer, "ZeroAmount")
    expect_revert(
        chain, f.createEscrow(chain.payee, UINT88_MAX + 1, 0), chain.payer, "AmountTooLarge"
    )
    expect_revert(
        chain,
        f.createEscrow(chain.payee, deposit + 1, 0),
        chain.payer,
        "InsufficientBalance",
        deposit,
        deposit + 1,
    )
    # No deposit at all.
    expect_revert(
        chain, f.createEscrow(chain.payee, 1, 0), chain.payer2, "InsufficientBalance", 0, 1
    )
    assert chain.vault_balance(chain.payer) == (deposit, 0)
    assert chain.vault_balance(chain.payer2) == (0, 0)
    assert f.nextEscrowId().call() == 1
    assert escrow_tuple(chain, 1) == (ZERO_ADDRESS, ZERO_ADDRESS, 0, 0, STATUS_NONE)


def test_create_escrow_of_the_whole_deposit(chain: Chain) -> None:
    deposit = 7 * TOKEN
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    receipt = chain.tx(chain.vault.functions.createEscrow(chain.payee, deposit, 0), chain.payer)
    assert created(chain, receipt)["payerAvailableAfter"] == 0
    assert chain.vault_balance(chain.payer) == (0, deposit)


def test_escrow_ids_increase_from_one(chain: Chain) -> None:
    specs = [
        (chain.payer, chain.payee, 1 * TOKEN),
        (chain.payer2, chain.payee2, 2 * TOKEN),
        (chain.payer, chain.payee2, 3 * TOKEN),
        (chain.other, chain.payee, 4 * TOKEN),
    ]
    for expected_id, (payer, payee, amount) in enumerate(specs, start=1):
        eid, receipt = chain.create_escrow(amount, 60, payer=payer, payee=payee)
        assert eid == expected_id
        assert created(chain, receipt)["payer"] == payer
        assert escrow_tuple(chain, eid)[:3] == (payer, payee, amount)
    assert chain.vault.functions.nextEscrowId().call() == len(specs) + 1
    assert escrow_tuple(chain, len(specs) + 1)[4] == STATUS_NONE
    # Several open escrows of one payer add up in `locked`.
    assert chain.vault_balance(chain.payer) == (0, 1 * TOKEN + 3 * TOKEN)
    assert_solvent(chain)


# -------------------------------------------------------------------------------- releaseEscrow


def test_release_credits_payee(chain: Chain) -> None:
    deposit, amount = 100 * TOKEN, 40 * TOKEN + 9
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    receipt = chain.tx(chain.vault.functions.createEscrow(chain.payee, amount, 3600), chain.payer)
    eid, expires_at = 1, created(chain, receipt)["expiresAt"]
    vault_tokens = chain.balance(chain.vault.address)

    receipt = chain.tx(chain.vault.functions.releaseEscrow(eid), chain.payer)
    assert vault_logs(chain, receipt) == [
        (
            "EscrowReleased",
            {"id": eid, "payee": chain.payee, "amount": amount, "payeeAvailableAfter": amount},
        )
    ]
    assert chain.vault_balance(chain.payer) == (deposit - amount, 0)
    assert chain.vault_balance(chain.payee) == (amount, 0)
    assert chain.balance(chain.vault.address) == vault_tokens  # credited, not transferred
    assert chain.balance(chain.payee) == 0
    assert escrow_tuple(chain, eid) == (
        chain.payer,
        chain.payee,
        amount,
        expires_at,
        STATUS_RELEASED,
    )
    assert_solvent(chain)

    # A second release to the same payee adds to what it already has.
    second = 2 * TOKEN + 1
    receipt = chain.tx(chain.vault.functions.createEscrow(chain.payee, second, 0), chain.payer)
    eid2 = created(chain, receipt)["id"]
    assert eid2 == eid + 1
    receipt = chain.tx(chain.vault.functions.releaseEscrow(eid2), chain.payer)
    assert chain.events(chain.vault, receipt, "EscrowReleased") == [
        {"id": eid2, "payee": chain.payee, "amount": second, "payeeAvailableAfter": amount + second}
    ]
    assert chain.vault_balance(chain.payee) == (amount + second, 0)
    assert chain.vault_balance(chain.payer) == (deposit - amount - second, 0)

    # The payee withdraws its credit as tokens.
    receipt = chain.tx(chain.vault.functions.withdraw(amount + second), chain.payee)
    assert chain.events(chain.vault, receipt, "Withdrawn") == [
        {"account": chain.payee, "amount": amount + second, "availableAfter": 0}
    ]
    assert chain.balance(chain.payee) == amount + second
    assert chain.vault_balance(chain.payee) == (0, 0)
    assert_solvent(chain)


def test_release_leaves_other_escrows_of_the_payer_locked(chain: Chain) -> None:
    a, b = 3 * TOKEN, 5 * TOKEN
    id_a, _ = chain.create_escrow(a, 0)
    id_b, _ = chain.create_escrow(b, 0, payee=chain.payee2)
    chain.tx(chain.vault.functions.releaseEscrow(id_b), chain.payer)
    assert chain.vault_balance(chain.payer) == (0, a)
    assert chain.vault_balance(chain.payee2) == (b, 0)
    assert chain.vault_balance(chain.payee) == (0, 0)
    assert escrow_tuple(chain, id_a)[4] == STATUS_OPEN
    assert escrow_tuple(chain, id_b)[4] == STATUS_RELEASED


def test_release_only_by_payer(chain: Chain) -> None:
    amount = 8 * TOKEN
    eid, _ = chain.create_escrow(amount, 3600)
    before = escrow_tuple(chain, eid)
    for who in (chain.payee, chain.other, chain.admin):
        expect_revert(chain, chain.vault.functions.releaseEscrow(eid), who, "NotPayer", eid)
    assert escrow_tuple(chain, eid) == before
    assert chain.vault_balance(chain.payer) == (0, amount)
    assert chain.vault_balance(chain.payee) == (0, 0)


def test_release_twice_and_unknown(chain: Chain) -> None:
    amount = 2 * TOKEN
    eid, _ = chain.create_escrow(amount, 3600)
    chain.tx(chain.vault.functions.releaseEscrow(eid), chain.payer)
    expect_revert(
        chain, chain.vault.functions.releaseEscrow(eid), chain.payer, "EscrowNotOpen", eid
    )
    assert chain.vault_balance(chain.payee) == (amount, 0)
    assert chain.vault_balance(chain.payer) == (0, 0)
    for unknown in (999, 0, eid + 1):
        expect_revert(
            chain,
            chain.vault.functions.releaseEscrow(unknown),
            chain.payer,
            "UnknownEscrow",
            unknown,
        )


# -------------------------------------------------------------------------------- refundEscrow


def test_payer_refund_before_expiry_refused(chain: Chain) -> None:
    amount, timeout = 6 * TOKEN, 1000
    eid, receipt = chain.create_escrow(amount, timeout)
    expires_at = chain.block_time(receipt) + timeout
    chain.set_next_time(expires_at - 1)
    expect_revert(
        chain,
        chain.vault.functions.refundEscrow(eid),
        chain.payer,
        "NotExpired",
        eid,
        expires_at,
    )
    assert chain.now() == expires_at - 1  # the on-chain attempt ran one second before expiry
    assert escrow_tuple(chain, eid) == (chain.payer, chain.payee, amount, expires_at, STATUS_OPEN)
    assert chain.vault_balance(chain.payer) == (0, amount)


def test_payer_refund_at_exact_expiry(chain: Chain) -> None:
    deposit, amount, timeout = 50 * TOKEN, 6 * TOKEN + 5, 1000
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer)
    receipt = chain.tx(
        chain.vault.functions.createEscrow(chain.payee, amount, timeout), chain.payer
    )
    eid = created(chain, receipt)["id"]
    expires_at = chain.block_time(receipt) + timeout
    vault_tokens = chain.balance(chain.vault.address)

    chain.set_next_time(expires_at)
    receipt = chain.tx(chain.vault.functions.refundEscrow(eid), chain.payer)
    assert chain.block_time(receipt) == expires_at
    assert vault_logs(chain, receipt) == [
        (
            "EscrowRefunded",
            {"id": eid, "payer": chain.payer, "amount": amount, "payerAvailableAfter": deposit},
        )
    ]
    assert chain.vault_balance(chain.payer) == (deposit, 0)
    assert chain.vault_balance(chain.payee) == (0, 0)
    assert chain.balance(chain.vault.address) == vault_tokens
    assert escrow_tuple(chain, eid) == (ZERO_ADDRESS, chain.payee, 0, expires_at, STATUS_REFUNDED)
    assert_solvent(chain)


def test_payer_refund_after_expiry(chain: Chain) -> None:
    amount, timeout = 4 * TOKEN, 100
    eid, receipt = chain.create_escrow(amount, timeout, payee=chain.payee2)
    expires_at = chain.block_time(receipt) + timeout
    chain.advance(timeout + 50)
    receipt = chain.tx(chain.vault.functions.refundEscrow(eid), chain.payer)
    assert chain.events(chain.vault, receipt, "EscrowRefunded") == [
        {"id": eid, "payer": chain.payer, "amount": amount, "payerAvailableAfter": amount}
    ]
    assert chain.vault_balance(chain.payer) == (amount, 0)
    assert escrow_tuple(chain, eid) == (ZERO_ADDRESS, chain.payee2, 0, expires_at, STATUS_REFUNDED)
    # The refunded deposit can be withdrawn.
    tokens = chain.balance(chain.payer)
    chain.tx(chain.vault.functions.withdraw(amount), chain.payer)
    assert chain.balance(chain.payer) == tokens + amount
    assert chain.vault_balance(chain.payer) == (0, 0)
    assert_solvent(chain)


def test_admin_refunds_any_time(chain: Chain) -> None:
    deposit, amount, timeout = 20 * TOKEN, 9 * TOKEN + 1, 30 * DAY
    chain.tx(chain.vault.functions.deposit(deposit), chain.payer2)
    receipt = chain.tx(
        chain.vault.functions.createEscrow(chain.payee, amount, timeout), chain.payer2
    )
    eid = created(chain, receipt)["id"]
    expires_at = chain.block_time(receipt) + timeout

    receipt = chain.tx(chain.vault.functions.refundEscrow(eid), chain.admin)
    assert chain.block_time(receipt) < expires_at
    assert chain.events(chain.vault, receipt, "EscrowRefunded") == [
        {"id": eid, "payer": chain.payer2, "amount": amount, "payerAvailableAfter": deposit}
    ]
    assert chain.vault_balance(chain.payer2) == (deposit, 0)
    assert chain.vault_balance(chain.admin) == (0, 0)
    assert chain.vault_balance(chain.payee) == (0, 0)
    assert escrow_tuple(chain, eid) == (ZERO_ADDRESS, chain.payee, 0, expires_at, STATUS_REFUNDED)
    assert_solvent(chain)


def test_refund_by_others_refused(chain: Chain) -> None:
    amount, timeout = 3 * TOKEN, 100
    eid, _ = chain.create_escrow(amount, timeout)
    for who in (chain.payee, chain.other, chain.payer2):
        expect_revert(chain, chain.vault.functions.refundEscrow(eid), who, "NotPayer", eid)
    chain.advance(timeout + 1)  # expiry does not open refundEscrow to everyone
    for who in (chain.payee, chain.other):
        expect_revert(chain, chain.vault.functions.refundEscrow(eid), who, "NotPayer", eid)
    assert escrow_tuple(chain, eid)[4] == STATUS_OPEN
    assert chain.vault_balance(chain.payer) == (0, amount)


def test_refund_and_release_exclude_each_other(chain: Chain) -> None:
    amount, timeout = 2 * TOKEN, 100
    refunded, _ = chain.create_escrow(amount, timeout)
    released, _ = chain.create_escrow(amount, timeout)
    chain.tx(chain.vault.functions.refundEscrow(refunded), chain.admin)
    chain.tx(chain.vault.functions.releaseEscrow(released), chain.payer)
    chain.advance(timeout + 1)
    f = chain.vault.functions
    expect_revert(chain, f.releaseEscrow(refunded), chain.payer, "EscrowNotOpen", refunded)
    for who in (chain.payer, chain.admin):
        expect_revert(chain, f.refundEscrow(refunded), who, "EscrowNotOpen", refunded)
        expect_revert(chain, f.refundEscrow(released), who, "EscrowNotOpen", released)
        expect_revert(chain, f.refundEscrow(999), who, "UnknownEscrow", 999)
    # A not-open escrow is reported as such even to a caller who is not its payer.
    expect_revert(chain, f.refundEscrow(released), chain.other, "EscrowNotOpen", released)
    assert chain.vault_balance(chain.payer) == (amount, 0)
    assert chain.vault_balance(chain.payee) == (amount, 0)
    assert escrow_tuple(chain, refunded)[4] == STATUS_REFUNDED
    assert escrow_tuple(chain, released)[4] == STATUS_RELEASED
    assert_solvent(chain)


# -------------------------------------------------------------------------------- refundExpired


def test_refund_expired_mixed_batch(chain: Chain) -> None:
    f = chain.vault.functions
    # valid: the payer's, expires soon. refunded: the payer's too, refunded early by the admin.
    valid_amount, refunded_amount = 10 * TOKEN + 1, 30 * TOKEN
    valid, receipt = chain.create_escrow(valid_amount, 100)
    valid_expires = chain.block_time(receipt) + 100
    refunded, _ = chain.create_escrow(refunded_amount, 100)
    chain.tx(f.refundEscrow(refunded), chain.admin)
    # released and not-yet-expired: payer2's.
    released_amount, pending_amount = 20 * TOKEN, 50 * TOKEN
    released, _ = chain.create_escrow(released_amount, 100, payer=chain.payer2, payee=chain.payee2)
    chain.tx(f.releaseEscrow(released), chain.payer2)
    pending, receipt = chain.create_escrow(pending_amount, 1_000_000, payer=chain.payer2)
    pending_expires = chain.block_time(receipt) + 1_000_000
    chain.advance(200)

    payer_available, payer_locked = chain.vault_balance(chain.payer)
    assert (payer_available, payer_locked) == (refunded_amount, valid_amount)
    payer2_before = chain.vault_balance(chain.payer2)
    vault_tokens = chain.balance(chain.vault.address)

    batch = [999, valid, released, refunded, pending, valid]
    fn = f.refundExpired(batch)
    assert fn.call({"from": chain.other}) == 1
    receipt = chain.tx(fn, chain.other)
    refunded_event = {
        "id": valid,
        "payer": chain.payer,
        "amount": valid_amount,
        "payerAvailableAfter": payer_available + valid_amount,
    }
    assert vault_logs(chain, receipt) == [
        ("RefundSkipped", {"id": 999, "reason": SKIP_UNKNOWN}),
        ("EscrowRefunded", refunded_event),
        ("RefundSkipped", {"id": released, "reason": SKIP_NOT_OPEN}),
        ("RefundSkipped", {"id": refunded, "reason": SKIP_NOT_OPEN}),
        ("RefundSkipped", {"id": pending, "reason": SKIP_NOT_EXPIRED}),
        ("RefundSkipped", {"id": valid, "reason": SKIP_NOT_OPEN}),
    ]
    assert chain.events(chain.vault, receipt, "EscrowRefunded") == [refunded_event]

    assert chain.vault_balance(chain.payer) == (payer_available + valid_amount, 0)
    assert chain.vault_balance(chain.payer2) == payer2_before == (0, pending_amount)
    assert chain.vault_balance(chain.payee2) == (released_amount, 0)
    assert chain.vault_balance(chain.other) == (0, 0)
    assert chain.balance(chain.vault.address) == vault_tokens
    assert escrow_tuple(chain, valid) == (
        ZERO_ADDRESS,
        chain.payee,
        0,
        valid_expires,
        STATUS_REFUNDED,
    )
    assert escrow_tuple(chain, pending) == (
        chain.payer2,
        chain.payee,
        pending_amount,
        pending_expires,
        STATUS_OPEN,
    )
    assert escrow_tuple(chain, released)[4] == STATUS_RELEASED
    assert escrow_tuple(chain, refunded)[4] == STATUS_REFUNDED
    assert_solvent(chain)

    # Replaying the same batch refunds nothing more.
    assert fn.call({"from": chain.other}) == 0
    receipt = chain.tx(fn, chain.other)
    assert chain.events(chain.vault, receipt, "EscrowRefunded") == []
    assert [e["reason"] for e in chain.events(chain.vault, receipt, "RefundSkipped")] == [
        SKIP_UNKNOWN,
        SKIP_NOT_OPEN,
        SKIP_NOT_OPEN,
        SKIP_NOT_OPEN,
        SKIP_NOT_EXPIRED,
        SKIP_NOT_OPEN,
    ]
    assert chain.vault_balance(chain.payer) == (payer_available + valid_amount, 0)


def test_refund_expired_boundary_is_inclusive(chain: Chain) -> None:
    amount, timeout = 7 * TOKEN, 1000
    eid, receipt = chain.create_escrow(amount, timeout)
    expires_at = chain.block_time(receipt) + timeout
    fn = chain.vault.functions.refundExpired([eid])

    chain.set_next_time(expires_at - 1)
    receipt = chain.tx(fn, chain.other)
    assert chain.block_time(receipt) == expires_at - 1
    assert vault_logs(chain, receipt) == [
        ("RefundSkipped", {"id": eid, "reason": SKIP_NOT_EXPIRED})
    ]
    assert escrow_tuple(chain, eid)[4] == STATUS_OPEN
    assert chain.vault_balance(chain.payer) == (0, amount)

    chain.set_next_time(expires_at)
    receipt = chain.tx(fn, chain.other)
    assert chain.block_time(receipt) == expires_at
    assert vault_logs(chain, receipt) == [
        (
            "EscrowRefunded",
            {"id": eid, "payer": chain.payer, "amount": amount, "payerAvailableAfter": amount},
        )
    ]
    assert escrow_tuple(chain, eid) == (ZERO_ADDRESS, chain.payee, 0, expires_at, STATUS_REFUNDED)
    assert chain.vault_balance(chain.payer) == (amount, 0)
    assert_solvent(chain)


def test_refund_expired_many_payers_in_one_batch(chain: Chain) -> None:
    payers = [chain.payer, chain.payer2, chain.other, *extra_payers(chain)]
    kept = 1_000 + 17  # each payer keeps a little available, so availableAfter adds to it
    amounts = [(i + 1) * TOKEN + i for i in range(len(payers))]
    ids = []
    for payer, amount in zip(payers, amounts, strict=True):
        chain.tx(chain.vault.functions.deposit(kept), payer)
        eid, _ = chain.create_escrow(amount, 100, payer=payer, payee=chain.payee2)
        ids.append(eid)
    chain.advance(101)

    fn = chain.vault.functions.refundExpired(ids)
    assert fn.call({"from": chain.payee}) == len(payers)
    receipt = chain.tx(fn, chain.payee)
    assert vault_logs(chain, receipt) == [
        (
            "EscrowRefunded",
            {"id": eid, "payer": payer, "amount": amount, "payerAvailableAfter": kept + amount},
        )
        for eid, payer, amount in zip(ids, payers, amounts, strict=True)
    ]
    for eid, payer, amount in zip(ids, payers, amounts, strict=True):
        assert chain.vault_balance(payer) == (kept + amount, 0)
        assert escrow_tuple(chain, eid)[4] == STATUS_REFUNDED
    assert chain.vault_balance(chain.payee) == (0, 0)
    assert chain.vault_balance(chain.payee2) == (0, 0)
    assert_solvent(chain)


def test_refund_expired_two_escrows_of_one_payer_accumulate(chain: Chain) -> None:
    first, second, third = 7 * TOKEN, 11 * TOKEN + 3, 13 * TOKEN
    a, _ = chain.create_escrow(first, 100)
    b, _ = chain.create_escrow(second, 100, payee=chain.payee2)
    c, _ = chain.create_escrow(third, 10 * DAY)  # stays locked
    chain.advance(101)
    receipt = chain.tx(chain.vault.functions.refundExpired([b, c, a]), chain.other)
    assert vault_logs(chain, receipt) == [
        (
            "EscrowRefunded",
            {"id": b, "payer": chain.payer, "amount": second, "payerAvailableAfter": second},
        ),
        ("RefundSkipped", {"id": c, "reason": SKIP_NOT_EXPIRED}),
        (
            "EscrowRefunded",
            {
                "id": a,
                "payer": chain.payer,
                "amount": first,
                "payerAvailableAfter": second + first,
            },
        ),
    ]
    assert chain.vault_balance(chain.payer) == (first + second, third)
    # The one left open can still be released normally.
    chain.tx(chain.vault.functions.releaseEscrow(c), chain.payer)
    assert chain.vault_balance(chain.payer) == (first + second, 0)
    assert chain.vault_balance(chain.payee) == (third, 0)
    assert_solvent(chain)


def test_refund_expired_full_width_amount(chain: Chain) -> None:
    """The batch path's bit masks: an amount using all 88 bits, next to a non-zero balance."""
    (whale, _) = extra_payers(chain)
    kept = 2**100 + 12_345  # available beyond the 88 bits of an escrow amount
    small = 3
    chain.tx(chain.token.functions.mint(whale, UINT88_MAX + kept + small), chain.admin)
    chain.tx(chain.vault.functions.deposit(UINT88_MAX + kept + small), whale)
    receipt = chain.tx(chain.vault.functions.createEscrow(chain.payee, small, 100), whale)
    small_id = created(chain, receipt)["id"]
    receipt = chain.tx(chain.vault.functions.createEscrow(chain.payee, UINT88_MAX, 100), whale)
    big_id = created(chain, receipt)["id"]
    assert created(chain, receipt)["payerAvailableAfter"] == kept
    assert chain.vault_balance(whale) == (kept, UINT88_MAX + small)
    assert escrow_tuple(chain, big_id)[2] == UINT88_MAX
    chain.advance(101)

    receipt = chain.tx(chain.vault.functions.refundExpired([big_id]), chain.other)
    assert chain.events(chain.vault, receipt, "EscrowRefunded") == [
        {
            "id": big_id,
            "payer": whale,
            "amount": UINT88_MAX,
            "payerAvailableAfter": kept + UINT88_MAX,
        }
    ]
    assert chain.vault_balance(whale) == (kept + UINT88_MAX, small)
    assert escrow_tuple(chain, small_id)[4] == STATUS_OPEN
    assert_solvent(chain)


def test_refund_expired_empty_batch(chain: Chain) -> None:
    eid, _ = chain.create_escrow(TOKEN, 100)
    chain.advance(101)
    fn = chain.vault.functions.refundExpired([])
    assert fn.call({"from": chain.other}) == 0
    receipt = chain.tx(fn, chain.other)
    assert vault_logs(chain, receipt) == []
    assert escrow_tuple(chain, eid)[4] == STATUS_OPEN
    assert chain.vault_balance(chain.payer) == (0, TOKEN)


# -------------------------------------------------------------------------------- pause


def test_pause_and_unpause_by_admin(chain: Chain) -> None:
    f = chain.vault.functions
    receipt = chain.tx(f.pause(), chain.admin)
    assert vault_logs(chain, receipt) == [("Paused", {"account": chain.admin})]
    assert f.paused().call()
    expect_revert(chain, f.pause(), chain.admin, "EnforcedPause")
    receipt = chain.tx(f.unpause(), chain.admin)
    assert vault_logs(chain, receipt) == [("Unpaused", {"account": chain.admin})]
    assert not f.paused().call()
    expect_revert(chain, f.unpause(), chain.admin, "ExpectedPause")


def test_pause_requires_pauser_role(chain: Chain) -> None:
    f = chain.vault.functions
    role = f.PAUSER_ROLE().call()
    for who in (chain.other, chain.payer, chain.oracle):
        expect_revert(chain, f.pause(), who, "AccessControlUnauthorizedAccount", who, role)
    assert not f.paused().call()
    chain.tx(f.pause(), chain.admin)
    expect_revert(
        chain, f.unpause(), chain.other, "AccessControlUnauthorizedAccount", chain.other, role
    )
    assert f.paused().call()
    # The admin can hand the role out; its holder can then pause and unpause.
    chain.tx(f.grantRole(role, chain.other), chain.admin)
    chain.tx(f.unpause(), chain.other)
    assert not f.paused().call()
    receipt = chain.tx(f.pause(), chain.other)
    assert vault_logs(chain, receipt) == [("Paused", {"account": chain.other})]


def test_paused_vault_refuses_every_state_change(chain: Chain) -> None:
    f = chain.vault.functions
    deposit = 100 * TOKEN
    chain.tx(f.deposit(deposit), chain.payer)
    a, b, c = 10 * TOKEN, 20 * TOKEN, 30 * TOKEN
    receipts = [chain.tx(f.createEscrow(chain.payee, x, 100), chain.payer) for x in (a, b, c)]
    id_a, id_b, id_c = (created(chain, r)["id"] for r in receipts)
    chain.advance(101)
    free = deposit - a - b - c
    chain.tx(f.pause(), chain.admin)

    calls = [
        (f.deposit(TOKEN), chain.payer),
        (f.withdraw(TOKEN), chain.payer),
        (f.createEscrow(chain.payee, TOKEN, 0), chain.payer),
        (f.releaseEscrow(id_a), chain.payer),
        (f.refundEscrow(id_b), chain.payer),
        (f.refundEscrow(id_b), chain.admin),
        (f.refundExpired([id_c]), chain.other),
        (f.refundExpired([]), chain.other),
    ]
    tokens = chain.balance(chain.payer)
    for fn, sender in calls:
        expect_revert(chain, fn, sender, "EnforcedPause")
    # Views keep working, and nothing moved.
    assert chain.vault_balance(chain.payer) == (free, a + b + c)
    assert chain.balance(chain.payer) == tokens
    assert [escrow_tuple(chain, i)[4] for i in (id_a, id_b, id_c)] == [STATUS_OPEN] * 3
    assert f.nextEscrowId().call() == 4

    chain.tx(f.unpause(), chain.admin)
    r = chain.tx(f.deposit(TOKEN), chain.payer)
    assert chain.events(chain.vault, r, "Deposited")[0]["availableAfter"] == free + TOKEN
    r = chain.tx(f.withdraw(TOKEN), chain.payer)
    assert chain.events(chain.vault, r, "Withdrawn")[0]["availableAfter"] == free
    r = chain.tx(f.createEscrow(chain.payee, TOKEN, 0), chain.payer)
    assert created(chain, r)["id"] == 4
    r = chain.tx(f.releaseEscrow(id_a), chain.payer)
    assert chain.events(chain.vault, r, "EscrowReleased")[0]["payeeAvailableAfter"] == a
    r = chain.tx(f.refundEscrow(id_b), chain.payer)
    assert (
        chain.events(chain.vault, r, "EscrowRefunded")[0]["payerAvailableAfter"] == free - TOKEN + b
    )
    r = chain.tx(f.refundExpired([id_c]), chain.other)
    assert chain.events(chain.vault, r, "EscrowRefunded")[0]["payerAvailableAfter"] == (
        free - TOKEN + b + c
    )
    assert chain.vault_balance(chain.payer) == (free - TOKEN + b + c, TOKEN)
    assert chain.vault_balance(chain.payee) == (a, 0)
    assert_solvent(chain)


# -------------------------------------------------------------------------------- uint128 ceiling
#
# An account's `available` is a uint128. `deposit` refuses to pass the ceiling (AmountTooLarge)
# and so does the batched refund (refundExpired). The TestToken's owner can mint past 2**128, so
# the ceiling is reachable on the dev chain.

UINT128_MAX = 2**128 - 1


def _full_account_with_open_escrow(chain: Chain, payee: str | None = None) -> tuple[str, int, int]:
    """A payer whose escrow of `amount` is open while its `available` sits at the ceiling."""
    whale = extra_payers(chain)[0]
    amount = 5 * TOKEN
    chain.tx(chain.token.functions.mint(whale, UINT128_MAX), chain.admin)
    eid, _ = chain.create_escrow(amount, 100, payer=whale, payee=payee)
    chain.tx(chain.vault.functions.deposit(UINT128_MAX), whale)
    assert chain.vault_balance(whale) == (UINT128_MAX, amount)
    expect_revert(chain, chain.vault.functions.deposit(1), whale, "AmountTooLarge")
    return whale, eid, amount


def test_refund_expired_refuses_to_pass_the_available_ceiling(chain: Chain) -> None:
    whale, eid, amount = _full_account_with_open_escrow(chain)
    chain.advance(101)
    expect_revert(chain, chain.vault.functions.refundExpired([eid]), chain.other, "AmountTooLarge")
    assert chain.vault_balance(whale) == (UINT128_MAX, amount)
    assert escrow_tuple(chain, eid)[4] == STATUS_OPEN
    assert_solvent(chain)


def _attempt(chain: Chain, fn: Any, sender: str) -> dict[str, Any]:
    tx_hash = fn.transact({"from": sender, "gas": 2_000_000})
    return dict(chain.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.005))


def test_refund_escrow_must_not_truncate_available(chain: Chain) -> None:
    """refundEscrow credits the payer with an unchecked uint128 cast: past the ceiling the
    payer's balance wraps and 2**128 units vanish from the ledger (the vault keeps the tokens).
    It must refuse like deposit and refundExpired do (AmountTooLarge)."""
    whale, eid, amount = _full_account_with_open_escrow(chain)
    vault_tokens = chain.balance(chain.vault.address)
    receipt = _attempt(chain, chain.vault.functions.refundEscrow(eid), chain.admin)
    available, locked = chain.vault_balance(whale)
    owed = sum(sum(chain.vault_balance(a)) for a in chain.w3.eth.accounts)
    assert owed == vault_tokens, (
        f"ledger lost {vault_tokens - owed} units: payer available {available} after refunding "
        f"{amount} on top of {UINT128_MAX} (events: {vault_logs(chain, receipt)})"
    )
    assert receipt["status"] == 0
    assert (available, locked) == (UINT128_MAX, amount)


def test_release_escrow_must_not_truncate_payee_available(chain: Chain) -> None:
    """releaseEscrow credits the payee with the same unchecked uint128 cast."""
    receiver = extra_payers(chain)[1]
    chain.tx(chain.token.functions.mint(receiver, UINT128_MAX), chain.admin)
    amount = 5 * TOKEN
    eid, _ = chain.create_escrow(amount, 100, payee=receiver)
    chain.tx(chain.vault.functions.deposit(UINT128_MAX), receiver)
    vault_tokens = chain.balance(chain.vault.address)
    receipt = _attempt(chain, chain.vault.functions.releaseEscrow(eid), chain.payer)
    available, _ = chain.vault_balance(receiver)
    owed = sum(sum(chain.vault_balance(a)) for a in chain.w3.eth.accounts)
    assert owed == vault_tokens, (
        f"ledger lost {vault_tokens - owed} units: payee available {available} after releasing "
        f"{amount} on top of {UINT128_MAX} (events: {vault_logs(chain, receipt)})"
    )
    assert receipt["status"] == 0
    assert chain.vault_balance(receiver) == (UINT128_MAX, 0)
    assert chain.vault_balance(chain.payer) == (0, amount)
