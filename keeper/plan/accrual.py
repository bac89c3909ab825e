"""The accrual formula and the stream state transitions, as pure integer functions.

This is the one Python statement of what StreamManager computes; the planners and
`keeper verify` use it, the SQL views restate it, and the tests hold all three equal to the
contract. Amounts are token base units (`int`), times are unix seconds (`int`); nothing here
ever uses a float.

    due(t) = min(balance, rate * (t - settled_at))

A stream whose balance reaches zero is depleted and accrues nothing until topped up (top-up
settles first, so accrual restarts from the top-up). Usage charges come out of the balance
first; time accrual is capped by what is left.

Prices wait for the notice period: a report is charged the price *in force* when it is applied,
`pending` once `effective_at` has come, `price` before (`price_in_force`). Fees carry their
remainder (`carry_fee`): the fees of any sequence of items credited to one entry are the fee of
their sum, to within one base unit, however the items are split. The entries: a payee's ledger
(settlements and own-price usage) and each (payee, endpoint) of its price list (usage of
price-list streams); `remainder` arguments here are the remainder of the entry credited.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from keeper.plan.batches import pack_usage, unpack_usage

BPS_DENOMINATOR = 10_000
MAX_USAGE_UNITS = 2**64 - 1
MAX_USAGE_SEQ = 2**32 - 1
MAX_ENDPOINT = 2**32 - 1


class StreamStatus(IntEnum):
    """`status` as StreamManager stores it."""

    UNKNOWN = 0
    OPEN = 1
    CLOSED = 2
    CLOSING = 3


class SettleSkip(IntEnum):
    """Reasons a settle batch skips an id (StreamManager's SKIP_* constants)."""

    UNKNOWN = 1
    CLOSED = 2
    NOTHING_DUE = 3


class UsageSkip(IntEnum):
    """Reasons a usage batch skips a report (StreamManager's SKIP_* constants)."""

    UNKNOWN = 1
    CLOSED = 2
    REPLAY = 4
    GAP = 5
    BAD_UNITS = 6
    UNKNOWN_ENDPOINT = 7


@dataclass(frozen=True, slots=True)
class Stream:
    """What StreamManager stores for one stream, minus the parties.

    `price_per_unit` is the own price (0 for a stream on its payee's price list);
    `pending_price` takes its place from `price_effective_at` on (0: no change pending).
    `close_at` is set while the stream is CLOSING.
    """

    balance: int
    rate: int
    settled_at: int
    usage_seq: int = 0
    price_per_unit: int = 0
    status: StreamStatus = StreamStatus.OPEN
    pending_price: int = 0
    price_effective_at: int = 0
    close_at: int = 0
    price_list: bool = False


@dataclass(frozen=True, slots=True)
class Settled:
    """Result of a settlement: `amount` left the balance, `fee` of it went to the fee recipient.

    `remainder` is the payee's fee remainder after this item (see `carry_fee`).
    """

    stream: Stream
    amount: int
    fee: int
    remainder: int = 0

    @property
    def paid(self) -> int:
        """What the payee was credited."""
        return self.amount - self.fee


@dataclass(frozen=True, slots=True)
class UsageCharged:
    """Result of one applied usage report (`price`: the price in force that was charged)."""

    stream: Stream
    charged: int
    fee: int
    shortfall: int
    price: int = 0
    remainder: int = 0

    @property
    def paid(self) -> int:
        """What the payee was credited."""
        return self.charged - self.fee


def accrued(balance: int, rate: int, settled_at: int, now: int) -> int:
    """The accrual formula: min(balance, rate * elapsed), elapsed never negative."""
    elapsed = now - settled_at
    if elapsed <= 0 or rate <= 0 or balance <= 0:
        return 0
    return min(balance, rate * elapsed)


def accrued_of(stream: Stream, now: int) -> int:
    """`StreamManager.accruedOf` at a block with timestamp `now` (0 unless open).

    A closing stream has rate 0, so it accrues nothing either.
    """
    if stream.status is not StreamStatus.OPEN:
        return 0
    return accrued(stream.balance, stream.rate, stream.settled_at, now)


def fee_of(amount: int, fee_bps: int) -> int:
    """The platform fee on `amount` alone (rounded down): `carry_fee` with no remainder."""
    return amount * fee_bps // BPS_DENOMINATOR


def carry_fee(amount: int, fee_bps: int, remainder: int = 0) -> tuple[int, int]:
    """The fee on one item of a payee whose ledger carries `remainder`: (fee, new remainder).

    t = remainder + amount * bps; fee = t // 10000; remainder = t % 10000.
    """
    total = remainder + amount * fee_bps
    return total // BPS_DENOMINATOR, total % BPS_DENOMINATOR


def price_in_force(price: int, pending: int, effective_at: int, now: int) -> int:
    """The price a report applied at `now` is charged: `pending` once `effective_at` has come."""
    if effective_at != 0 and now >= effective_at:
        return pending
    return price


def own_price_in_force(stream: Stream, now: int) -> int:
    """The own price of `stream` in force at `now` (0 for a stream on a price list)."""
    return price_in_force(
        stream.price_per_unit, stream.pending_price, stream.price_effective_at, now
    )


def set_usage_price(stream: Stream, now: int, price: int, notice_period: int) -> Stream:
    """A payer's own-price change: an increase (or no change) at once, a decrease after notice.

    An increase also cancels a pending decrease. Stored as (price in force, pending, at).
    """
    current = own_price_in_force(stream, now)
    if price >= current:
        return replace(stream, price_per_unit=price, pending_price=0, price_effective_at=0)
    if notice_period == 0:
        return replace(stream, price_per_unit=price, pending_price=0, price_effective_at=0)
    return replace(
        stream, price_per_unit=current, pending_price=price, price_effective_at=now + notice_period
    )


def settle(stream: Stream, now: int, fee_bps: int, remainder: int = 0) -> Settled:
    """Settle as topUp/updateRate/close do: settledAt moves to `now` even when nothing is due."""
    amount = accrued_of(stream, now)
    after = replace(stream, balance=stream.balance - amount, settled_at=now)
    fee, remainder = carry_fee(amount, fee_bps, remainder)
    return Settled(after, amount, fee, remainder)


def settle_in_batch(
    stream: Stream, now: int, fee_bps: int, remainder: int = 0
) -> Settled | SettleSkip:
    """Settle as `settleStreams` does: a stream with nothing due is skipped, untouched."""
    if stream.status is StreamStatus.UNKNOWN:
        return SettleSkip.UNKNOWN
    if stream.status is not StreamStatus.OPEN:
        return SettleSkip.CLOSED
    if accrued_of(stream, now) == 0:
        return SettleSkip.NOTHING_DUE
    return settle(stream, now, fee_bps, remainder)


def top_up(stream: Stream, now: int, amount: int, fee_bps: int, remainder: int = 0) -> Settled:
    """Settle, then add `amount` to the balance."""
    done = settle(stream, now, fee_bps, remainder)
    return replace(done, stream=replace(done.stream, balance=done.stream.balance + amount))


def update_rate(
    stream: Stream, now: int, new_rate: int, fee_bps: int, remainder: int = 0
) -> Settled:
    """Settle at the old rate, then switch to `new_rate`."""
    done = settle(stream, now, fee_bps, remainder)
    return replace(done, stream=replace(done.stream, rate=new_rate))


def close(stream: Stream, now: int, fee_bps: int, remainder: int = 0) -> tuple[Settled, int]:
    """Settle, then refund the rest to the payer; returns the settlement and the refund.

    This is the immediate close (the payee's, a payer's with no notice period, or the
    finalization of a CLOSING stream).
    """
    done = settle(stream, now, fee_bps, remainder)
    refund = done.stream.balance
    closed = replace(done.stream, balance=0, status=StreamStatus.CLOSED, close_at=0)
    return replace(done, stream=closed), refund


def request_close(
    stream: Stream, now: int, fee_bps: int, notice_period: int, remainder: int = 0
) -> Settled:
    """A payer's close of an OPEN stream with a notice period: settle, rate 0, CLOSING."""
    done = settle(stream, now, fee_bps, remainder)
    closing = replace(
        done.stream, rate=0, status=StreamStatus.CLOSING, close_at=now + notice_period
    )
    return replace(done, stream=closing)


def usage_check(
    stream: Stream, seq: int, units: int, *, now: int | None = None
) -> UsageSkip | None:
    """Why `recordUsage` would skip this report (endpoint aside), or None when it applies.

    A CLOSING stream takes reports until its `close_at`; `now` None means "before it".
    """
    if stream.status is StreamStatus.UNKNOWN:
        return UsageSkip.UNKNOWN
    if stream.status is StreamStatus.CLOSED:
        return UsageSkip.CLOSED
    if stream.status is StreamStatus.CLOSING and now is not None and now >= stream.close_at:
        return UsageSkip.CLOSED
    if seq <= stream.usage_seq:
        return UsageSkip.REPLAY
    if seq != stream.usage_seq + 1 or seq > MAX_USAGE_SEQ:
        return UsageSkip.GAP
    if units <= 0 or units > MAX_USAGE_UNITS:
        return UsageSkip.BAD_UNITS
    return None


def charge_usage(
    stream: Stream,
    seq: int,
    units: int,
    fee_bps: int,
    *,
    now: int | None = None,
    price: int | None = None,
    remainder: int = 0,
) -> UsageCharged | UsageSkip:
    """Apply one usage report: charge units * price, or what is left of the balance.

    `price` is the endpoint's price in force (see `price_in_force`); None means the stream's
    own price in force at `now` (the stored `price_per_unit` when `now` is None). Pricing an
    endpoint is the caller's business, as is UNKNOWN_ENDPOINT (the contract checks the
    endpoint after the stream and sequence checks).
    """
    skip = usage_check(stream, seq, units, now=now)
    if skip is not None:
        return skip
    if price is None:
        price = stream.price_per_unit if now is None else own_price_in_force(stream, now)
    cost = units * price
    charged = min(cost, stream.balance)
    after = replace(stream, balance=stream.balance - charged, usage_seq=seq)
    fee, remainder = carry_fee(charged, fee_bps, remainder)
    return UsageCharged(after, charged, fee, cost - charged, price, remainder)


def depletion_time(stream: Stream) -> int | None:
    """The first second at which the stream has accrued its whole balance (None: never)."""
    if stream.status is not StreamStatus.OPEN or stream.rate <= 0:
        return None
    if stream.balance <= 0:
        return stream.settled_at
    return stream.settled_at + -(-stream.balance // stream.rate)  # ceil division on ints


def runway_seconds(stream: Stream, now: int) -> int | None:
    """Seconds from `now` until depletion (0 when already depleted; None: never depletes)."""
    at = depletion_time(stream)
    if at is None:
        return None
    return max(0, at - now)


def pack_report(stream_id: int, seq: int, units: int, endpoint: int = 0) -> int:
    """One `recordUsage` word: streamId | seq << 64 | endpoint << 96 | units << 128 (the
    keeper's encoding, `keeper.plan.batches.pack_usage`, in the contract's argument order). Fields
    out of their bit width are refused (they would corrupt the neighbouring field)."""
    return pack_usage(stream_id, units, seq, endpoint)


def unpack_report(word: int) -> tuple[int, int, int, int]:
    """(stream_id, seq, endpoint, units) of a report word (bits 192..255 ignored)."""
    stream_id, units, seq, endpoint = unpack_usage(word)
    return stream_id, seq, endpoint, units
