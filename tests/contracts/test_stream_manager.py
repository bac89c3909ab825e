"""StreamManager against a real anvil: every function, its failure modes, balances and events."""

from __future__ import annotations

from eth_utils import keccak
from hexbytes import HexBytes

from keeper.plan import accrual
from keeper.plan.accrual import SettleSkip, UsageSkip, pack_report
from tests.contracts.conftest import FEE_BPS, TOKEN, Chain, name_word

ORACLE_ROLE = keccak(text="ORACLE_ROLE")
PAUSER_ROLE = keccak(text="PAUSER_ROLE")


def fee(amount: int) -> int:
    """The fee on `amount` for a payee whose fee remainder is 0 (its first item)."""
    return amount * FEE_BPS // 10_000


def carried(amounts: list[int], remainder: int = 0) -> int:
    """The fees of a payee's items in order, the remainder carried from one to the next."""
    return (remainder + sum(amounts) * FEE_BPS) // 10_000


# ------------------------------------------------------------------------ open / views


def test_open_stream_pulls_deposit_and_emits_post_state(chain: Chain) -> None:
    before = chain.balance(chain.payer)
    sid, receipt = chain.open(rate=5, deposit=1_000 * TOKEN)
    (ev,) = chain.events(chain.manager, receipt, "StreamOpened")
    assert ev == {
        "id": sid,
        "payer": chain.payer,
        "payee": chain.payee,
        "ratePerSecond": 5,
        "deposit": 1_000 * TOKEN,
        "priceList": False,
    }
    assert sid == 1
    assert chain.balance(chain.payer) == before - 1_000 * TOKEN
    assert chain.balance(chain.manager.address) == 1_000 * TOKEN
    s = chain.stream(sid)
    assert s["payer"] == chain.payer and s["payee"] == chain.payee
    assert s["balance"] == 1_000 * TOKEN and s["rate"] == 5 and s["status"] == 1
    assert s["settled_at"] == chain.block_time(receipt)
    assert s["usage_seq"] == 0 and s["price"] == 0
    sid2, _ = chain.open(rate=1, deposit=0)
    assert sid2 == 2 and chain.stream(sid2)["balance"] == 0


def test_open_stream_refuses_bad_arguments(chain: Chain) -> None:
    m = chain.manager.functions
    zero = "0x" + "00" * 20
    chain.reverts(m.openStream(zero, 1, 1), chain.payer, "ZeroAddress")
    # Credit to the contract's own address could never be claimed.
    chain.reverts(m.openStream(chain.manager.address, 1, 1), chain.payer, "ZeroAddress")
    chain.reverts(m.openStream(chain.payee, 2**64, 1), chain.payer, "RateTooLarge")
    chain.reverts(m.openStream(chain.payee, 1, 2**96), chain.payer, "AmountTooLarge")


def test_accrued_of_follows_the_formula_and_caps_at_balance(chain: Chain) -> None:
    sid, receipt = chain.open(rate=7, deposit=1_000)
    start = chain.block_time(receipt)
    chain.set_next_time(start + 100)
    chain.mine()
    assert chain.manager.functions.accruedOf(sid).call() == 700
    chain.set_next_time(start + 1_000)
    chain.mine()
    assert chain.manager.functions.accruedOf(sid).call() == 1_000  # depleted mid-interval
    assert chain.manager.functions.accruedOf(999).call() == 0  # unknown


# ------------------------------------------------------------------------ settleStreams


def test_settle_credits_payee_and_fee_recipient(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=100_000)
    start = chain.block_time(receipt)
    chain.set_next_time(start + 50)
    receipt = chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    (ev,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert ev == {"id": sid, "amount": 500, "fee": fee(500), "balanceAfter": 100_000 - 500}
    (fees,) = chain.events(chain.manager, receipt, "FeesCredited")
    assert fees == {"recipient": chain.fee_recipient, "amount": fee(500)}
    assert chain.credited(chain.payee) == 500 - fee(500)
    assert chain.credited(chain.fee_recipient) == fee(500)
    s = chain.stream(sid)
    assert s["balance"] == 100_000 - 500 and s["settled_at"] == start + 50


def test_settle_batch_mixes_valid_unknown_closed_and_already_settled(chain: Chain) -> None:
    a, _ = chain.open(rate=3, deposit=10_000)
    b, _ = chain.open(rate=4, deposit=10_000, payee=chain.payee2)
    closed, _ = chain.open(rate=5, deposit=10_000)
    chain.tx(chain.manager.functions.closeStream(closed), chain.payer)
    chain.advance(10)
    ids = [a, 999, closed, b, a]  # `a` twice: the second is already settled
    expected_count = chain.manager.functions.settleStreams(ids).call({"from": chain.other})
    assert expected_count == 2
    before_a, before_b = chain.stream(a), chain.stream(b)
    credited_before = chain.credited(chain.payee), chain.credited(chain.fee_recipient)
    remainder = chain.ledger(chain.payee)[1]  # the close settled a little for the payee
    receipt = chain.tx(chain.manager.functions.settleStreams(ids), chain.other)
    now = chain.block_time(receipt)
    settled = chain.events(chain.manager, receipt, "StreamSettled")
    skipped = chain.events(chain.manager, receipt, "SettleSkipped")
    due_a = 3 * (now - int(before_a["settled_at"]))
    due_b = 4 * (now - int(before_b["settled_at"]))
    assert [(e["id"], e["amount"]) for e in settled] == [(a, due_a), (b, due_b)]
    assert skipped == [
        {"id": 999, "reason": SettleSkip.UNKNOWN},
        {"id": closed, "reason": SettleSkip.CLOSED},
        {"id": a, "reason": SettleSkip.NOTHING_DUE},
    ]
    fee_a = carried([due_a], remainder)
    assert chain.credited(chain.payee) == credited_before[0] + due_a - fee_a
    assert chain.credited(chain.payee2) == due_b - fee(due_b)
    assert chain.credited(chain.fee_recipient) == credited_before[1] + fee_a + fee(due_b)


def test_settling_twice_in_one_block_settles_once(chain: Chain) -> None:
    sid, _ = chain.open(rate=9, deposit=10**9)
    chain.advance(30)
    chain.automine(False)
    try:
        h1 = chain.send_async(chain.manager.functions.settleStreams([sid]), chain.other)
        h2 = chain.send_async(chain.manager.functions.settleStreams([sid]), chain.payer)
        chain.mine()
    finally:
        chain.automine(True)
    r1 = dict(chain.w3.eth.wait_for_transaction_receipt(HexBytes(h1)))
    r2 = dict(chain.w3.eth.wait_for_transaction_receipt(HexBytes(h2)))
    assert r1["blockNumber"] == r2["blockNumber"]
    assert r1["status"] == r2["status"] == 1
    (first,) = chain.events(chain.manager, r1, "StreamSettled")
    assert first["amount"] > 0
    assert chain.events(chain.manager, r2, "StreamSettled") == []
    assert chain.events(chain.manager, r2, "SettleSkipped") == [
        {"id": sid, "reason": SettleSkip.NOTHING_DUE}
    ]
    assert chain.credited(chain.payee) == first["amount"] - fee(first["amount"])


def test_depletion_in_the_middle_of_an_interval(chain: Chain) -> None:
    sid, receipt = chain.open(rate=100, deposit=2_550)
    start = chain.block_time(receipt)
    chain.set_next_time(start + 40)  # 4,000 accrued by the formula, only 2,550 in the stream
    receipt = chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    (ev,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert ev["amount"] == 2_550 and ev["balanceAfter"] == 0
    assert chain.credited(chain.payee) == 2_550 - fee(2_550)
    chain.advance(100)
    assert chain.manager.functions.accruedOf(sid).call() == 0
    receipt = chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    assert chain.events(chain.manager, receipt, "SettleSkipped") == [
        {"id": sid, "reason": SettleSkip.NOTHING_DUE}
    ]


def test_rate_zero_accrues_nothing(chain: Chain) -> None:
    sid, _ = chain.open(rate=0, deposit=5_000)
    chain.advance(1_000)
    assert chain.manager.functions.accruedOf(sid).call() == 0
    receipt = chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    assert chain.events(chain.manager, receipt, "SettleSkipped") == [
        {"id": sid, "reason": SettleSkip.NOTHING_DUE}
    ]
    assert chain.stream(sid)["balance"] == 5_000
    assert chain.credited(chain.payee) == 0


def test_settle_folds_one_payee_and_separates_payees(chain: Chain) -> None:
    ids = [
        chain.open(rate=2, deposit=10**6, payee=p)[0]
        for p in (chain.payee, chain.payee, chain.payee2, chain.payee)
    ]
    chain.advance(20)
    starts = [int(chain.stream(i)["settled_at"]) for i in ids]
    receipt = chain.tx(chain.manager.functions.settleStreams(ids), chain.other)
    now = chain.block_time(receipt)
    dues = [2 * (now - s) for s in starts]
    mine = [dues[0], dues[1], dues[3]]
    assert chain.credited(chain.payee) == sum(mine) - carried(mine)
    assert chain.credited(chain.payee2) == dues[2] - fee(dues[2])
    assert chain.credited(chain.fee_recipient) == carried(mine) + fee(dues[2])


def test_empty_settle_batch_does_nothing(chain: Chain) -> None:
    receipt = chain.tx(chain.manager.functions.settleStreams([]), chain.other)
    assert receipt["logs"] == []


# ------------------------------------------------------------------------ topUp / rate / close


def test_top_up_settles_first_and_adds(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=1_000)
    start = chain.block_time(receipt)
    chain.set_next_time(start + 20)
    receipt = chain.tx(chain.manager.functions.topUp(sid, 5_000), chain.other)
    (settled,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert settled == {"id": sid, "amount": 200, "fee": fee(200), "balanceAfter": 800}
    (topped,) = chain.events(chain.manager, receipt, "StreamToppedUp")
    assert topped == {"id": sid, "amount": 5_000, "balanceAfter": 5_800}
    assert chain.stream(sid)["balance"] == 5_800
    assert chain.balance(chain.manager.address) == 6_000


def test_top_up_of_a_depleted_stream_restarts_accrual_from_the_top_up(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=100)
    start = chain.block_time(receipt)
    chain.set_next_time(start + 500)  # depleted after 10 s, long ago
    receipt = chain.tx(chain.manager.functions.topUp(sid, 1_000), chain.payer)
    (settled,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert settled["amount"] == 100 and settled["balanceAfter"] == 0
    assert chain.stream(sid)["settled_at"] == start + 500
    chain.set_next_time(start + 530)
    chain.mine()
    # 30 s since the top-up, not 520 s since the stream ran dry.
    assert chain.manager.functions.accruedOf(sid).call() == 300


def test_top_up_refuses_unknown_and_closed(chain: Chain) -> None:
    sid, _ = chain.open(rate=1, deposit=10)
    chain.tx(chain.manager.functions.closeStream(sid), chain.payer)
    chain.reverts(chain.manager.functions.topUp(sid, 1), chain.payer, "StreamNotOpen")
    chain.reverts(chain.manager.functions.topUp(77, 1), chain.payer, "UnknownStream")


def test_update_rate_settles_at_old_rate_and_is_payer_only(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=10**6)
    start = chain.block_time(receipt)
    chain.reverts(chain.manager.functions.updateRate(sid, 1), chain.other, "NotPayer")
    chain.reverts(chain.manager.functions.updateRate(sid, 2**64), chain.payer, "RateTooLarge")
    chain.set_next_time(start + 100)
    receipt = chain.tx(chain.manager.functions.updateRate(sid, 3), chain.payer)
    (settled,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert settled["amount"] == 1_000
    assert chain.events(chain.manager, receipt, "StreamRateUpdated") == [
        {"id": sid, "ratePerSecond": 3}
    ]
    chain.set_next_time(start + 110)
    chain.mine()
    assert chain.manager.functions.accruedOf(sid).call() == 30


def test_close_settles_refunds_payer_and_blocks_further_use(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=10_000)
    start = chain.block_time(receipt)
    payer_before = chain.balance(chain.payer)
    chain.reverts(chain.manager.functions.closeStream(sid), chain.other, "NotParty")
    chain.set_next_time(start + 100)
    receipt = chain.tx(chain.manager.functions.closeStream(sid), chain.payee)  # payee may close
    (settled,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert settled == {"id": sid, "amount": 1_000, "fee": fee(1_000), "balanceAfter": 9_000}
    assert chain.events(chain.manager, receipt, "StreamClosed") == [{"id": sid, "refunded": 9_000}]
    assert chain.balance(chain.payer) == payer_before + 9_000
    s = chain.stream(sid)
    assert s["status"] == 2 and s["balance"] == 0
    chain.reverts(chain.manager.functions.closeStream(sid), chain.payer, "StreamNotOpen")
    chain.reverts(chain.manager.functions.updateRate(sid, 1), chain.payer, "StreamNotOpen")
    chain.reverts(chain.manager.functions.setUsagePrice(sid, 1), chain.payer, "StreamNotOpen")
    chain.reverts(chain.manager.functions.withdrawAvailable(sid), chain.payee, "StreamNotOpen")


# ------------------------------------------------------------------------ claim / withdraw


def test_claim_pays_everything_credited_in_one_transfer(chain: Chain) -> None:
    a, _ = chain.open(rate=10, deposit=10**6)
    b, _ = chain.open(rate=20, deposit=10**6, payer=chain.payer2)
    chain.advance(10)
    chain.tx(chain.manager.functions.settleStreams([a, b]), chain.other)
    owed = chain.credited(chain.payee)
    assert owed > 0
    receipt = chain.tx(chain.manager.functions.claim(), chain.payee)
    assert chain.events(chain.manager, receipt, "Claimed") == [
        {"payee": chain.payee, "amount": owed}
    ]
    transfers = chain.events(chain.token, receipt, "Transfer")
    assert len(transfers) == 1 and transfers[0]["value"] == owed
    assert chain.balance(chain.payee) == owed
    assert chain.credited(chain.payee) == 0


def test_claim_with_nothing_owed_is_refused(chain: Chain) -> None:
    chain.reverts(chain.manager.functions.claim(), chain.payee, "NothingToClaim")
    assert chain.balance(chain.payee) == 0


def test_fee_recipient_claims_fees(chain: Chain) -> None:
    sid, _ = chain.open(rate=1_000, deposit=10**9)
    chain.advance(100)
    chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)
    fees = chain.credited(chain.fee_recipient)
    assert fees > 0
    before = chain.balance(chain.fee_recipient)
    chain.tx(chain.manager.functions.claim(), chain.fee_recipient)
    assert chain.balance(chain.fee_recipient) == before + fees


def test_withdraw_available_settles_and_pays_the_payee(chain: Chain) -> None:
    sid, receipt = chain.open(rate=10, deposit=10**6)
    start = chain.block_time(receipt)
    chain.reverts(chain.manager.functions.withdrawAvailable(sid), chain.other, "NotPayee")
    chain.set_next_time(start + 60)
    receipt = chain.tx(chain.manager.functions.withdrawAvailable(sid), chain.payee)
    assert chain.balance(chain.payee) == 600 - fee(600)
    assert chain.events(chain.manager, receipt, "Claimed") == [
        {"payee": chain.payee, "amount": 600 - fee(600)}
    ]
    assert chain.stream(sid)["balance"] == 10**6 - 600


# ------------------------------------------------------------------------ usage


def _priced_stream(chain: Chain, price: int, deposit: int, rate: int = 0) -> int:
    sid, _ = chain.open(rate=rate, deposit=deposit)
    receipt = chain.tx(chain.manager.functions.setUsagePrice(sid, price), chain.payer)
    # An increase (from 0) is in force at once: effectiveAt is the block's time.
    assert chain.events(chain.manager, receipt, "UsagePriceSet") == [
        {"id": sid, "pricePerUnit": price, "effectiveAt": chain.block_time(receipt)}
    ]
    return sid


def test_set_usage_price_is_payer_only_and_bounded(chain: Chain) -> None:
    sid, _ = chain.open(rate=0, deposit=0)
    chain.reverts(chain.manager.functions.setUsagePrice(sid, 1), chain.other, "NotPayer")
    chain.reverts(chain.manager.functions.setUsagePrice(sid, 2**96), chain.payer, "PriceTooLarge")
    chain.tx(chain.manager.functions.setUsagePrice(sid, 2**96 - 1), chain.payer)
    assert chain.stream(sid)["price"] == 2**96 - 1


def test_usage_charges_units_times_price_exactly_once(chain: Chain) -> None:
    sid = _priced_stream(chain, price=30, deposit=100_000)
    m = chain.manager.functions
    assert m.recordUsage([]).call({"from": chain.oracle}) == 0
    receipt = chain.record([(sid, 1, 10, 0), (sid, 2, 5, 0)])
    recorded = chain.recorded(receipt)
    assert recorded == [
        {
            "id": sid,
            "seq": 1,
            "endpoint": 0,
            "units": 10,
            "charged": 300,
            "fee": fee(300),
            "shortfall": 0,
            "balance_after": 100_000 - 300,
            "price": 30,
        },
        {
            "id": sid,
            "seq": 2,
            "endpoint": 0,
            "units": 5,
            "charged": 150,
            "fee": carried([300, 150]) - fee(300),
            "shortfall": 0,
            "balance_after": 100_000 - 450,
            "price": 30,
        },
    ]
    assert chain.stream(sid)["usage_seq"] == 2
    assert chain.credited(chain.payee) == 450 - carried([300, 150])
    assert chain.credited(chain.fee_recipient) == carried([300, 150])
    assert chain.ledger(chain.payee) == (450 - carried([300, 150]), 450 * FEE_BPS % 10_000)


def test_usage_replay_and_gap_are_skipped_with_events(chain: Chain) -> None:
    sid = _priced_stream(chain, price=1, deposit=10_000)
    m = chain.manager.functions
    chain.record([(sid, 1, 4, 0)])
    assert (
        m.recordUsage(
            [pack_report(sid, 1, 4), pack_report(sid, 3, 9), pack_report(sid, 2, 2)]
        ).call({"from": chain.oracle})
        == 1
    )
    receipt = chain.record([(sid, 1, 4, 0), (sid, 3, 9, 0), (sid, 2, 2, 0)])
    assert chain.events(chain.manager, receipt, "UsageSkipped") == [
        {"id": sid, "seq": 1, "lastSeq": 1, "reason": UsageSkip.REPLAY},
        {"id": sid, "seq": 3, "lastSeq": 1, "reason": UsageSkip.GAP},
    ]
    (rec,) = chain.recorded(receipt)
    assert rec["seq"] == 2 and rec["charged"] == 2
    assert chain.stream(sid)["balance"] == 10_000 - 4 - 2
    assert chain.stream(sid)["usage_seq"] == 2


def test_usage_skips_unknown_closed_and_bad_units(chain: Chain) -> None:
    sid = _priced_stream(chain, price=1, deposit=10_000)
    closed = _priced_stream(chain, price=1, deposit=10)
    chain.tx(chain.manager.functions.closeStream(closed), chain.payer)
    # Units are 64 bits of the word: 2**64 cannot be sent; the top units are accepted.
    receipt = chain.record([(404, 1, 1, 0), (closed, 1, 1, 0), (sid, 1, 0, 0)])
    assert [e["reason"] for e in chain.events(chain.manager, receipt, "UsageSkipped")] == [
        UsageSkip.UNKNOWN,
        UsageSkip.CLOSED,
        UsageSkip.BAD_UNITS,
    ]
    assert chain.events(chain.manager, receipt, "UsageRecorded") == []
    assert chain.stream(sid)["usage_seq"] == 0 and chain.stream(sid)["balance"] == 10_000
    # Bits 192..255 of a word are ignored: this is report (sid, 1, 3 units).
    word = pack_report(sid, 1, 3) | (0xDEAD << 200)
    receipt = chain.tx(chain.manager.functions.recordUsage([word]), chain.oracle)
    (rec,) = chain.recorded(receipt)
    assert (rec["id"], rec["seq"], rec["units"], rec["charged"]) == (sid, 1, 3, 3)


def test_usage_shortfall_charges_what_is_left_and_depletes(chain: Chain) -> None:
    sid = _priced_stream(chain, price=100, deposit=250, rate=1)
    remainder = chain.ledger(chain.payee)[1]  # setting the price settled a second of rate 1
    receipt = chain.record([(sid, 1, 4, 0)])
    (rec,) = chain.recorded(receipt)
    assert rec == {
        "id": sid,
        "seq": 1,
        "endpoint": 0,
        "units": 4,
        "charged": 250,
        "fee": carried([250], remainder),
        "shortfall": 150,
        "balance_after": 0,
        "price": 100,
    }
    assert chain.manager.functions.accruedOf(sid).call() == 0
    # A depleted stream still advances its sequence: the report is consumed, fully short.
    receipt = chain.record([(sid, 2, 1, 0)])
    (rec,) = chain.recorded(receipt)
    assert rec["charged"] == 0 and rec["shortfall"] == 100 and rec["seq"] == 2


def test_usage_is_oracle_only(chain: Chain) -> None:
    sid = _priced_stream(chain, price=1, deposit=10)
    m = chain.manager.functions
    assert not m.hasRole(ORACLE_ROLE, chain.payee).call()
    chain.reverts(chain.usage([(sid, 1, 1, 0)]), chain.other, "AccessControlUnauthorizedAccount")
    chain.reverts(chain.usage([(sid, 1, 1, 0)]), chain.payee, "AccessControlUnauthorizedAccount")
    assert not any(f.get("name") == "recordUsageBatch" for f in chain.manager.abi)
    assert chain.manager.functions.hasRole(ORACLE_ROLE, chain.oracle).call()
    assert not chain.manager.functions.hasRole(ORACLE_ROLE, chain.other).call()


# ------------------------------------------------------------------------ admin / pause


def test_fee_admin_is_admin_only_and_capped(chain: Chain) -> None:
    m = chain.manager.functions
    chain.reverts(m.setFee(10), chain.other, "AccessControlUnauthorizedAccount")
    chain.reverts(m.setFee(1_001), chain.admin, "FeeTooHigh")
    receipt = chain.tx(m.setFee(0), chain.admin)
    assert chain.events(chain.manager, receipt, "FeeUpdated") == [{"feeBps": 0}]
    chain.reverts(m.setFeeRecipient(chain.other), chain.other, "AccessControlUnauthorizedAccount")
    chain.reverts(m.setFeeRecipient("0x" + "00" * 20), chain.admin, "ZeroAddress")
    chain.reverts(m.setFeeRecipient(chain.manager.address), chain.admin, "ZeroAddress")
    chain.tx(m.setFeeRecipient(chain.other), chain.admin)
    assert m.feeRecipient().call() == chain.other
    sid, _ = chain.open(rate=10, deposit=10**6)
    chain.advance(10)
    receipt = chain.tx(m.settleStreams([sid]), chain.other)
    (ev,) = chain.events(chain.manager, receipt, "StreamSettled")
    assert ev["fee"] == 0 and chain.credited(chain.payee) == ev["amount"]
    assert chain.events(chain.manager, receipt, "FeesCredited") == []


def test_pause_stops_every_money_path_but_leaving_and_usage(chain: Chain) -> None:
    sid = _priced_stream(chain, price=1, deposit=10**6, rate=1)
    chain.add_endpoint("search", 5)
    chain.advance(10)
    chain.tx(chain.manager.functions.settleStreams([sid]), chain.other)  # the payee has credit
    m = chain.manager.functions
    chain.reverts(m.pause(), chain.other, "AccessControlUnauthorizedAccount")
    chain.tx(m.pause(), chain.admin)
    assert m.paused().call() is True
    chain.reverts(m.pause(), chain.admin, "EnforcedPause")
    blocked = [
        (m.openStream(chain.payee, 1, 1), chain.payer),
        (m.openStreamOnPriceList(chain.payee, 1, 1), chain.payer),
        (m.topUp(sid, 1), chain.payer),
        (m.updateRate(sid, 2), chain.payer),
        (m.setUsagePrice(sid, 2), chain.payer),
        (m.addEndpoint(name_word("other"), 1), chain.payee),
        (m.setEndpointPrice(1, 2), chain.payee),
        (m.withdrawAvailable(sid), chain.payee),
        (m.claim(), chain.payee),
        (m.settleStreams([sid]), chain.other),
    ]
    for fn, sender in blocked:
        chain.reverts(fn, sender, "EnforcedPause")
    # The oracle still reports (test_stream_manager_v2 covers the payer leaving while paused).
    receipt = chain.record([(sid, 1, 1, 0)])
    assert [r["charged"] for r in chain.recorded(receipt)] == [1]
    chain.reverts(m.unpause(), chain.other, "AccessControlUnauthorizedAccount")
    chain.tx(m.unpause(), chain.admin)
    chain.reverts(m.unpause(), chain.admin, "ExpectedPause")
    chain.advance(5)  # (blocks mined in one second share its timestamp: let time pass)
    receipt = chain.tx(m.settleStreams([sid]), chain.other)
    assert len(chain.events(chain.manager, receipt, "StreamSettled")) == 1


def test_roles_after_deployment(chain: Chain) -> None:
    m = chain.manager.functions
    assert m.hasRole(b"\x00" * 32, chain.admin).call()
    assert m.hasRole(PAUSER_ROLE, chain.admin).call()
    assert not m.hasRole(PAUSER_ROLE, chain.other).call()
    assert m.feeBps().call() == FEE_BPS
    assert m.token().call() == chain.token.address


# ------------------------------------------------------------------------ python model


def test_python_model_predicts_a_whole_scenario(chain: Chain) -> None:
    """The keeper.plan.accrual transitions applied step by step give the contract's state."""
    sid, receipt = chain.open(rate=13, deposit=50_000)
    t0 = chain.block_time(receipt)
    model = accrual.Stream(balance=50_000, rate=13, settled_at=t0)
    chain.set_next_time(t0 + 1_000)
    chain.tx(chain.manager.functions.setUsagePrice(sid, 7), chain.payer)
    model = accrual.set_usage_price(model, t0 + 1_000, 7, chain.notice)
    chain.set_next_time(t0 + 1_500)
    chain.record([(sid, 1, 3_000, 0)])
    charged = accrual.charge_usage(model, 1, 3_000, FEE_BPS, now=t0 + 1_500)
    assert isinstance(charged, accrual.UsageCharged)
    model = charged.stream
    chain.set_next_time(t0 + 4_000)
    chain.mine()
    assert chain.manager.functions.accruedOf(sid).call() == accrual.accrued_of(model, t0 + 4_000)
    assert accrual.accrued_of(model, t0 + 4_000) == model.balance  # depleted by now
    assert accrual.depletion_time(model) is not None
