"""The transaction manager's gating and purge rules as pure logic (no node, no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.db.outbox_rows import Attempt, Call, Signed
from keeper.dev.anvil import dev_key
from keeper.tx.assign import budget_allows, low_balance_lanes, pick_signer
from keeper.tx.fees import FeeCaps, Fees
from keeper.tx.repair import purge_candidates, purge_fees

A = b"\xaa" * 20
B = b"\xbb" * 20
GWEI = 10**9
wei = st.integers(0, 10**30)


def test_lanes_below_the_minimum_are_low_and_the_minimum_itself_is_enough() -> None:
    balances = {A: 99, B: 100}
    assert low_balance_lanes(balances, 100) == {A}
    assert low_balance_lanes(balances, 0) == set()  # the default minimum gates nothing


def test_the_budget_holds_back_only_what_does_not_fit() -> None:
    assert budget_allows(0, 10, None, urgent=False)  # unlimited
    assert budget_allows(90, 10, 100, urgent=False)  # fits exactly
    assert not budget_allows(91, 10, 100, urgent=False)
    assert budget_allows(10**30, 10, 100, urgent=True)  # urgent work always goes


@given(spent=wei, cost=wei, budget=wei)
def test_a_non_urgent_assignment_never_takes_spending_over_the_budget(
    spent: int, cost: int, budget: int
) -> None:
    if budget_allows(spent, cost, budget, urgent=False):
        assert spent + cost <= budget


def _attempt(signer: bytes, nonce: int, first: int | None) -> Attempt:
    signed = Signed(signer, nonce, 1, 1, False, 21_000, b"", b"")
    return Attempt(nonce, nonce, "settle", f"k{nonce}", Call(A, b""), signed, first, first)


def test_only_each_lanes_lowest_nonce_past_the_threshold_is_a_purge_candidate() -> None:
    latest = [
        _attempt(A, 5, 10),  # lowest of A, broadcast at 10
        _attempt(A, 6, 0),  # older, but not the lowest nonce
        _attempt(B, 2, 45),  # lowest of B, too recent
        _attempt(B, 3, 1),
    ]
    assert purge_candidates(latest, head=60, after_blocks=50) == [latest[0]]
    assert purge_candidates(latest, head=59, after_blocks=50) == []
    assert [a.signed.nonce for a in purge_candidates(latest, 95, 50)] == [5, 2]


def test_a_never_broadcast_attempt_is_not_purged() -> None:
    assert purge_candidates([_attempt(A, 0, None)], head=10**6, after_blocks=1) == []


def test_purge_fees_are_a_valid_bump_or_the_caps() -> None:
    caps = FeeCaps(max_fee=100 * GWEI, max_priority_fee=5 * GWEI)
    bumped = purge_fees(Fees(40 * GWEI, 2 * GWEI), 10 * GWEI, 2 * GWEI, caps)
    assert bumped is not None
    assert bumped.max_fee * 1000 >= 40 * GWEI * 1125
    assert bumped.priority_fee * 1000 >= 2 * GWEI * 1125
    near_cap = purge_fees(Fees(95 * GWEI, 4 * GWEI), 10 * GWEI, 2 * GWEI, caps)
    assert near_cap == Fees(100 * GWEI, 5 * GWEI)  # never above the operator's caps
    legacy = purge_fees(Fees(90 * GWEI, 90 * GWEI, legacy=True), None, GWEI, caps)
    assert legacy == Fees(100 * GWEI, 100 * GWEI, legacy=True)


@pytest.mark.parametrize(
    "previous",
    [
        Fees(100 * GWEI, 5 * GWEI),  # at both caps: a purge would be signed at the same fees
        Fees(100 * GWEI, 3 * GWEI),  # the max fee at its cap cannot rise
        Fees(60 * GWEI, 5 * GWEI),  # the tip at its cap cannot rise
        Fees(100 * GWEI, 100 * GWEI, legacy=True),
    ],
    ids=["both-caps", "max-fee-cap", "tip-cap", "legacy-cap"],
)
def test_no_purge_at_the_caps(previous: Fees) -> None:
    """A purge that cannot rise above the stuck attempt in both fields is not signed: it could
    not replace it, and a purge of a purge would be the same transaction again."""
    caps = FeeCaps(max_fee=100 * GWEI, max_priority_fee=5 * GWEI)
    base = None if previous.legacy else 10 * GWEI
    assert purge_fees(previous, base, 2 * GWEI, caps) is None


@given(max_fee=st.integers(0, 10**12), tip=st.integers(0, 10**12), base=st.integers(0, 10**12))
def test_purge_fees_stay_under_the_caps_and_rise(max_fee: int, tip: int, base: int) -> None:
    caps = FeeCaps(max_fee=10**12, max_priority_fee=10**11)
    previous = Fees(max(max_fee, tip), tip)
    fees = purge_fees(previous, base, tip, caps)
    if fees is None:
        return
    assert fees.max_fee <= caps.max_fee and fees.priority_fee <= caps.max_priority_fee
    assert fees.priority_fee <= fees.max_fee
    assert fees.max_fee > previous.max_fee and fees.priority_fee > previous.priority_fee


def test_least_loaded_assignment_skips_excluded_lanes() -> None:
    signers = [Signer(dev_key(5)), Signer(dev_key(6))]
    lanes = [s.address_bytes for s in signers]
    first, second = sorted(lanes)
    assert pick_signer(lanes, {}, 2) == first
    assert pick_signer(lanes, {}, 2, {first}) == second
    assert pick_signer(lanes, {second: 2}, 2, {first}) is None  # the only usable lane is full
    assert pick_signer(lanes, {first: 1}, 2) == second


def test_new_settings_default_to_no_gating() -> None:
    settings = TxConfig()
    assert settings.min_signer_balance_wei == 0 and settings.budget_per_hour_wei is None
    assert settings.purge_after_blocks == 50
