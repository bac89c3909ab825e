"""The accrual formula and the stream state transitions, as pure integer functions.

This is the one Python statement of what StreamManager computes; the planners and
`keeper verify` use it, the SQL views restate it, and the tests hold all three equal to the
contract. Amounts are token base units (`int`), times are unix seconds (`int`); nothing here
ever uses a float.

    due(t) = min(balance, rate * (t - settled_at))

A stream whose balance reaches zero is depleted and accrues nothing until topped up (top-up
settles first, so accrual restarts from the top-up). Usage charges come out of the balance
first; time accrual is capped by what is left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

BPS_DENOMINATOR = 10_000
MAX_USAGE_UNITS = 2**64 - 1
MAX_USAGE_SEQ = 2**48 - 1


class StreamStatus(IntEnum):
    """`status` as StreamManager stores it."""

    UNKNOWN = 0
    OPEN = 1
    CLOSED = 2


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


@dataclass(frozen=True, slots=True)
class Stream:
    """What StreamManager stores for one stream, minus the parties."""

    balance: int
    rate: int
    settled_at: int
    usage_seq: int = 0
    price_per_unit: int = 0
    status: StreamStatus = StreamStatus.OPEN


@dataclass(frozen=True, slots=True)
class Settled:
    """Result of a settlement: `amount` left the balance, `fee` of it went to the fee recipient."""

    stream: Stream
    amount: int
    fee: int

    @property
    def paid(self) -> int:
        """What the payee was credited."""
        return self.amount - self.fee


@dataclass(frozen=True, slots=True)
class UsageCharged:
    """Result of one applied usage report."""

    stream: Stream
    charged: int
    fee: int
    shortfall: int


def accrued(balance: int, rate: int, settled_at: int, now: int) -> int:
    """The accrual formula: min(balance, rate * elapsed), elapsed never negative."""
    elapsed = now - settled_at
    if elapsed <= 0 or rate <= 0 or balance <= 0:
        return 0
    return min(balance, rate * elapsed)


def accrued_of(stream: Stream, now: int) -> int:
    """`StreamManager.accruedOf` at a block with timestamp `now` (0 unless open)."""
    if stream.status is not StreamStatus.OPEN:
        return 0
    return accrued(stream.balance, stream.rate, stream.settled_at, now)


def fee_of(amount: int, fee_bps: int) -> int:
    """The platform fee on `amount` (rounded down, as the contract does)."""
    return amount * fee_bps // BPS_DENOMINATOR


def settle(stream: Stream, now: int, fee_bps: int) -> Settled:
    """Settle as topUp/updateRate/close do: settledAt moves to `now` even when nothing is due."""
    amount = accrued_of(stream, now)
    after = replace(stream, balance=stream.balance - amount, settled_at=now)
    return Settled(after, amount, fee_of(amount, fee_bps))


def settle_in_batch(stream: Stream, now: int, fee_bps: int) -> Settled | SettleSkip:
    """Settle as `settleStreams` does: a stream with nothing due is skipped, untouched."""
    if stream.status is StreamStatus.UNKNOWN:
        return SettleSkip.UNKNOWN
    if stream.status is StreamStatus.CLOSED:
        return SettleSkip.CLOSED
    if accrued_of(stream, now) == 0:
        return SettleSkip.NOTHING_DUE
    return settle(stream, now, fee_bps)


def top_up(stream: Stream, now: int, amount: int, fee_bps: int) -> Settled:
    """Settle, then add `amount` to the balance."""
    done = settle(stream, now, fee_bps)
    return replace(done, stream=replace(done.stream, balance=done.stream.balance + amount))


def update_rate(stream: Stream, now: int, new_rate: int, fee_bps: int) -> Settled:
    """Settle at the old rate, then switch to `new_rate`."""
    done = settle(stream, now, fee_bps)
    return replace(done, stream=replace(done.stream, rate=new_rate))


def close(stream: Stream, now: int, fee_bps: int) -> tuple[Settled, int]:
    """Settle, then refund the rest to the payer; returns the settlement and the refund."""
    done = settle(stream, now, fee_bps)
    refund = done.stream.balance
    closed = replace(done.stream, balance=0, status=StreamStatus.CLOSED)
    return replace(done, stream=closed), refund


def usage_check(stream: Stream, seq: int, units: int) -> UsageSkip | None:
    """Why `recordUsageBatch` would skip this report, or None when it applies."""
    if stream.status is StreamStatus.UNKNOWN:
        return UsageSkip.UNKNOWN
    if stream.status is StreamStatus.CLOSED:
        return UsageSkip.CLOSED
    if seq <= stream.usage_seq:
        return UsageSkip.REPLAY
    if seq != stream.usage_seq + 1 or seq > MAX_USAGE_SEQ:
        return UsageSkip.GAP
    if units <= 0 or units > MAX_USAGE_UNITS:
        return UsageSkip.BAD_UNITS
    return None


def charge_usage(stream: Stream, seq: int, units: int, fee_bps: int) -> UsageCharged | UsageSkip:
    """Apply one usage report: charge units * price, or what is left of the balance."""
    skip = usage_check(stream, seq, units)
    if skip is not None:
        return skip
    cost = units * stream.price_per_unit
    charged = min(cost, stream.balance)
    after = replace(stream, balance=stream.balance - charged, usage_seq=seq)
    return UsageCharged(after, charged, fee_of(charged, fee_bps), cost - charged)


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
