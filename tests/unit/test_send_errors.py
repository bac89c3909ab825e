"""The send-error table on messages from real node implementations."""

from __future__ import annotations

import pytest

from keeper.send_errors import SendOutcome, classify_send_error

CASES = [
    ("already known", SendOutcome.ALREADY_KNOWN),  # geth
    ("ALREADY_EXISTS: already known", SendOutcome.ALREADY_KNOWN),  # erigon
    ("transaction already imported", SendOutcome.ALREADY_KNOWN),  # anvil
    ("TRANSACTION_ALREADY_KNOWN", SendOutcome.ALREADY_KNOWN),  # besu
    ("AlreadyKnown", SendOutcome.ALREADY_KNOWN),  # nethermind
    ("replacement transaction underpriced", SendOutcome.REPLACEMENT_UNDERPRICED),
    ("REPLACEMENT_UNDERPRICED", SendOutcome.REPLACEMENT_UNDERPRICED),
    ("nonce too low: next nonce 5, tx nonce 3", SendOutcome.NONCE_TOO_LOW),
    ("NONCE_TOO_LOW", SendOutcome.NONCE_TOO_LOW),
    ("OldNonce, Current nonce: 12, nonce of rejected tx: 3", SendOutcome.NONCE_TOO_LOW),
    ("nonce too high", SendOutcome.NONCE_TOO_HIGH),
    (
        "insufficient funds for gas * price + value: balance 0, tx cost 1",
        SendOutcome.INSUFFICIENT_FUNDS,
    ),
    ("Insufficient funds for gas * price + value", SendOutcome.INSUFFICIENT_FUNDS),
    ("UPFRONT_COST_EXCEEDS_BALANCE", SendOutcome.INSUFFICIENT_FUNDS),
    ("tx fee (1.20 ether) exceeds the configured cap (1.00 ether)", SendOutcome.FEE_CAP_EXCEEDED),
    (
        "max fee per gas less than block base fee: address 0x.., maxFeePerGas: 1",
        SendOutcome.UNDERPRICED,
    ),
    ("transaction underpriced", SendOutcome.UNDERPRICED),
    ("exceeds block gas limit", SendOutcome.GAS_LIMIT),
    ("intrinsic gas too low", SendOutcome.GAS_LIMIT),
    ("request timed out", SendOutcome.TIMEOUT),
    ("something nobody has seen", SendOutcome.UNKNOWN),
]


@pytest.mark.parametrize(("message", "outcome"), CASES)
def test_table(message: str, outcome: SendOutcome) -> None:
    assert classify_send_error(message) is outcome


def test_ambiguous_outcomes_are_the_ones_to_check() -> None:
    assert SendOutcome.ALREADY_KNOWN.ambiguous
    assert SendOutcome.NONCE_TOO_LOW.ambiguous
    assert SendOutcome.TIMEOUT.ambiguous
    assert SendOutcome.UNKNOWN.ambiguous
    assert not SendOutcome.REPLACEMENT_UNDERPRICED.ambiguous
    assert not SendOutcome.INSUFFICIENT_FUNDS.ambiguous
