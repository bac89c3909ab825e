"""Pure tests of keeper.accrual (the contract comparison lives in tests/contracts)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from keeper import accrual
from keeper.accrual import SettleSkip, Stream, StreamStatus, UsageSkip


def test_accrued_is_rate_times_elapsed_capped_by_balance() -> None:
    assert accrual.accrued(1_000, 3, 100, 150) == 150
    assert accrual.accrued(100, 3, 100, 150) == 100
    assert accrual.accrued(1_000, 3, 100, 100) == 0
    assert accrual.accrued(1_000, 3, 100, 90) == 0  # a clock before settledAt accrues nothing
    assert accrual.accrued(0, 3, 100, 200) == 0
    assert accrual.accrued(1_000, 0, 100, 200) == 0


def test_closed_and_unknown_streams_accrue_nothing() -> None:
    s = Stream(balance=10, rate=1, settled_at=0)
    assert accrual.accrued_of(s, 5) == 5
    assert accrual.accrued_of(replace(s, status=StreamStatus.CLOSED), 5) == 0
    assert accrual.accrued_of(replace(s, status=StreamStatus.UNKNOWN), 5) == 0


def test_fee_rounds_down() -> None:
    assert accrual.fee_of(399, 250) == 9
    assert accrual.fee_of(39, 250) == 0
    assert accrual.fee_of(10**30, 250) == 25 * 10**27


def test_settle_moves_settled_at_even_with_nothing_due() -> None:
    s = Stream(balance=0, rate=5, settled_at=10)
    done = accrual.settle(s, 50, 250)
    assert (done.amount, done.fee, done.stream.settled_at) == (0, 0, 50)
    assert accrual.settle_in_batch(s, 50, 250) is SettleSkip.NOTHING_DUE


def test_settle_in_batch_skip_reasons_and_payout() -> None:
    s = Stream(balance=1_000, rate=2, settled_at=0)
    done = accrual.settle_in_batch(s, 100, 250)
    assert isinstance(done, accrual.Settled)
    assert (done.amount, done.fee, done.paid) == (200, 5, 195)
    assert done.stream == replace(s, balance=800, settled_at=100)
    assert (
        accrual.settle_in_batch(replace(s, status=StreamStatus.CLOSED), 1, 0) is SettleSkip.CLOSED
    )
    assert (
        accrual.settle_in_batch(replace(s, status=StreamStatus.UNKNOWN), 1, 0) is SettleSkip.UNKNOWN
    )
    assert accrual.settle_in_batch(s, 0, 0) is SettleSkip.NOTHING_DUE


def test_top_up_rate_change_and_close() -> None:
    s = Stream(balance=100, rate=10, settled_at=0)
    topped = accrual.top_up(s, 50, 1_000, 0)
    assert (
        topped.amount == 100 and topped.stream.balance == 1_000 and topped.stream.settled_at == 50
    )
    rated = accrual.update_rate(topped.stream, 60, 1, 0)
    assert rated.amount == 100 and rated.stream.rate == 1 and rated.stream.balance == 900
    closed, refund = accrual.close(rated.stream, 70, 0)
    assert closed.amount == 10 and refund == 890
    assert closed.stream.status is StreamStatus.CLOSED and closed.stream.balance == 0


def test_usage_sequence_rules() -> None:
    s = Stream(balance=1_000, rate=0, settled_at=0, usage_seq=4, price_per_unit=3)
    assert accrual.usage_check(s, 4, 1) is UsageSkip.REPLAY
    assert accrual.usage_check(s, 6, 1) is UsageSkip.GAP
    assert accrual.usage_check(s, 5, 0) is UsageSkip.BAD_UNITS
    assert accrual.usage_check(s, 5, 2**64) is UsageSkip.BAD_UNITS
    assert accrual.usage_check(replace(s, status=StreamStatus.CLOSED), 5, 1) is UsageSkip.CLOSED
    assert accrual.usage_check(s, 5, 1) is None


def test_usage_shortfall() -> None:
    s = Stream(balance=100, rate=0, settled_at=0, price_per_unit=30)
    charged = accrual.charge_usage(s, 1, 4, 250)
    assert isinstance(charged, accrual.UsageCharged)
    assert (charged.charged, charged.fee, charged.shortfall) == (100, 2, 20)
    assert charged.stream.balance == 0 and charged.stream.usage_seq == 1


def test_depletion_time_and_runway() -> None:
    s = Stream(balance=1_001, rate=10, settled_at=1_000)
    assert accrual.depletion_time(s) == 1_101  # ceil(1001 / 10) seconds after settledAt
    assert accrual.accrued_of(s, 1_100) < s.balance
    assert accrual.accrued_of(s, 1_101) == s.balance
    assert accrual.runway_seconds(s, 1_050) == 51
    assert accrual.runway_seconds(s, 5_000) == 0
    assert accrual.depletion_time(replace(s, rate=0)) is None
    assert accrual.runway_seconds(replace(s, rate=0), 0) is None


@given(
    balance=st.integers(0, 2**96 - 1),
    rate=st.integers(1, 2**64 - 1),
    settled_at=st.integers(0, 2**40 - 1),
)
def test_depletion_time_is_the_first_second_fully_accrued(
    balance: int, rate: int, settled_at: int
) -> None:
    s = Stream(balance=balance, rate=rate, settled_at=settled_at)
    at = accrual.depletion_time(s)
    assert at is not None
    assert accrual.accrued_of(s, at) == balance
    if at > settled_at:
        assert accrual.accrued_of(s, at - 1) < balance


@given(
    balance=st.integers(0, 2**96 - 1),
    rate=st.integers(0, 2**64 - 1),
    t1=st.integers(0, 10**9),
    t2=st.integers(0, 10**9),
    fee_bps=st.integers(0, 1_000),
)
def test_settling_in_two_steps_never_pays_more_than_the_balance(
    balance: int, rate: int, t1: int, t2: int, fee_bps: int
) -> None:
    s = Stream(balance=balance, rate=rate, settled_at=0)
    first = accrual.settle(s, t1, fee_bps)
    second = accrual.settle(first.stream, t1 + t2, fee_bps)
    assert first.amount + second.amount + second.stream.balance == balance
    assert 0 <= first.fee <= first.amount and isinstance(first.fee, int)
