"""StreamManager v2 (issue 13) against a real anvil: priced endpoints, notice periods, fee
remainders, and a pause that lets payers leave. Each test fails without its part of the issue."""

from __future__ import annotations

from typing import Any

from hexbytes import HexBytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keeper.dev.anvil import rpc
from keeper.plan import accrual
from keeper.plan.accrual import SettleSkip, StreamStatus, UsageSkip, pack_report
from tests.contracts.conftest import (
    FEE_BPS,
    NOTICE,
    Chain,
    decode_recorded,
    name_word,
    simulated_revert,
)

GWEI = 10**9


def _send_with_tip(chain: Chain, fn: Any, sender: str, tip: int) -> HexBytes:
    """Send without waiting (automine off), bidding priority fee `tip` over the base fee.

    anvil orders its pool by the fee cap, so the cap rises with the tip, as a real bid would.
    """
    return HexBytes(
        fn.transact(
            {
                "from": sender,
                "gas": 2_000_000,
                "maxPriorityFeePerGas": tip,
                "maxFeePerGas": 100 * GWEI + tip,
            }
        )
    )


def _same_block(
    chain: Chain, first: Any, first_from: str, second: Any, second_from: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mine `first` (higher tip) and `second` (lower tip, sent before it) in one block.

    The lower-tipped transaction is sent first: only its tip puts `first` ahead, as a payer
    front-running the oracle would do.
    """
    chain.automine(False)
    try:
        h2 = _send_with_tip(chain, second, second_from, 1 * GWEI)
        h1 = _send_with_tip(chain, first, first_from, 50 * GWEI)
        chain.mine()
    finally:
        chain.automine(True)
    r1: dict[str, Any] = dict(chain.w3.eth.wait_for_transaction_receipt(h1))
    r2: dict[str, Any] = dict(chain.w3.eth.wait_for_transaction_receipt(h2))
    assert r1["blockNumber"] == r2["blockNumber"], "not mined in one block"
    assert r1["transactionIndex"] < r2["transactionIndex"], "the higher tip was not mined first"
    assert r1["status"] == r2["status"] == 1
    return r1, r2


# ------------------------------------------------------------------------ (a) priced endpoints


def test_payee_lists_endpoints_with_ids_per_payee(chain: Chain) -> None:
    m = chain.manager.functions
    receipt = chain.tx(m.addEndpoint(name_word("search"), 40), chain.payee)
    assert chain.events(chain.manager, receipt, "EndpointAdded") == [
        {"payee": chain.payee, "endpoint": 1, "name": name_word("search"), "price": 40}
    ]
    assert chain.add_endpoint("embed", 7) == 2
    assert chain.add_endpoint("search", 99, payee=chain.payee2) == 1  # ids are per payee
    assert m.endpointCount(chain.payee).call() == 2
    assert m.endpointCount(chain.payee2).call() == 1
    assert m.endpointCount(chain.other).call() == 0
    price, pending, effective_at, listed, name = m.endpointPrice(chain.payee, 1).call()
    assert accrual.price_in_force(price, pending, effective_at, chain.now()) == 40
    assert (listed, name) == (True, name_word("search"))
    assert m.endpointPrice(chain.payee2, 1).call()[0] == 99
    assert m.endpointPrice(chain.payee, 3).call()[3] is False  # not listed
    chain.reverts(m.addEndpoint(name_word("search"), 1), chain.payee, "EndpointExists")
    assert m.payeeIndexOf(chain.payee).call() != 0
    assert m.payeeIndexOf(chain.payee).call() != m.payeeIndexOf(chain.payee2).call()
    assert m.payeeIndexOf(chain.other).call() == 0
    # A zero name is refused (whatever the error's name: the spec names none).
    assert simulated_revert(m.addEndpoint(b"\0" * 32, 1), chain.payee).startswith("0x")


def test_set_endpoint_price_is_the_payees_own(chain: Chain) -> None:
    m = chain.manager.functions
    ep = chain.add_endpoint("search", 40)
    chain.reverts(m.setEndpointPrice(ep + 1, 5), chain.payee, "UnknownEndpoint")
    # Another address has no endpoint `ep` of its own: the call names its own list.
    chain.reverts(m.setEndpointPrice(ep, 5), chain.other, "UnknownEndpoint")
    receipt = chain.tx(m.setEndpointPrice(ep, 55), chain.payee)
    now = chain.block_time(receipt)
    assert chain.events(chain.manager, receipt, "EndpointPriceSet") == [
        {"payee": chain.payee, "endpoint": ep, "price": 55, "effectiveAt": now}
    ]
    sid, _ = chain.open_listed(rate=0, deposit=10_000)
    assert m.priceInForce(sid, ep).call() == [55, True]


def test_list_stream_is_charged_units_times_endpoint_price(chain: Chain) -> None:
    m = chain.manager.functions
    search = chain.add_endpoint("search", 40)
    embed = chain.add_endpoint("embed", 3)
    other_payees = chain.add_endpoint("search", 1_000, payee=chain.payee2)
    sid, receipt = chain.open_listed(rate=0, deposit=10_000)
    (opened,) = chain.events(chain.manager, receipt, "StreamOpened")
    assert opened["priceList"] is True
    assert chain.stream(sid)["price"] == 0
    chain.reverts(m.setUsagePrice(sid, 5), chain.payer, "OnPriceList")
    receipt = chain.record(
        [
            (sid, 1, 2, search),
            (sid, 2, 5, embed),
            (sid, 3, 1, 0),  # a list stream needs an endpoint
            (sid, 3, 1, 9),  # not listed by this payee
            (sid, 3, 4, search),
        ]
    )
    recorded = chain.recorded(receipt)
    assert [(r["seq"], r["endpoint"], r["price"], r["charged"]) for r in recorded] == [
        (1, search, 40, 80),
        (2, embed, 3, 15),
        (3, search, 40, 160),
    ]
    assert chain.events(chain.manager, receipt, "UsageSkipped") == [
        {"id": sid, "seq": 3, "lastSeq": 2, "reason": UsageSkip.UNKNOWN_ENDPOINT},
        {"id": sid, "seq": 3, "lastSeq": 2, "reason": UsageSkip.UNKNOWN_ENDPOINT},
    ]
    s = chain.stream(sid)
    assert s["balance"] == 10_000 - 255 and s["usage_seq"] == 3
    assert other_payees == 1  # payee2's endpoint 1 is not payee's
    # List usage is credited to the (payee, endpoint) entry, each with its own fee remainder.
    m_search = 240 - 240 * FEE_BPS // 10_000
    m_embed = 15 - 15 * FEE_BPS // 10_000
    assert m.endpointCredit(chain.payee, search).call() == [m_search, 240 * FEE_BPS % 10_000]
    assert m.endpointCredit(chain.payee, embed).call() == [m_embed, 15 * FEE_BPS % 10_000]
    assert chain.ledger(chain.payee) == (0, 0)
    assert chain.credited(chain.payee) == m_search + m_embed
    assert chain.credited(chain.fee_recipient) == 255 - m_search - m_embed
    # claim() pays the ledger and every endpoint credit in one transfer.
    chain.advance(1)
    receipt = chain.tx(m.claim(), chain.payee)
    assert chain.events(chain.manager, receipt, "Claimed") == [
        {"payee": chain.payee, "amount": m_search + m_embed}
    ]
    assert chain.balance(chain.payee) == m_search + m_embed
    assert m.endpointCredit(chain.payee, search).call()[0] == 0
    assert chain.credited(chain.payee) == 0


def test_own_price_stream_is_billed_at_its_own_price(chain: Chain) -> None:
    """An own-price stream still works next to a price list: its own price, endpoint or not."""
    search = chain.add_endpoint("search", 40)
    sid, _ = chain.open(rate=0, deposit=10_000)
    chain.tx(chain.manager.functions.setUsagePrice(sid, 3), chain.payer)
    # The endpoint of an own-price stream's report is recorded as sent, unchecked (SPEC.md,
    # clarifications): 9 was never listed.
    receipt = chain.record([(sid, 1, 2, 0), (sid, 2, 2, search), (sid, 3, 1, 9)])
    assert chain.events(chain.manager, receipt, "UsageSkipped") == []
    recorded = chain.recorded(receipt)
    assert [(r["endpoint"], r["price"], r["charged"]) for r in recorded] == [
        (0, 3, 6),
        (search, 3, 6),
        (9, 3, 3),
    ]
    assert chain.stream(sid)["price"] == 3 and chain.stream(sid)["balance"] == 10_000 - 15
    # Own-price usage is credited to the payee's ledger, not to the endpoint's entry.
    assert chain.ledger(chain.payee) == (15 - 15 * FEE_BPS // 10_000, 15 * FEE_BPS % 10_000)
    assert chain.manager.functions.endpointCredit(chain.payee, search).call() == [0, 0]


def test_price_views(chain: Chain) -> None:
    m = chain.manager.functions
    search = chain.add_endpoint("search", 40)
    listed, _ = chain.open_listed(rate=10, deposit=1_000)
    own, _ = chain.open(rate=0, deposit=500)
    chain.tx(m.setUsagePrice(own, 7), chain.payer)
    assert m.priceInForce(listed, search).call() == [40, True]
    assert m.priceInForce(listed, 0).call()[1] is False
    assert m.priceInForce(listed, 2).call()[1] is False
    assert m.priceInForce(own, 0).call() == [7, True]
    assert m.priceInForce(own, search).call() == [7, True]
    assert m.estimateCost(listed, search, 3).call() == 120
    assert m.estimateCost(own, 0, 71).call() == 497
    chain.reverts(m.estimateCost(listed, 0, 1), chain.other, "UnknownEndpoint")
    assert m.canAffordUsage(own, 0, 71).call() is True
    assert m.canAffordUsage(own, 0, 72).call() is False
    # canAfford counts what settling now would take first.
    chain.set_next_time(chain.stream(listed)["settled_at"] + 50)  # type: ignore[operator]
    chain.mine()
    assert m.accruedOf(listed).call() == 500
    assert m.canAffordUsage(listed, search, 12).call() is True  # 480 <= 500
    assert m.canAffordUsage(listed, search, 13).call() is False  # 520 > 500
    assert m.noticePeriod().call() == 0
    assert m.closeAtOf(own).call() == 0


# ------------------------------------------------------------ (b) terms a payer cannot dodge


def test_payer_price_cut_front_running_a_report_does_not_dodge_it(noticed: Chain) -> None:
    chain = noticed
    m = chain.manager.functions
    sid, _ = chain.open(rate=0, deposit=100_000)
    chain.tx(m.setUsagePrice(sid, 30), chain.payer)
    r_cut, r_report = _same_block(
        chain, m.setUsagePrice(sid, 0), chain.payer, chain.usage([(sid, 1, 10, 0)]), chain.oracle
    )
    now = chain.block_time(r_cut)
    assert chain.events(chain.manager, r_cut, "UsagePriceSet") == [
        {"id": sid, "pricePerUnit": 0, "effectiveAt": now + NOTICE}
    ]
    (rec,) = chain.recorded(r_report)
    assert (rec["charged"], rec["price"]) == (300, 30)
    assert chain.stream(sid)["price"] == 30  # the price in force, until the notice has run
    price, pending, effective_at = m.streamPrice(sid).call()
    assert accrual.price_in_force(price, pending, effective_at, now) == 30
    assert (pending, effective_at) == (0, now + NOTICE)
    chain.set_next_time(now + NOTICE - 1)
    (rec,) = chain.recorded(chain.record([(sid, 2, 10, 0)]))
    assert rec["charged"] == 300
    chain.set_next_time(now + NOTICE)
    (rec,) = chain.recorded(chain.record([(sid, 3, 10, 0)]))
    assert (rec["charged"], rec["price"]) == (0, 0)
    assert chain.stream(sid)["price"] == 0


def test_payer_price_increase_applies_at_once_and_cancels_a_cut(noticed: Chain) -> None:
    chain = noticed
    m = chain.manager.functions
    sid, _ = chain.open(rate=0, deposit=100_000)
    chain.tx(m.setUsagePrice(sid, 30), chain.payer)
    chain.tx(m.setUsagePrice(sid, 10), chain.payer)  # pending
    receipt = chain.tx(m.setUsagePrice(sid, 31), chain.payer)
    now = chain.block_time(receipt)
    assert chain.events(chain.manager, receipt, "UsagePriceSet") == [
        {"id": sid, "pricePerUnit": 31, "effectiveAt": now}
    ]
    chain.set_next_time(now + NOTICE + 5)  # the cancelled cut would be in force by now
    (rec,) = chain.recorded(chain.record([(sid, 1, 1, 0)]))
    assert rec["price"] == 31


def test_payer_close_front_running_a_report_does_not_dodge_it(noticed: Chain) -> None:
    chain = noticed
    m = chain.manager.functions
    sid, _ = chain.open(rate=2, deposit=100_000)
    chain.tx(m.setUsagePrice(sid, 30), chain.payer)
    payer_before = chain.balance(chain.payer)
    r_close, r_report = _same_block(
        chain, m.closeStream(sid), chain.payer, chain.usage([(sid, 1, 10, 0)]), chain.oracle
    )
    now = chain.block_time(r_close)
    assert chain.events(chain.manager, r_close, "StreamCloseRequested") == [
        {"id": sid, "closeAt": now + NOTICE}
    ]
    assert chain.events(chain.manager, r_close, "StreamClosed") == []
    (rec,) = chain.recorded(r_report)
    assert rec["charged"] == 300
    s = chain.stream(sid)
    assert s["status"] == StreamStatus.CLOSING and s["rate"] == 0
    assert m.closeAtOf(sid).call() == now + NOTICE
    assert chain.balance(chain.payer) == payer_before  # nothing refunded yet
    balance = int(s["balance"])
    # Time accrual stopped; settlement skips a closing stream as closed.
    chain.set_next_time(now + 100)
    receipt = chain.tx(m.settleStreams([sid]), chain.other)
    assert chain.events(chain.manager, receipt, "SettleSkipped") == [
        {"id": sid, "reason": SettleSkip.CLOSED}
    ]
    assert m.accruedOf(sid).call() == 0
    # The payer cannot finalize early, and the payee can withdraw meanwhile ...
    chain.reverts(m.closeStream(sid), chain.payer, "CloseNotDue")
    chain.tx(m.withdrawAvailable(sid), chain.payee)
    chain.reverts(m.topUp(sid, 1), chain.payer, "StreamNotOpen")
    chain.reverts(m.setUsagePrice(sid, 99), chain.payer, "StreamNotOpen")
    assert chain.stream(sid)["balance"] == balance
    # ... usage still applies until closeAt ...
    chain.set_next_time(now + NOTICE - 1)
    (rec,) = chain.recorded(chain.record([(sid, 2, 1, 0)]))
    assert rec["charged"] == 30
    balance -= 30
    # ... and from closeAt reports are skipped as closed and the payer gets the rest.
    chain.set_next_time(now + NOTICE)
    receipt = chain.record([(sid, 3, 1, 0)])
    assert chain.recorded(receipt) == []
    assert [e["reason"] for e in chain.events(chain.manager, receipt, "UsageSkipped")] == [
        UsageSkip.CLOSED
    ]
    receipt = chain.tx(m.closeStream(sid), chain.payer)
    assert chain.events(chain.manager, receipt, "StreamClosed") == [
        {"id": sid, "refunded": balance}
    ]
    assert chain.balance(chain.payer) == payer_before + balance
    s = chain.stream(sid)
    assert s["status"] == StreamStatus.CLOSED and s["balance"] == 0
    assert m.closeAtOf(sid).call() == 0
    chain.reverts(m.closeStream(sid), chain.payer, "StreamNotOpen")


def test_payee_closes_at_once_even_with_a_notice_period(noticed: Chain) -> None:
    chain = noticed
    sid, _ = chain.open(rate=0, deposit=1_000)
    payer_before = chain.balance(chain.payer)
    receipt = chain.tx(chain.manager.functions.closeStream(sid), chain.payee)
    assert chain.events(chain.manager, receipt, "StreamClosed") == [{"id": sid, "refunded": 1_000}]
    assert chain.balance(chain.payer) == payer_before + 1_000
    assert chain.stream(sid)["status"] == StreamStatus.CLOSED


def test_payee_price_change_waits_for_the_notice(noticed: Chain) -> None:
    chain = noticed
    m = chain.manager.functions
    ep = chain.add_endpoint("search", 10)
    sid, _ = chain.open_listed(rate=0, deposit=100_000)
    receipt = chain.tx(m.setEndpointPrice(ep, 50), chain.payee)
    now = chain.block_time(receipt)
    assert chain.events(chain.manager, receipt, "EndpointPriceSet") == [
        {"payee": chain.payee, "endpoint": ep, "price": 50, "effectiveAt": now + NOTICE}
    ]
    assert m.endpointPrice(chain.payee, ep).call()[1:4] == [50, now + NOTICE, True]
    assert m.priceInForce(sid, ep).call() == [10, True]
    chain.set_next_time(now + NOTICE - 1)
    (rec,) = chain.recorded(chain.record([(sid, 1, 3, ep)]))
    assert (rec["price"], rec["charged"]) == (10, 30)
    chain.set_next_time(now + NOTICE)
    (rec,) = chain.recorded(chain.record([(sid, 2, 3, ep)]))
    assert (rec["price"], rec["charged"]) == (50, 150)
    assert m.priceInForce(sid, ep).call() == [50, True]
    # A cut waits as well: the payee cannot surprise itself either way, and nor the payer.
    receipt = chain.tx(m.setEndpointPrice(ep, 1), chain.payee)
    later = chain.block_time(receipt)
    (rec,) = chain.recorded(chain.record([(sid, 3, 1, ep)]))
    assert rec["price"] == 50
    assert m.estimateCost(sid, ep, 2).call() == 100
    chain.set_next_time(later + NOTICE)
    chain.mine()
    assert m.estimateCost(sid, ep, 2).call() == 2


def test_adding_an_endpoint_is_in_force_at_once(noticed: Chain) -> None:
    chain = noticed
    sid, _ = chain.open_listed(rate=0, deposit=1_000)
    ep = chain.add_endpoint("search", 9)
    (rec,) = chain.recorded(chain.record([(sid, 1, 2, ep)]))
    assert rec["charged"] == 18
    assert chain.manager.functions.noticePeriod().call() == NOTICE


def test_notice_period_is_announced_at_deployment(noticed: Chain) -> None:
    logs = chain_logs(noticed, "NoticePeriodSet")
    assert [list(e.values()) for e in logs] == [[NOTICE]]


def chain_logs(chain: Chain, name: str) -> list[dict[str, Any]]:
    """Every `name` event of StreamManager since its deployment."""
    event = getattr(chain.manager.events, name)
    return [dict(e["args"]) for e in event().get_logs(from_block=chain.deployment.deployment_block)]


# ------------------------------------------------------------------------ (c) fee remainders


def test_hundred_one_unit_reports_pay_the_fee_of_their_sum(chain: Chain) -> None:
    """The issue's example: 100 reports of 1 unit at price 39, 250 bps: fee 97, not 0."""
    sid, _ = chain.open(rate=0, deposit=10_000)
    chain.tx(chain.manager.functions.setUsagePrice(sid, 39), chain.payer)
    receipt = chain.record([(sid, seq, 1, 0) for seq in range(1, 101)])
    assert sum(r["fee"] for r in chain.recorded(receipt)) == 97
    assert chain.credited(chain.fee_recipient) == 97
    assert chain.ledger(chain.payee) == (3_900 - 97, 3_900 * FEE_BPS % 10_000)
    (fees,) = chain.events(chain.manager, receipt, "FeesCredited")
    assert fees["amount"] == 97


def test_hundred_one_unit_reports_on_a_price_list_pay_the_fee_of_their_sum(chain: Chain) -> None:
    """The same on a price-list stream: the endpoint's entry carries the remainder."""
    ep = chain.add_endpoint("search", 39)
    sid, _ = chain.open_listed(rate=0, deposit=10_000)
    receipt = chain.record([(sid, seq, 1, ep) for seq in range(1, 101)])
    assert sum(r["fee"] for r in chain.recorded(receipt)) == 97
    assert chain.credited(chain.fee_recipient) == 97
    assert chain.manager.functions.endpointCredit(chain.payee, ep).call() == [
        3_900 - 97,
        3_900 * FEE_BPS % 10_000,
    ]
    assert chain.credited(chain.payee) == 3_900 - 97


def test_remainder_carries_across_transactions_and_paths(chain: Chain) -> None:
    sid, _ = chain.open(rate=0, deposit=10**6)
    chain.tx(chain.manager.functions.setUsagePrice(sid, 39), chain.payer)
    for seq in range(1, 4):  # three transactions: 3 * 39 * 250 = 29,250 -> fee 2
        chain.record([(sid, seq, 1, 0)])
    assert chain.ledger(chain.payee) == (117 - 2, 9_250)
    chain.tx(chain.manager.functions.updateRate(sid, 39), chain.payer)  # settles 0: no change
    assert chain.ledger(chain.payee) == (117 - 2, 9_250)
    chain.advance(1)
    receipt = chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    (ev,) = chain.events(chain.manager, receipt, "StreamSettled")
    weighted = 9_250 + ev["amount"] * FEE_BPS
    assert ev["fee"] == weighted // 10_000 >= 1
    assert chain.credited(chain.fee_recipient) == 2 + ev["fee"]
    assert chain.ledger(chain.payee)[1] == weighted % 10_000


item_kinds = st.one_of(
    st.tuples(st.just("usage"), st.integers(1, 400)),
    st.tuples(st.just("batch"), st.integers(1, 30)),
    st.tuples(st.just("single"), st.integers(1, 30)),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rate=st.integers(1, 97),
    price=st.integers(1, 97),
    items=st.lists(item_kinds, min_size=1, max_size=12),
)
def test_fees_of_any_item_sequence_are_the_fee_of_the_sum(
    chain: Chain, rate: int, price: int, items: list[tuple[str, int]]
) -> None:
    """Settlements (batch and single) and usage of one payee: fees within one unit of the sum."""
    snapshot = rpc(chain.url, "evm_snapshot", [])
    try:
        m = chain.manager.functions
        fees_before = chain.credited(chain.fee_recipient)
        assert chain.ledger(chain.payee) == (0, 0)
        sid, _ = chain.open(rate=rate, deposit=10**9)
        chain.tx(m.setUsagePrice(sid, price), chain.payer)
        seq = 0
        for kind, arg in items:
            if kind == "usage":
                seq += 1
                chain.record([(sid, seq, arg, 0)])
            else:
                chain.advance(arg)
                fn = m.settleStreams([sid]) if kind == "batch" else m.updateRate(sid, rate)
                chain.tx(fn, chain.payer)
        # Every item of the payee, whatever path took it, from the logs.
        first = chain.deployment.deployment_block
        settled = chain.manager.events.StreamSettled().get_logs(from_block=first)
        used = chain.manager.events.UsageRecorded().get_logs(from_block=first)
        amounts = [int(e["args"]["amount"]) for e in settled]
        amounts += [decode_recorded(dict(e["args"]))["charged"] for e in used]
        assert len(used) == seq
        total = sum(amounts)
        fees = chain.credited(chain.fee_recipient) - fees_before
        assert fees == total * FEE_BPS // 10_000  # the fee of the sum, exactly (r0 = 0)
        assert fees - accrual.fee_of(total, FEE_BPS) <= 1
        assert chain.ledger(chain.payee) == (total - fees, total * FEE_BPS % 10_000)
        assert total > 0
    finally:
        chain.automine(True)
        assert rpc(chain.url, "evm_revert", [snapshot]) is True


# ------------------------------------------------------------ (d) pause lets payers leave


def test_while_paused_a_payer_leaves_and_usage_is_still_reported(noticed: Chain) -> None:
    chain = noticed
    m = chain.manager.functions
    sid, _ = chain.open(rate=3, deposit=50_000)
    chain.tx(m.setUsagePrice(sid, 10), chain.payer)
    chain.advance(20)
    chain.tx(m.settleStreams([sid]), chain.other)
    chain.tx(m.pause(), chain.admin)
    payer_before = chain.balance(chain.payer)
    receipt = chain.tx(m.closeStream(sid), chain.payer)
    (req,) = chain.events(chain.manager, receipt, "StreamCloseRequested")
    close_at = int(req["closeAt"])
    assert chain.stream(sid)["status"] == StreamStatus.CLOSING
    (rec,) = chain.recorded(chain.record([(sid, 1, 5, 0)]))
    assert rec["charged"] == 50
    chain.reverts(m.settleStreams([sid]), chain.other, "EnforcedPause")
    chain.reverts(m.claim(), chain.payee, "EnforcedPause")
    chain.reverts(m.withdrawAvailable(sid), chain.payee, "EnforcedPause")
    chain.reverts(m.closeStream(sid), chain.payer, "CloseNotDue")
    chain.set_next_time(close_at)
    balance = int(chain.stream(sid)["balance"])
    receipt = chain.tx(m.closeStream(sid), chain.payer)
    assert chain.events(chain.manager, receipt, "StreamClosed") == [
        {"id": sid, "refunded": balance}
    ]
    assert chain.balance(chain.payer) == payer_before + balance
    assert m.paused().call() is True


def test_while_paused_accrual_runs_on(chain: Chain) -> None:
    sid, receipt = chain.open(rate=4, deposit=50_000)
    t = chain.block_time(receipt)
    chain.tx(chain.manager.functions.pause(), chain.admin)
    chain.set_next_time(t + 100)
    chain.mine()
    assert chain.manager.functions.accruedOf(sid).call() == 400
    payer_before = chain.balance(chain.payer)
    chain.set_next_time(t + 110)
    chain.tx(chain.manager.functions.closeStream(sid), chain.payer)  # no notice: at once
    assert chain.balance(chain.payer) == payer_before + 50_000 - 440
    assert chain.credited(chain.payee) == 440 - accrual.fee_of(440, FEE_BPS)


def test_max_usage_seq_is_32_bits(chain: Chain) -> None:
    sid, _ = chain.open(rate=0, deposit=0)
    word = pack_report(sid, 2**32 - 1, 1)
    receipt = chain.tx(chain.manager.functions.recordUsage([word]), chain.oracle)
    (skip,) = chain.events(chain.manager, receipt, "UsageSkipped")
    assert (skip["seq"], skip["reason"]) == (2**32 - 1, UsageSkip.GAP)


def test_fee_recipient_gets_a_payee_index_when_set(chain: Chain) -> None:
    m = chain.manager.functions
    assert m.payeeIndexOf(chain.fee_recipient).call() != 0  # set in the constructor
    assert m.payeeIndexOf(chain.other).call() == 0
    chain.tx(m.setFeeRecipient(chain.other), chain.admin)
    index = m.payeeIndexOf(chain.other).call()
    assert index != 0 and index != m.payeeIndexOf(chain.fee_recipient).call()
    # The new recipient is credited the fees from now on.
    sid, _ = chain.open(rate=0, deposit=10_000)
    chain.tx(m.setUsagePrice(sid, 400), chain.payer)
    chain.record([(sid, 1, 1, 0)])
    assert chain.credited(chain.other) == 400 * FEE_BPS // 10_000


def test_payee_finalizes_a_closing_stream_at_once(noticed: Chain) -> None:
    """The payee closes at once, also a stream whose payer asked to close."""
    chain = noticed
    m = chain.manager.functions
    sid, _ = chain.open(rate=0, deposit=5_000)
    receipt = chain.tx(m.closeStream(sid), chain.payer)
    (req,) = chain.events(chain.manager, receipt, "StreamCloseRequested")
    assert chain.now() < req["closeAt"]
    chain.reverts(m.closeStream(sid), chain.other, "NotParty")
    payer_before = chain.balance(chain.payer)
    receipt = chain.tx(m.closeStream(sid), chain.payee)
    assert chain.events(chain.manager, receipt, "StreamClosed") == [{"id": sid, "refunded": 5_000}]
    assert chain.balance(chain.payer) == payer_before + 5_000
    assert chain.stream(sid)["status"] == StreamStatus.CLOSED
