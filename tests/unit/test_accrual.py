"""Pure tests of keeper.plan.accrual (the contract comparison lives in tests/contracts)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from keeper.plan import accrual
from keeper.plan.accrual import SettleSkip, Stream, StreamStatus, UsageSkip


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


# ------------------------------------------------------------------------ v2: fees carry


def test_carry_fee_keeps_the_remainder() -> None:
    assert accrual.carry_fee(39, 250) == (0, 9_750)
    assert accrual.carry_fee(39, 250, 9_750) == (1, 9_500)
    assert accrual.carry_fee(0, 250, 9_999) == (0, 9_999)
    assert accrual.carry_fee(399, 250) == (accrual.fee_of(399, 250), 399 * 250 % 10_000)


def test_hundred_small_reports_pay_the_fee_of_their_sum() -> None:
    """The issue's example: 100 reports of 1 unit at price 39, 250 bps: fee 97, not 0."""
    s = Stream(balance=10**6, rate=0, settled_at=0, price_per_unit=39)
    remainder, fees = 0, 0
    for seq in range(1, 101):
        done = accrual.charge_usage(s, seq, 1, 250, remainder=remainder)
        assert isinstance(done, accrual.UsageCharged)
        s, remainder, fees = done.stream, done.remainder, fees + done.fee
    assert fees == 97 == accrual.fee_of(3_900, 250)
    assert accrual.fee_of(39, 250) * 100 == 0  # what v1 charged


@given(
    items=st.lists(st.tuples(st.integers(0, 10**15), st.integers(0, 1_000)), max_size=40),
    r0=st.integers(0, 9_999),
)
def test_fees_of_a_sequence_are_the_fee_of_the_weighted_sum(
    items: list[tuple[int, int]], r0: int
) -> None:
    remainder, fees = r0, 0
    for amount, bps in items:
        fee, remainder = accrual.carry_fee(amount, bps, remainder)
        assert 0 <= remainder < 10_000
        assert 0 <= fee <= amount or (amount == 0 and fee == 0)
        fees += fee
    weighted = r0 + sum(a * b for a, b in items)
    assert fees == weighted // 10_000 and remainder == weighted % 10_000
    if len({b for _, b in items}) == 1 and items:
        # One rate: within one base unit of the fee on the sum.
        assert 0 <= fees - accrual.fee_of(sum(a for a, _ in items), items[0][1]) <= 1


def test_settlement_and_usage_thread_the_remainder() -> None:
    s = Stream(balance=10_000, rate=1, settled_at=0, price_per_unit=39)
    first = accrual.settle(s, 39, 250)
    assert (first.fee, first.remainder) == (0, 9_750)
    used = accrual.charge_usage(first.stream, 1, 1, 250, remainder=first.remainder)
    assert isinstance(used, accrual.UsageCharged)
    assert (used.fee, used.remainder, used.paid) == (1, 9_500, 38)
    batch = accrual.settle_in_batch(used.stream, 40, 250, remainder=used.remainder)
    assert isinstance(batch, accrual.Settled) and (batch.fee, batch.remainder) == (0, 9_750)


# ------------------------------------------------------------------------ v2: notice periods


def test_price_in_force_switches_at_effective_at() -> None:
    assert accrual.price_in_force(10, 3, 0, 10**9) == 10  # nothing pending
    assert accrual.price_in_force(10, 3, 500, 499) == 10
    assert accrual.price_in_force(10, 3, 500, 500) == 3
    assert accrual.price_in_force(10, 0, 500, 501) == 0  # a pending price of zero is a price


def test_own_price_increase_at_once_decrease_after_notice() -> None:
    s = Stream(balance=0, rate=0, settled_at=0, price_per_unit=10)
    down = accrual.set_usage_price(s, 100, 4, 600)
    assert accrual.own_price_in_force(down, 699) == 10
    assert accrual.own_price_in_force(down, 700) == 4
    assert (down.pending_price, down.price_effective_at) == (4, 700)
    # An increase over the price in force applies at once and cancels the pending decrease.
    up = accrual.set_usage_price(down, 200, 12, 600)
    assert accrual.own_price_in_force(up, 200) == 12
    assert accrual.own_price_in_force(up, 10**6) == 12
    # Setting the price in force again is not a decrease: it cancels too.
    same = accrual.set_usage_price(down, 200, 10, 600)
    assert accrual.own_price_in_force(same, 10**6) == 10
    # After a decrease came into force, a later decrease starts from it.
    later = accrual.set_usage_price(down, 800, 2, 600)
    assert accrual.own_price_in_force(later, 800) == 4
    assert accrual.own_price_in_force(later, 1_400) == 2
    # No notice period: a decrease is immediate.
    assert accrual.own_price_in_force(accrual.set_usage_price(s, 5, 1, 0), 5) == 1


def test_usage_charges_the_price_in_force_when_applied() -> None:
    s = accrual.set_usage_price(
        Stream(balance=1_000, rate=0, settled_at=0, price_per_unit=10), 0, 0, 600
    )
    before = accrual.charge_usage(s, 1, 2, 0, now=599)
    after = accrual.charge_usage(s, 1, 2, 0, now=600)
    assert isinstance(before, accrual.UsageCharged) and isinstance(after, accrual.UsageCharged)
    assert (before.charged, before.price) == (20, 10)
    assert (after.charged, after.price) == (0, 0)
    listed = accrual.charge_usage(s, 1, 3, 0, now=0, price=7)
    assert isinstance(listed, accrual.UsageCharged) and listed.charged == 21


def test_close_request_stops_accrual_and_takes_usage_until_close_at() -> None:
    s = Stream(balance=1_000, rate=2, settled_at=0, price_per_unit=1)
    req = accrual.request_close(s, 100, 0, 600)
    assert req.amount == 200
    closing = req.stream
    assert (closing.status, closing.rate, closing.close_at) == (StreamStatus.CLOSING, 0, 700)
    assert accrual.accrued_of(closing, 650) == 0
    assert accrual.settle_in_batch(closing, 650, 0) is SettleSkip.CLOSED
    assert accrual.usage_check(closing, 1, 1, now=699) is None
    assert accrual.usage_check(closing, 1, 1, now=700) is UsageSkip.CLOSED
    final, refund = accrual.close(closing, 700, 0)
    assert refund == 800 and final.amount == 0
    assert final.stream.status is StreamStatus.CLOSED and final.stream.balance == 0


def test_pack_report_round_trips_and_refuses_overflow() -> None:
    word = accrual.pack_report(7, 3, 2**64 - 1, endpoint=2**32 - 1)
    assert accrual.unpack_report(word) == (7, 3, 2**32 - 1, 2**64 - 1)
    assert accrual.unpack_report(word | 1 << 200) == (7, 3, 2**32 - 1, 2**64 - 1)
    assert accrual.pack_report(1, 1, 1) == 1 | 1 << 64 | 1 << 128
    for bad in ((2**64, 1, 1, 0), (1, 2**32, 1, 0), (1, 1, 2**64, 0), (1, 1, 1, 2**32)):
        try:
            accrual.pack_report(*bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} packed")
    assert accrual.MAX_USAGE_SEQ == 2**32 - 1
    s = Stream(balance=1, rate=0, settled_at=0, usage_seq=2**32 - 1)
    assert accrual.usage_check(s, 2**32, 1) is UsageSkip.GAP
