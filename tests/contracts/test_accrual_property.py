"""Property test: keeper.plan.accrual and StreamManager agree on random stream histories.

Hypothesis draws a stream (rate, deposit, usage price) and a sequence of actions with time gaps
between them (top-ups, rate changes, usage charges, batch and single settlements); each action
is sent to a real anvil at an exact timestamp and applied to the Python model, and after every
step the contract's `accruedOf`, `getStream` and the payee ledger must equal the model's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keeper.dev.anvil import Anvil
from keeper.plan import accrual
from tests.contracts.conftest import FEE_BPS, Chain

rates = st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 10**9))
amounts = st.one_of(st.integers(0, 1_000), st.integers(0, 10**12))
gaps = st.one_of(st.integers(0, 5), st.integers(0, 100_000))

actions = st.one_of(
    st.tuples(st.just("settle"), st.just(0)),
    st.tuples(st.just("settle_one"), st.just(0)),
    st.tuples(st.just("top_up"), amounts),
    st.tuples(st.just("rate"), rates),
    st.tuples(st.just("usage"), st.integers(1, 10**6)),
    st.tuples(st.just("wait"), st.just(0)),
)


def _check(
    chain: Chain, sid: int, model: accrual.Stream, credited: int, remainder: int, now: int
) -> None:
    on_chain = chain.stream(sid)
    assert on_chain["balance"] == model.balance
    assert on_chain["rate"] == model.rate
    assert on_chain["settled_at"] == model.settled_at
    assert on_chain["usage_seq"] == model.usage_seq
    assert chain.manager.functions.accruedOf(sid).call() == accrual.accrued_of(model, now)
    assert chain.ledger(chain.payee) == (credited, remainder)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rate=rates,
    deposit=amounts,
    price=st.integers(0, 10**6),
    steps=st.lists(st.tuples(actions, gaps), min_size=1, max_size=8),
)
def test_python_accrual_equals_contract(
    chain: Chain,
    anvil: Anvil,
    rate: int,
    deposit: int,
    price: int,
    steps: list[tuple[tuple[str, int], int]],
) -> None:
    m = chain.manager.functions
    chain.tx(chain.token.functions.mint(chain.payer, 10 * 10**12), chain.admin)
    credited, remainder = chain.ledger(chain.payee)
    sid, receipt = chain.open(rate=rate, deposit=deposit)
    t = chain.block_time(receipt)
    model = accrual.Stream(balance=deposit, rate=rate, settled_at=t)
    chain.set_next_time(t + 1)
    receipt = chain.tx(m.setUsagePrice(sid, price), chain.payer)
    t += 1
    if chain.events(chain.manager, receipt, "StreamSettled"):  # (the spec leaves it open)
        done = accrual.settle(model, t, FEE_BPS, remainder)
        model, credited, remainder = done.stream, credited + done.paid, done.remainder
    model = accrual.set_usage_price(model, t, price, chain.notice)
    for (kind, arg), gap in steps:
        t += gap + 1
        chain.set_next_time(t)
        result: Any
        if kind == "settle":
            chain.tx(m.settleStreams([sid]), chain.other)
            result = accrual.settle_in_batch(model, t, FEE_BPS, remainder)
            if isinstance(result, accrual.Settled):
                model, credited, remainder = result.stream, credited + result.paid, result.remainder
        elif kind == "settle_one":
            chain.tx(m.updateRate(sid, model.rate), chain.payer)  # settles, keeps the rate
            result = accrual.update_rate(model, t, model.rate, FEE_BPS, remainder)
            model, credited, remainder = result.stream, credited + result.paid, result.remainder
        elif kind == "top_up":
            chain.tx(m.topUp(sid, arg), chain.payer)
            result = accrual.top_up(model, t, arg, FEE_BPS, remainder)
            model, credited, remainder = result.stream, credited + result.paid, result.remainder
        elif kind == "rate":
            chain.tx(m.updateRate(sid, arg), chain.payer)
            result = accrual.update_rate(model, t, arg, FEE_BPS, remainder)
            model, credited, remainder = result.stream, credited + result.paid, result.remainder
        elif kind == "usage":
            seq = model.usage_seq + 1
            chain.record([(sid, seq, arg, 0)])
            result = accrual.charge_usage(model, seq, arg, FEE_BPS, now=t, remainder=remainder)
            assert isinstance(result, accrual.UsageCharged)
            model, credited, remainder = result.stream, credited + result.paid, result.remainder
        else:
            chain.mine()
        _check(chain, sid, model, credited, remainder, t)
    # And at a later time, without any transaction: the view is the formula.
    t += 12_345
    chain.set_next_time(t)
    chain.mine()
    _check(chain, sid, model, credited, remainder, t)
