"""The send-error table on the messages node implementations actually emit.

Each case is the text as the client formats it (numbers filled in), its expected outcome, and
an id naming the client and the identifier in its source that produces it.
"""

from __future__ import annotations

import pytest

from keeper.tx.send_errors import (
    AMBIGUOUS,
    SendOutcome,
    classify_send_error,
    unknown_backoff_blocks,
)

Out = SendOutcome

GETH = [
    ("already known", Out.ALREADY_KNOWN, "ErrAlreadyKnown"),
    ("replacement transaction underpriced", Out.REPLACEMENT_UNDERPRICED, "ErrReplaceUnderpriced"),
    (
        "replacement transaction underpriced: new tx gas fee cap 1100000000 <= 1000000000 queued",
        Out.REPLACEMENT_UNDERPRICED,
        "blobpool-ErrReplaceUnderpriced",
    ),
    ("transaction underpriced", Out.UNDERPRICED, "ErrUnderpriced"),
    (
        "transaction gas price below minimum: gas tip cap 0, minimum needed 1000000",
        Out.UNDERPRICED,
        "ErrTxGasPriceTooLow",
    ),
    (
        "max fee per gas less than block base fee: address "
        "0x71C7656EC7ab88b098defB751B7401B5f6d8976F, maxFeePerGas: 1000000000, "
        "baseFee: 7000000000",
        Out.UNDERPRICED,
        "ErrFeeCapTooLow",
    ),
    ("fee cap less than base fee", Out.UNDERPRICED, "types-ErrGasFeeCapTooLow"),
    ("nonce too low: next nonce 5, tx nonce 3", Out.NONCE_TOO_LOW, "ErrNonceTooLow"),
    ("nonce too high: tx nonce 9, gapped nonce 7", Out.NONCE_TOO_HIGH, "ErrNonceTooHigh"),
    (
        "insufficient funds for gas * price + value: balance 0, tx cost 21000000000000, "
        "overshot 21000000000000",
        Out.INSUFFICIENT_FUNDS,
        "ErrInsufficientFunds",
    ),
    ("insufficient funds for transfer", Out.INSUFFICIENT_FUNDS, "ErrInsufficientFundsForTransfer"),
    (
        "intrinsic gas too low: gas 20000, minimum needed 21000",
        Out.INTRINSIC_GAS,
        "ErrIntrinsicGas",
    ),
    (
        "insufficient gas for floor data gas cost: gas 21000, minimum needed 21160",
        Out.INTRINSIC_GAS,
        "ErrFloorDataGas",
    ),
    ("exceeds block gas limit", Out.GAS_LIMIT_TOO_HIGH, "ErrGasLimit"),
    ("transaction gas limit too high", Out.GAS_LIMIT_TOO_HIGH, "ErrGasLimitTooHigh"),
    (
        "transaction gas limit too high (cap: 16777216, tx: 54060000)",
        Out.GAS_LIMIT_TOO_HIGH,
        "ErrGasLimitTooHigh-detail",
    ),
    ("gas limit reached", Out.GAS_LIMIT_TOO_HIGH, "ErrGasLimitReached"),
    (
        "max priority fee per gas higher than max fee per gas: address "
        "0x71C7656EC7ab88b098defB751B7401B5f6d8976F, maxPriorityFeePerGas: 2000000000, "
        "maxFeePerGas: 1000000000",
        Out.TIP_ABOVE_FEE_CAP,
        "ErrTipAboveFeeCap",
    ),
    ("max priority fee per gas higher than 2^256-1", Out.TIP_ABOVE_FEE_CAP, "ErrTipVeryHigh"),
    ("max fee per gas higher than 2^256-1", Out.TIP_ABOVE_FEE_CAP, "ErrFeeCapVeryHigh"),
    (
        "tx fee (1.20 ether) exceeds the configured cap (1.00 ether)",
        Out.FEE_CAP_EXCEEDED,
        "ethapi-checkTxFee",
    ),
    (
        "oversized data: transaction size 131173, limit 131072",
        Out.OVERSIZED_DATA,
        "ErrOversizedData",
    ),
    ("txpool is full", Out.POOL_FULL, "ErrTxPoolOverflow"),
    ("account limit exceeded: pooled 16 txs", Out.POOL_FULL, "ErrAccountLimitExceeded"),
    (
        "in-flight transaction limit reached for delegated accounts",
        Out.POOL_FULL,
        "ErrInflightTxLimitReached",
    ),
    (
        "future transaction tries to replace pending",
        Out.POOL_FULL,
        "ErrFutureReplacePending",
    ),
    (
        "gapped-nonce tx from delegated accounts",
        Out.NONCE_TOO_HIGH,
        "ErrOutOfOrderTxFromDelegated",
    ),
    ("gas uint64 overflow", Out.GAS_LIMIT, "ErrGasUintOverflow"),
]

RETH = [
    ("already known", Out.ALREADY_KNOWN, "RpcPoolError-AlreadyKnown"),
    (
        "[0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060]: already imported",
        Out.ALREADY_KNOWN,
        "PoolErrorKind-AlreadyImported",
    ),
    (
        "replacement transaction underpriced",
        Out.REPLACEMENT_UNDERPRICED,
        "RpcPoolError-ReplaceUnderpriced",
    ),
    (
        "insufficient gas price to replace existing transaction",
        Out.REPLACEMENT_UNDERPRICED,
        "PoolErrorKind-ReplacementUnderpriced",
    ),
    ("nonce too low: next nonce 12, tx nonce 3", Out.NONCE_TOO_LOW, "NonceTooLow"),
    ("nonce too high", Out.NONCE_TOO_HIGH, "NonceTooHigh"),
    (
        "insufficient funds for gas * price + value: have 0 want 21000000000000",
        Out.INSUFFICIENT_FUNDS,
        "InsufficientFunds",
    ),
    (
        "transaction overdraws from account, balance: 0, cost: 21000000000000",
        Out.INSUFFICIENT_FUNDS,
        "Overdraft",
    ),
    ("intrinsic gas too low", Out.INTRINSIC_GAS, "GasTooLow"),
    ("intrinsic gas too high", Out.GAS_LIMIT_TOO_HIGH, "GasTooHigh"),
    ("gas limit too high", Out.GAS_LIMIT_TOO_HIGH, "GasLimitTooHigh"),
    ("exceeds block gas limit", Out.GAS_LIMIT_TOO_HIGH, "RpcPoolError-ExceedsGasLimit"),
    (
        "exceeds max transaction gas limit",
        Out.GAS_LIMIT_TOO_HIGH,
        "RpcPoolError-MaxTxGasLimitExceeded",
    ),
    (
        "transaction's gas limit 54060000 exceeds maximum per-transaction gas limit 16777216",
        Out.GAS_LIMIT_TOO_HIGH,
        "pool-MaxTxGasLimitExceeded",
    ),
    (
        "transaction's gas limit 54060000 exceeds block's gas limit 36000000",
        Out.GAS_LIMIT_TOO_HIGH,
        "pool-ExceedsGasLimit",
    ),
    (
        "max priority fee per gas higher than max fee per gas",
        Out.TIP_ABOVE_FEE_CAP,
        "TipAboveFeeCap",
    ),
    ("max fee per gas less than block base fee", Out.UNDERPRICED, "FeeCapTooLow"),
    ("transaction underpriced", Out.UNDERPRICED, "RpcPoolError-Underpriced"),
    (
        "transaction feeCap 6 below chain minimum",
        Out.UNDERPRICED,
        "FeeCapBelowMinimumProtocolFeeCap",
    ),
    (
        "transaction priority fee below minimum required priority fee 1000000",
        Out.UNDERPRICED,
        "PriorityFeeBelowMinimum",
    ),
    (
        "tx fee (1200000000000000000 wei) exceeds the configured cap (1000000000000000000 wei)",
        Out.FEE_CAP_EXCEEDED,
        "ExceedsFeeCap",
    ),
    ("txpool is full", Out.POOL_FULL, "RpcPoolError-TxPoolOverflow"),
    (
        "rejected due to 0x71C7656EC7ab88b098defB751B7401B5f6d8976F being identified as a spammer",
        Out.POOL_FULL,
        "SpammerExceededCapacity",
    ),
    (
        "transaction discarded outright due to pool size constraints",
        Out.POOL_FULL,
        "DiscardedOnInsert",
    ),
    (
        "oversized data: transaction size 131173, limit 131072",
        Out.OVERSIZED_DATA,
        "OversizedData",
    ),
    ("input data too large", Out.OVERSIZED_DATA, "OversizedData-old"),
    ("gas required exceeds allowance (30000000)", Out.GAS_LIMIT, "GasRequiredExceedsAllowance"),
]

ERIGON = [
    ("ALREADY_EXISTS: already known", Out.ALREADY_KNOWN, "AlreadyKnown"),
    ("INTERNAL_ERROR: existing txn with same hash", Out.ALREADY_KNOWN, "DuplicateHash"),
    (
        "FEE_TOO_LOW: replacement transaction underpriced",
        Out.REPLACEMENT_UNDERPRICED,
        "ReplaceUnderpriced",
    ),
    ("INTERNAL_ERROR: could not replace existing tx", Out.REPLACEMENT_UNDERPRICED, "NotReplaced"),
    ("FEE_TOO_LOW: underpriced", Out.UNDERPRICED, "UnderPriced"),
    ("FEE_TOO_LOW: fee too low", Out.UNDERPRICED, "FeeTooLow"),
    ("INTERNAL_ERROR: nonce too low", Out.NONCE_TOO_LOW, "NonceTooLow"),
    ("INTERNAL_ERROR: insufficient funds", Out.INSUFFICIENT_FUNDS, "InsufficientFunds"),
    ("INTERNAL_ERROR: IntrinsicGas", Out.INTRINSIC_GAS, "IntrinsicGas"),
    ("INTERNAL_ERROR: gas limit is too high", Out.GAS_LIMIT_TOO_HIGH, "GasLimitTooHigh"),
    ("INVALID: oversized data", Out.OVERSIZED_DATA, "OversizedData"),
    ("INVALID: RLPTooLong", Out.OVERSIZED_DATA, "RLPTooLong"),
    ("INTERNAL_ERROR: pending sub-pool is full", Out.POOL_FULL, "PendingPoolOverflow"),
    ("INTERNAL_ERROR: baseFee sub-pool is full", Out.POOL_FULL, "BaseFeePoolOverflow"),
    ("INTERNAL_ERROR: queued sub-pool is full", Out.POOL_FULL, "QueuedPoolOverflow"),
    ("INTERNAL_ERROR: spammer", Out.POOL_FULL, "Spammer"),
    ("INTERNAL_ERROR: GasUintOverflow", Out.GAS_LIMIT, "GasUintOverflow"),
]

NETHERMIND = [
    # Older releases answer the AcceptTxResult code name, with a detail for local senders.
    ("AlreadyKnown", Out.ALREADY_KNOWN, "AlreadyKnown-code"),
    (
        "OldNonce, Current nonce: 12, nonce of rejected tx: 3",
        Out.NONCE_TOO_LOW,
        "OldNonce-code",
    ),
    ("NonceGap, Future nonce. Expected nonce: 10", Out.NONCE_TOO_HIGH, "NonceGap-code"),
    ("NonceTooFarInFuture", Out.NONCE_TOO_HIGH, "NonceTooFarInFuture-code"),
    (
        "FeeTooLow, FeePerGas needs to be higher than 1500000000 to be added to the TxPool. "
        "FeePerGas of rejected tx: 1000000000.",
        Out.UNDERPRICED,
        "FeeTooLow-code",
    ),
    ("FeeTooLowToCompete", Out.UNDERPRICED, "FeeTooLowToCompete-code"),
    ("ReplacementNotAllowed", Out.REPLACEMENT_UNDERPRICED, "ReplacementNotAllowed-code"),
    (
        "InsufficientFunds, Account balance: 0, cumulative cost: 21000000000000",
        Out.INSUFFICIENT_FUNDS,
        "InsufficientFunds-code",
    ),
    (
        "GasLimitExceeded, Gas limit: 36000000, gas limit of rejected tx: 54060000",
        Out.GAS_LIMIT_TOO_HIGH,
        "GasLimitExceeded-code",
    ),
    ("MaxTxSizeExceeded", Out.OVERSIZED_DATA, "MaxTxSizeExceeded-code"),
    # Current releases answer TxPoolErrorMessages texts (geth's where geth has one).
    ("already known", Out.ALREADY_KNOWN, "TxPoolErrorMessages-AlreadyKnown"),
    (
        "nonce too low, Current nonce: 12, nonce of rejected tx: 3",
        Out.NONCE_TOO_LOW,
        "TxPoolErrorMessages-NonceTooLow",
    ),
    ("nonce too high", Out.NONCE_TOO_HIGH, "TxPoolErrorMessages-NonceTooHigh"),
    ("nonce too far in future", Out.NONCE_TOO_HIGH, "TxPoolErrorMessages-NonceTooFarInFuture"),
    ("transaction underpriced", Out.UNDERPRICED, "TxPoolErrorMessages-TransactionUnderpriced"),
    (
        "replacement transaction underpriced",
        Out.REPLACEMENT_UNDERPRICED,
        "TxPoolErrorMessages-ReplacementTransactionUnderpriced",
    ),
    (
        "insufficient funds for gas * price + value",
        Out.INSUFFICIENT_FUNDS,
        "TxErrorMessages-InsufficientFundsForGas",
    ),
    (
        "gas limit reached, Tx gas limit cap: 16777216, gas limit of rejected tx: 54060000",
        Out.GAS_LIMIT_TOO_HIGH,
        "TxPoolErrorMessages-GasLimitReached",
    ),
    ("transaction too large", Out.OVERSIZED_DATA, "TxPoolErrorMessages-TransactionTooLarge"),
]

BESU = [
    ("Known transaction", Out.ALREADY_KNOWN, "ETH_SEND_TX_ALREADY_KNOWN"),
    ("TRANSACTION_ALREADY_KNOWN", Out.ALREADY_KNOWN, "TRANSACTION_ALREADY_KNOWN"),
    (
        "Replacement transaction underpriced",
        Out.REPLACEMENT_UNDERPRICED,
        "ETH_SEND_TX_REPLACEMENT_UNDERPRICED",
    ),
    (
        "TRANSACTION_REPLACEMENT_UNDERPRICED",
        Out.REPLACEMENT_UNDERPRICED,
        "TRANSACTION_REPLACEMENT_UNDERPRICED",
    ),
    ("Nonce too low", Out.NONCE_TOO_LOW, "RpcErrorType-NONCE_TOO_LOW"),
    ("NONCE_TOO_LOW", Out.NONCE_TOO_LOW, "TransactionInvalidReason-NONCE_TOO_LOW"),
    ("Nonce too high", Out.NONCE_TOO_HIGH, "RpcErrorType-NONCE_TOO_HIGH"),
    ("NONCE_TOO_HIGH", Out.NONCE_TOO_HIGH, "TransactionInvalidReason-NONCE_TOO_HIGH"),
    (
        "NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER",
        Out.NONCE_TOO_HIGH,
        "TransactionInvalidReason-NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER",
    ),
    (
        "Transaction nonce is too distant from current sender nonce",
        Out.NONCE_TOO_HIGH,
        "NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER",
    ),
    (
        "An invalid transaction with a lower nonce exists",
        Out.NONCE_TOO_HIGH,
        "LOWER_NONCE_INVALID_TRANSACTION_EXISTS",
    ),
    (
        "Upfront cost exceeds account balance",
        Out.INSUFFICIENT_FUNDS,
        "TRANSACTION_UPFRONT_COST_EXCEEDS_BALANCE",
    ),
    ("UPFRONT_COST_EXCEEDS_BALANCE", Out.INSUFFICIENT_FUNDS, "UPFRONT_COST_EXCEEDS_BALANCE"),
    ("Intrinsic gas exceeds gas limit", Out.INTRINSIC_GAS, "INTRINSIC_GAS_EXCEEDS_LIMIT"),
    (
        "Transaction gas limit exceeds block gas limit",
        Out.GAS_LIMIT_TOO_HIGH,
        "EXCEEDS_BLOCK_GAS_LIMIT",
    ),
    ("EXCEEDS_BLOCK_GAS_LIMIT", Out.GAS_LIMIT_TOO_HIGH, "TransactionInvalidReason-EXCEEDS_BLOCK"),
    (
        "Transaction gas limit cap exceeded",
        Out.GAS_LIMIT_TOO_HIGH,
        "EXCEEDS_TRANSACTION_GAS_LIMIT",
    ),
    (
        "Gas price below configured minimum gas price",
        Out.UNDERPRICED,
        "GAS_PRICE_TOO_LOW",
    ),
    ("Gas price below current base fee", Out.UNDERPRICED, "GAS_PRICE_BELOW_CURRENT_BASE_FEE"),
    ("Transaction fee cap exceeded", Out.FEE_CAP_EXCEEDED, "TX_FEECAP_EXCEEDED"),
    (
        "Max priority fee per gas exceeds max fee per gas",
        Out.TIP_ABOVE_FEE_CAP,
        "MAX_PRIORITY_FEE_PER_GAS_EXCEEDS_MAX_FEE_PER_GAS",
    ),
    ("EXCEEDS_MAX_TX_BYTES", Out.OVERSIZED_DATA, "TransactionInvalidReason-EXCEEDS_MAX_TX_BYTES"),
    ("Timeout expired", Out.TIMEOUT, "TIMEOUT_ERROR"),
]

ANVIL = [
    ("transaction already imported", Out.ALREADY_KNOWN, "PoolError-AlreadyImported"),
    (
        "replacement transaction underpriced",
        Out.REPLACEMENT_UNDERPRICED,
        "PoolError-ReplacementUnderpriced",
    ),
    ("nonce too low", Out.NONCE_TOO_LOW, "NonceTooLow"),
    ("Nonce too high", Out.NONCE_TOO_HIGH, "NonceTooHigh"),
    (
        "Insufficient funds for gas * price + value",
        Out.INSUFFICIENT_FUNDS,
        "InsufficientFunds",
    ),
    ("intrinsic gas too low", Out.INTRINSIC_GAS, "GasTooLow"),
    (
        "intrinsic gas too high -- CallerGasLimitMoreThanBlock",
        Out.GAS_LIMIT_TOO_HIGH,
        "GasTooHigh",
    ),
    (
        "Transaction gas limit is greater than the block gas limit, gas_limit: 54060000, "
        "cap: 16777216",
        Out.GAS_LIMIT_TOO_HIGH,
        "TxGasLimitGreaterThanCap",
    ),
    (
        "max priority fee per gas higher than max fee per gas",
        Out.TIP_ABOVE_FEE_CAP,
        "TipAboveFeeCap",
    ),
    (
        "Invalid input: `max_priority_fee_per_gas` greater than `max_fee_per_gas`",
        Out.TIP_ABOVE_FEE_CAP,
        "InvalidFeeInput",
    ),
    ("max fee per gas less than block base fee", Out.UNDERPRICED, "FeeCapTooLow"),
    (
        "Out of gas: gas required exceeds allowance: 30000000",
        Out.GAS_LIMIT,
        "BasicOutOfGas",
    ),
    ("Transaction confirmation timeout", Out.TIMEOUT, "TransactionConfirmationTimeout"),
]

EDR = [
    (
        "Transaction requires at least 21000 gas but got 20000",
        Out.INTRINSIC_GAS,
        "CreationError-InsufficientGas",
    ),
    (
        "Transaction requires gas floor of 21160 but got limit of 21000",
        Out.INTRINSIC_GAS,
        "CreationError-GasFloorTooHigh",
    ),
    (
        "Transaction gas limit is 54060000 and exceeds transaction gas cap of 16777216",
        Out.GAS_LIMIT_TOO_HIGH,
        "MemPool-ExceedsTransactionGasCap",
    ),
    (
        "Transaction gas limit is 54060000 and exceeds block gas limit of 30000000",
        Out.GAS_LIMIT_TOO_HIGH,
        "MemPool-ExceedsBlockGasLimit",
    ),
    (
        "maxPriorityFeePerGas (2000000000) is bigger than maxFeePerGas (1000000000)",
        Out.TIP_ABOVE_FEE_CAP,
        "validation-maxPriorityFeePerGas",
    ),
    (
        "Nonce too high. Expected nonce to be 5 but got 9. Note that transactions can't be "
        "queued when automining.",
        Out.NONCE_TOO_HIGH,
        "AutoMineNonceTooHigh",
    ),
    (
        "Nonce too low. Expected nonce to be 5 but got 3. Note that transactions can't be "
        "queued when automining.",
        Out.NONCE_TOO_LOW,
        "AutoMineNonceTooLow",
    ),
    (
        "Transaction nonce too low. Expected nonce to be at least 5 but got 3.",
        Out.NONCE_TOO_LOW,
        "MemPool-NonceTooLow",
    ),
    (
        "Transaction maxFeePerGas (1000000000) is too low for the next block, which has a "
        "baseFeePerGas of 7000000000",
        Out.UNDERPRICED,
        "AutoMineMaxFeePerGasTooLow",
    ),
    (
        "Transaction gasPrice (1000000000) is too low for the next block, which has a "
        "baseFeePerGas of 7000000000",
        Out.UNDERPRICED,
        "AutoMineGasPriceTooLow",
    ),
    (
        "Transaction gas price is 0, which is below the minimum of 1000000000",
        Out.UNDERPRICED,
        "AutoMinePriorityFeeTooLow",
    ),
    (
        "Known transaction: 0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060",
        Out.ALREADY_KNOWN,
        "MemPool-TransactionAlreadyExists",
    ),
    (
        "Replacement transaction underpriced. A gasPrice/maxFeePerGas of at least 1100000000 "
        "is necessary to replace the existing transaction with nonce 5.",
        Out.REPLACEMENT_UNDERPRICED,
        "MemPool-ReplacementMaxFeePerGasTooLow",
    ),
    (
        "Replacement transaction underpriced. A gasPrice/maxPriorityFeePerGas of at least "
        "110000000 is necessary to replace the existing transaction with nonce 5.",
        Out.REPLACEMENT_UNDERPRICED,
        "MemPool-ReplacementMaxPriorityFeePerGasTooLow",
    ),
    (
        "Sender doesn't have enough funds to send tx. The max upfront cost is: "
        "21000000000000 and the sender's balance is: 0.",
        Out.INSUFFICIENT_FUNDS,
        "MemPool-InsufficientFunds",
    ),
]

GANACHE = [
    (
        "the tx doesn't have the correct nonce. account has nonce of: 8 tx has nonce of: 7",
        Out.NONCE_TOO_LOW,
        "wrong-nonce-lower",
    ),
    (
        "the tx doesn't have the correct nonce. account has nonce of: 8 tx has nonce of: 12",
        Out.NONCE_TOO_HIGH,
        "wrong-nonce-higher",
    ),
    (
        "VM Exception while processing transaction: the tx doesn't have the correct nonce. "
        "account has nonce of: 16 tx has nonce of: 15",
        Out.NONCE_TOO_LOW,
        "wrong-nonce-wrapped",
    ),
    (
        "sender doesn't have enough funds to send tx. The max cost is: 21000000000000 and "
        "the sender's account (0x71c7656ec7ab88b098defb751b7401b5f6d8976f) only has: 0",
        Out.INSUFFICIENT_FUNDS,
        "ethereumjs-vm-runTx-funds",
    ),
    (
        "transaction rejected; gas price too low to replace existing transaction",
        Out.REPLACEMENT_UNDERPRICED,
        "TransactionPool-insert-replace",
    ),
    ("nonce too low", Out.NONCE_TOO_LOW, "errors-NONCE_TOO_LOW"),
    ("transaction underpriced", Out.UNDERPRICED, "errors-UNDERPRICED"),
    ("intrinsic gas too low", Out.INTRINSIC_GAS, "errors-INTRINSIC_GAS_TOO_LOW"),
    ("exceeds block gas limit", Out.GAS_LIMIT_TOO_HIGH, "errors-GAS_LIMIT"),
]

OPENETHEREUM = [
    (
        "Transaction with the same hash was already imported.",
        Out.ALREADY_KNOWN,
        "AlreadyImported",
    ),
    ("Transaction nonce is too low. Try incrementing the nonce.", Out.NONCE_TOO_LOW, "Old"),
    (
        "Transaction gas price 1000000000wei is too low. There is another transaction with same "
        "nonce in the queue with gas price: 1000000000wei. Try increasing the gas price or "
        "incrementing the nonce.",
        Out.REPLACEMENT_UNDERPRICED,
        "TooCheapToReplace",
    ),
    (
        "There are too many transactions in the queue. Your transaction was dropped due to "
        "limit. Try increasing the fee.",
        Out.POOL_FULL,
        "LimitReached",
    ),
    (
        "Transaction gas is too low. There is not enough gas to cover minimal cost of the "
        "transaction (minimal: 21000, got: 20000). Try increasing supplied gas.",
        Out.INTRINSIC_GAS,
        "InsufficientGas",
    ),
    (
        "Transaction gas price is too low. It does not satisfy your node's minimal gas price "
        "(minimal: 1000000000, got: 0). Try increasing the gas price.",
        Out.UNDERPRICED,
        "InsufficientGasPrice",
    ),
    (
        "Transaction max gas price is lower then the required base fee (gas_price: 1000000000, "
        "base_fee: 7000000000). Try increasing the max gas price.",
        Out.UNDERPRICED,
        "GasPriceLowerThanBaseFee",
    ),
    (
        "Insufficient funds. The account you tried to send transaction from does not have "
        "enough funds. Required 21000000000000 and got: 0.",
        Out.INSUFFICIENT_FUNDS,
        "InsufficientBalance",
    ),
    (
        "Transaction cost exceeds current gas limit. Limit: 30000000, got: 54060000. Try "
        "decreasing supplied gas.",
        Out.GAS_LIMIT_TOO_HIGH,
        "GasLimitExceeded",
    ),
    ("Supplied gas is beyond limit.", Out.GAS_LIMIT_TOO_HIGH, "InvalidGasLimit"),
    (
        "Transaction is too big, see chain specification for the limit.",
        Out.OVERSIZED_DATA,
        "TooBig",
    ),
]

# Hosted providers pass their nodes' texts through; these are the ones their docs quote.
HOSTED = [
    # alchemy.com/docs/reference/error-reference: -32000 "Already known"
    ("Already known", Out.ALREADY_KNOWN, "alchemy-docs-already-known"),
    # alchemy.com/docs/reference/error-reference: a 429 is a rate limit, not an answer about
    # the transaction, so it stays UNKNOWN and is backed off.
    (
        "Your app has exceeded its compute units per second capacity. If you have retries "
        "enabled, you can safely ignore this message.",
        Out.UNKNOWN,
        "alchemy-docs-429",
    ),
]

TRANSPORT = [
    ("request timed out", Out.TIMEOUT, "httpx-timed-out"),
    (
        "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
        Out.TIMEOUT,
        "go-context-DeadlineExceeded",
    ),
    ("ReadTimeout", Out.TIMEOUT, "ReadTimeout"),
]

CLIENTS = {
    "geth": GETH,
    "reth": RETH,
    "erigon": ERIGON,
    "nethermind": NETHERMIND,
    "besu": BESU,
    "anvil": ANVIL,
    "edr": EDR,
    "ganache": GANACHE,
    "openethereum": OPENETHEREUM,
    "hosted": HOSTED,
    "transport": TRANSPORT,
}

CASES = [
    pytest.param(message, outcome, id=f"{client}-{name}")
    for client, rows in CLIENTS.items()
    for message, outcome, name in rows
]


@pytest.mark.parametrize(("message", "outcome"), CASES)
def test_table(message: str, outcome: SendOutcome) -> None:
    assert classify_send_error(message) is outcome


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("execution reverted", id="geth-ErrExecutionReverted"),
        pytest.param(
            "execution reverted: ERC20: transfer amount exceeds balance",
            id="revert-reason-exceeds-balance",
        ),
        pytest.param(
            "VM Exception while processing transaction: revert Ownable: caller is not the owner",
            id="ganache-VM_EXCEPTION",
        ),
        pytest.param("invalid sender", id="geth-ErrInvalidSender"),
        pytest.param("invalid chain id for signer", id="anvil-InvalidChainId"),
        pytest.param("transaction type not supported", id="geth-ErrTxTypeNotSupported"),
        pytest.param("Unknown transaction type: 5", id="edr-UnknownTransactionType"),
        pytest.param("authority nonce too low", id="geth-ErrAuthorityNonceTooLow"),
        pytest.param("nonce has max value", id="geth-ErrNonceMax"),
        pytest.param("max initcode size exceeded", id="geth-ErrMaxInitCodeSizeExceeded"),
        pytest.param("address already reserved", id="geth-ErrAlreadyReserved"),
        pytest.param("something nobody has seen", id="unseen"),
        pytest.param("", id="empty"),
    ],
)
def test_unrelated_messages_are_unknown(message: str) -> None:
    assert classify_send_error(message) is SendOutcome.UNKNOWN


def test_ganache_equal_nonces_are_unknown() -> None:
    message = "the tx doesn't have the correct nonce. account has nonce of: 8 tx has nonce of: 8"
    assert classify_send_error(message) is SendOutcome.UNKNOWN


def test_every_rejection_outcome_is_covered() -> None:
    covered = {outcome for rows in CLIENTS.values() for _, outcome, _ in rows}
    assert covered == set(SendOutcome) - {SendOutcome.ACCEPTED}


def test_ambiguous_outcomes_are_the_ones_to_check() -> None:
    assert {outcome for outcome in SendOutcome if outcome.ambiguous} == AMBIGUOUS
    assert {
        SendOutcome.ALREADY_KNOWN,
        SendOutcome.NONCE_TOO_LOW,
        SendOutcome.TIMEOUT,
        SendOutcome.UNKNOWN,
    } == AMBIGUOUS


@pytest.mark.parametrize(
    ("failures", "blocks"),
    [(0, 0), (1, 1), (2, 2), (3, 4), (4, 8), (7, 64), (8, 64), (10_000, 64)],
)
def test_unknown_backoff_doubles_up_to_the_cap(failures: int, blocks: int) -> None:
    assert unknown_backoff_blocks(failures) == blocks


def test_unknown_backoff_scales_with_base_and_cap() -> None:
    assert [unknown_backoff_blocks(n, base=3, cap=20) for n in range(1, 6)] == [3, 6, 12, 20, 20]


@pytest.mark.parametrize(("base", "cap"), [(0, 64), (8, 4)])
def test_unknown_backoff_rejects_bad_bounds(base: int, cap: int) -> None:
    with pytest.raises(ValueError, match="base"):
        unknown_backoff_blocks(1, base=base, cap=cap)
