"""The fee rules as pure logic (anvil accepts any higher replacement, so it cannot test them)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keeper.tx.fees import FeeCaps, Fees, bump, initial_fees, is_valid_replacement

GWEI = 10**9
CAPS = FeeCaps(max_fee=500 * GWEI, max_priority_fee=20 * GWEI)

wei = st.integers(0, 10**13)


def test_initial_fees_double_the_base_fee_plus_tip() -> None:
    fees = initial_fees(30 * GWEI, 2 * GWEI, CAPS)
    assert fees == Fees(max_fee=62 * GWEI, priority_fee=2 * GWEI)


def test_initial_fees_respect_the_caps() -> None:
    fees = initial_fees(400 * GWEI, 50 * GWEI, CAPS)
    assert fees.priority_fee == 20 * GWEI
    assert fees.max_fee == 500 * GWEI


def test_legacy_fees_use_one_price() -> None:
    fees = initial_fees(None, 7 * GWEI, CAPS)
    assert fees.legacy and fees.gas_price == fees.priority_fee == 7 * GWEI


def test_bump_raises_both_fields_by_an_eighth_rounded_up() -> None:
    prev = Fees(max_fee=100, priority_fee=9)
    new = bump(prev, base_fee=10, tip=1, caps=FeeCaps(10**6, 10**6))
    assert new == Fees(max_fee=113, priority_fee=11)  # ceil(112.5), ceil(10.125)
    assert is_valid_replacement(prev, new)


def test_bump_follows_the_market_when_it_moved_more() -> None:
    prev = Fees(max_fee=62 * GWEI, priority_fee=2 * GWEI)
    new = bump(prev, base_fee=100 * GWEI, tip=2 * GWEI, caps=CAPS)
    assert new is not None and new.max_fee == 202 * GWEI


def test_bump_at_the_cap_gives_none() -> None:
    prev = Fees(max_fee=480 * GWEI, priority_fee=2 * GWEI)
    assert bump(prev, base_fee=30 * GWEI, tip=2 * GWEI, caps=CAPS) is None


def test_zero_tip_still_bumps() -> None:
    prev = Fees(max_fee=10, priority_fee=0)
    new = bump(prev, base_fee=1, tip=0, caps=FeeCaps(10**6, 10**6))
    assert new is not None and new.priority_fee >= 1 and new.max_fee >= 12


@given(max_fee=wei, tip=wei, base=wei, market_tip=wei)
def test_every_bump_is_a_valid_geth_replacement_under_the_caps(
    max_fee: int, tip: int, base: int, market_tip: int
) -> None:
    prev = Fees(max_fee=max(max_fee, tip), priority_fee=tip)
    caps = FeeCaps(max_fee=10**14, max_priority_fee=10**14)
    new = bump(prev, base, market_tip, caps)
    if new is None:
        # Only when a 12.5 % rise would break a cap.
        assert (
            prev.max_fee * 1125 > caps.max_fee * 1000
            or prev.priority_fee * 1125 > (caps.max_priority_fee * 1000)
            or market_tip > caps.max_priority_fee
            or 2 * base > caps.max_fee
        )
        return
    assert is_valid_replacement(prev, new)
    assert new.max_fee * 1000 >= prev.max_fee * 1125
    assert new.priority_fee * 1000 >= prev.priority_fee * 1125
    assert new.priority_fee <= new.max_fee
    assert new.max_fee <= caps.max_fee and new.priority_fee <= caps.max_priority_fee


@given(price=wei, market=wei)
def test_legacy_bumps_are_valid_too(price: int, market: int) -> None:
    prev = Fees(max_fee=price, priority_fee=price, legacy=True)
    new = bump(prev, None, market, FeeCaps(max_fee=10**14, max_priority_fee=10**14))
    if new is not None:
        assert new.legacy and new.gas_price * 1000 >= price * 1125
