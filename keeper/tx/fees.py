"""Transaction fees: what to offer first, and how to bump a transaction that is not mined.

Pure integer functions (wei), so the rules are tested on their own as well as against a node:
anvil accepts any strictly higher replacement, while geth and reth require +10 % on both fee
fields, so the bump is +12.5 % on both (with rounding up), never less.

EIP-1559: max fee = 2 * base fee + tip (the doubling absorbs six full blocks of base-fee rise),
tip from the node or the configuration, both under configured caps. Legacy chains get a single
gas price with the same caps and bump rule.
"""

from __future__ import annotations

from dataclasses import dataclass

BUMP_NUMERATOR = 1125  # +12.5 %
BUMP_DENOMINATOR = 1000


@dataclass(frozen=True, slots=True)
class FeeCaps:
    """Upper limits an operator sets (wei)."""

    max_fee: int
    max_priority_fee: int


@dataclass(frozen=True, slots=True)
class Fees:
    """The fee fields of one attempt. Legacy transactions use `gas_price` only."""

    max_fee: int
    priority_fee: int
    legacy: bool = False

    @property
    def gas_price(self) -> int:
        """The legacy gas price (the same number as max_fee)."""
        return self.max_fee

    def worst_case_cost(self, gas_limit: int) -> int:
        """The most this attempt can cost (what the spending budget counts)."""
        return gas_limit * self.max_fee


def _bumped(value: int) -> int:
    """value * 1.125, rounded up, and always at least value + 1."""
    return max(-(-value * BUMP_NUMERATOR // BUMP_DENOMINATOR), value + 1)


def initial_fees(base_fee: int | None, tip: int, caps: FeeCaps) -> Fees:
    """First attempt's fees: 2 * base + tip under the caps (legacy when `base_fee` is None)."""
    if base_fee is None:
        price = min(tip, caps.max_fee)
        return Fees(max_fee=price, priority_fee=price, legacy=True)
    tip = min(tip, caps.max_priority_fee)
    max_fee = min(2 * base_fee + tip, caps.max_fee)
    return Fees(max_fee=max_fee, priority_fee=min(tip, max_fee))


def bump(previous: Fees, base_fee: int | None, tip: int, caps: FeeCaps) -> Fees | None:
    """The fees of a replacement, or None when the caps leave no room for a valid bump
    (the caller then rebroadcasts the previous attempt unchanged).

    Both fields rise by at least 12.5 % over the previous attempt, and to at least what a fresh
    attempt would offer now if the market moved further.
    """
    if previous.legacy or base_fee is None:
        price = max(_bumped(previous.max_fee), min(tip, caps.max_fee))
        if price > caps.max_fee:
            return None
        return Fees(max_fee=price, priority_fee=price, legacy=True)
    fresh = initial_fees(base_fee, tip, caps)
    new_tip = max(_bumped(previous.priority_fee), fresh.priority_fee)
    new_max = max(_bumped(previous.max_fee), fresh.max_fee, new_tip)
    if new_tip > caps.max_priority_fee or new_max > caps.max_fee:
        return None
    return Fees(max_fee=new_max, priority_fee=new_tip)


def is_valid_replacement(previous: Fees, new: Fees) -> bool:
    """Would a geth-like node (+10 % on both fields) accept `new` in place of `previous`?"""
    return (
        new.max_fee * 100 >= previous.max_fee * 110
        and new.priority_fee * 100 >= previous.priority_fee * 110
    )
