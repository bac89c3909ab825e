"""What a node's answer to `eth_sendRawTransaction` means, by table.

Node implementations word the same condition differently (geth, erigon, reth, nethermind,
besu, anvil, hosted RPCs); the table maps their messages to one outcome the transaction manager
acts on. Two outcomes are not failures at all: `ALREADY_KNOWN` (the node has it: a resend of
bytes already broadcast) and, often, `NONCE_TOO_LOW` (an earlier attempt at that nonce may
have been mined). Those, `TIMEOUT` and `UNKNOWN` are ambiguous: the manager decides them by the
pending nonce and the receipts of all the intent's attempts, never by the message alone.
"""

from __future__ import annotations

import re
from enum import Enum


class SendOutcome(Enum):
    """The classes of answers to a raw transaction send."""

    ACCEPTED = "accepted"
    ALREADY_KNOWN = "already_known"
    NONCE_TOO_LOW = "nonce_too_low"
    NONCE_TOO_HIGH = "nonce_too_high"
    REPLACEMENT_UNDERPRICED = "replacement_underpriced"
    UNDERPRICED = "underpriced"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    FEE_CAP_EXCEEDED = "fee_cap_exceeded"
    GAS_LIMIT = "gas_limit"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"

    @property
    def ambiguous(self) -> bool:
        """True when the transaction may or may not be on its way: check before acting."""
        return self in AMBIGUOUS


AMBIGUOUS = frozenset(
    {SendOutcome.ALREADY_KNOWN, SendOutcome.NONCE_TOO_LOW, SendOutcome.TIMEOUT, SendOutcome.UNKNOWN}
)

# Ordered: the first pattern that matches decides. Case-insensitive.
TABLE: tuple[tuple[SendOutcome, re.Pattern[str]], ...] = tuple(
    (outcome, re.compile(pattern, re.IGNORECASE))
    for outcome, pattern in (
        (
            SendOutcome.ALREADY_KNOWN,
            r"already known|already imported|known transaction|alreadyknown|"
            r"already_exists|transaction_already_known|already in (the )?(tx)?pool",
        ),
        (
            SendOutcome.REPLACEMENT_UNDERPRICED,
            r"replacement (transaction )?underpriced|replacement_underpriced|"
            r"replacement fee too low|replacetxfee",
        ),
        (
            SendOutcome.NONCE_TOO_LOW,
            r"nonce too low|nonce_too_low|oldnonce|nonce is too low|invalid nonce.*lower|"
            r"nonce has already been used|transaction nonce is lower",
        ),
        (SendOutcome.NONCE_TOO_HIGH, r"nonce too high|nonce_too_high|noncegap|nonce gap"),
        (
            SendOutcome.INSUFFICIENT_FUNDS,
            r"insufficient funds|insufficientfunds|upfront_cost_exceeds_balance|"
            r"sender doesn't have enough funds|insufficient balance",
        ),
        (
            SendOutcome.FEE_CAP_EXCEEDED,
            r"exceeds the configured cap|fee cap|tx fee .* exceeds|max fee per gas higher than",
        ),
        (
            SendOutcome.UNDERPRICED,
            r"transaction underpriced|less than block base fee|fee too low|feetoolow|"
            r"gas price too low|underpriced|max priority fee per gas higher",
        ),
        (
            SendOutcome.GAS_LIMIT,
            r"exceeds block gas limit|intrinsic gas too low|gas limit reached|out of gas",
        ),
        (SendOutcome.TIMEOUT, r"timeout|timed out|deadline exceeded"),
    )
)


def classify_send_error(message: str) -> SendOutcome:
    """The outcome a node's error message stands for (UNKNOWN when no row matches)."""
    for outcome, pattern in TABLE:
        if pattern.search(message):
            return outcome
    return SendOutcome.UNKNOWN
