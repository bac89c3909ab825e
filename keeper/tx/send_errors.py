"""What a node's answer to `eth_sendRawTransaction` means, by table.

Node implementations word the same condition differently (geth, erigon, reth, nethermind,
besu, openethereum, anvil, EDR/Hardhat, Ganache); the table maps their messages to one outcome
the transaction manager acts on. Every row cites the client source that emits the text, so a
row can be checked (or dropped) when a client rewords it.

Two outcomes are not failures at all: `ALREADY_KNOWN` (the node has it: a resend of bytes
already broadcast) and, often, `NONCE_TOO_LOW` (an earlier attempt at that nonce may have been
mined). Those, `TIMEOUT` and `UNKNOWN` are ambiguous: the manager decides them by the pending
nonce and the receipts of all the intent's attempts, never by the message alone. Every other
outcome is a rejection: the node did not take the transaction.
"""

from __future__ import annotations

import re
from enum import Enum


class SendOutcome(Enum):
    """The classes of answers to a raw transaction send, each with the action it calls for."""

    #: The node took the transaction.
    ACCEPTED = "accepted"
    #: The node already has these bytes: a success to confirm by receipt, not a failure.
    ALREADY_KNOWN = "already_known"
    #: The nonce is used on chain, perhaps by one of our own attempts: check receipts.
    NONCE_TOO_LOW = "nonce_too_low"
    #: A gap below this nonce: fill the lower nonces first, then resend unchanged.
    NONCE_TOO_HIGH = "nonce_too_high"
    #: Another transaction holds this nonce in the pool: bump the fees and re-sign.
    REPLACEMENT_UNDERPRICED = "replacement_underpriced"
    #: The fee is below the pool's minimum or the base fee: reprice, or wait for the base fee.
    UNDERPRICED = "underpriced"
    #: The signer cannot pay value + gas * fee cap: fund the signer.
    INSUFFICIENT_FUNDS = "insufficient_funds"
    #: gas * fee cap is above the node's configured fee cap (e.g. geth `--rpc.txfeecap`).
    FEE_CAP_EXCEEDED = "fee_cap_exceeded"
    #: The gas limit does not cover what the transaction needs, direction unknown: re-estimate.
    GAS_LIMIT = "gas_limit"
    #: The gas limit is above the per-transaction cap (EIP-7825) or the block gas limit: the
    #: batch must be split (or the limit lowered) and re-signed, never resent as is.
    GAS_LIMIT_TOO_HIGH = "gas_limit_too_high"
    #: The gas limit is below the intrinsic (or calldata floor) cost: a gas computation bug;
    #: re-sign with a correct limit, never resend as is.
    INTRINSIC_GAS = "intrinsic_gas"
    #: The fee fields are inconsistent (tip above fee cap) or out of range: a signing bug;
    #: re-sign with sane fees, never resend as is.
    TIP_ABOVE_FEE_CAP = "tip_above_fee_cap"
    #: The encoded transaction is above the node's size limit: split the batch and re-sign.
    OVERSIZED_DATA = "oversized_data"
    #: The node's pool (or this sender's share of it) is full: transient, back off and resend
    #: the same bytes later, or to another node.
    POOL_FULL = "pool_full"
    #: No answer in time: the node may or may not have it.
    TIMEOUT = "timeout"
    #: No row matched: the node may or may not have it.
    UNKNOWN = "unknown"

    @property
    def ambiguous(self) -> bool:
        """True when the transaction may or may not be on its way: check before acting."""
        return self in AMBIGUOUS


AMBIGUOUS = frozenset(
    {SendOutcome.ALREADY_KNOWN, SendOutcome.NONCE_TOO_LOW, SendOutcome.TIMEOUT, SendOutcome.UNKNOWN}
)

# Ordered: the first row that matches decides. Case-insensitive `search`, so a row matches a
# client's text wherever a client or proxy wraps it (erigon prefixes "INTERNAL_ERROR: ",
# nethermind appends ", <detail>", libraries prefix "call failed: ").
_ROWS: tuple[tuple[SendOutcome, str], ...] = (
    # --- the node already has this transaction -------------------------------------------
    # geth core/txpool/errors.go ErrAlreadyKnown; reth rpc-eth-types error/mod.rs
    # RpcPoolError::AlreadyKnown; erigon txpoolcfg.go AlreadyKnown; nethermind
    # TxPoolErrorMessages.AlreadyKnown
    (SendOutcome.ALREADY_KNOWN, r"\balready known\b"),
    # reth transaction-pool error.rs PoolErrorKind::AlreadyImported; anvil eth/error.rs
    # PoolError::AlreadyImported ("transaction already imported"); openethereum rpc
    # helpers/errors.rs TransactionError::AlreadyImported
    (SendOutcome.ALREADY_KNOWN, r"\balready imported\b"),
    # besu RpcErrorType.ETH_SEND_TX_ALREADY_KNOWN ("Known transaction"); EDR mem_pool
    # MemPoolAddTransactionError::TransactionAlreadyExists ("Known transaction: 0x..").
    # \b keeps "Unknown transaction type" out.
    (SendOutcome.ALREADY_KNOWN, r"\bknown transaction\b"),
    # besu TransactionInvalidReason.TRANSACTION_ALREADY_KNOWN
    (SendOutcome.ALREADY_KNOWN, r"\btransaction_already_known\b"),
    # nethermind AcceptTxResult.AlreadyKnown (the code name, as older releases answer)
    (SendOutcome.ALREADY_KNOWN, r"\balreadyknown\b"),
    # erigon txpoolcfg.go DuplicateHash ("existing txn with same hash"; older releases "tx")
    (SendOutcome.ALREADY_KNOWN, r"existing txn? with same hash"),
    # --- another transaction holds the nonce: bump to replace --------------------------------
    # before every "underpriced"/"fee too low"/"nonce" row: these texts contain those words.
    # geth core/txpool/errors.go ErrReplaceUnderpriced; erigon ReplaceUnderpriced; reth
    # RpcPoolError::ReplaceUnderpriced; anvil PoolError::ReplacementUnderpriced (RPC text);
    # nethermind TxPoolErrorMessages.ReplacementTransactionUnderpriced; besu
    # RpcErrorType.ETH_SEND_TX_REPLACEMENT_UNDERPRICED; EDR mem_pool ReplacementMaxFeePerGasTooLow
    # and ReplacementMaxPriorityFeePerGasTooLow ("Replacement transaction underpriced. ...")
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"\breplacement transaction underpriced\b"),
    # besu TransactionInvalidReason.TRANSACTION_REPLACEMENT_UNDERPRICED
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"\btransaction_replacement_underpriced\b"),
    # reth transaction-pool error.rs PoolErrorKind::ReplacementUnderpriced; anvil
    # PoolError::ReplacementUnderpriced (its Display text)
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"insufficient gas price to replace existing"),
    # erigon txpoolcfg.go NotReplaced
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"could not replace existing tx"),
    # Ganache ethereum/src/transaction-pool.ts TransactionPool.insert (CodedError
    # TRANSACTION_REJECTED: "transaction rejected; gas price too low to replace existing
    # transaction")
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"gas price too low to replace existing transaction"),
    # nethermind AcceptTxResult.ReplacementNotAllowed (code name)
    (SendOutcome.REPLACEMENT_UNDERPRICED, r"\breplacementnotallowed\b"),
    # openethereum rpc helpers/errors.rs TransactionError::TooCheapToReplace
    (
        SendOutcome.REPLACEMENT_UNDERPRICED,
        r"another transaction with same nonce in the queue",
    ),
    # --- nonce already used ------------------------------------------------------------------
    # geth core/error.go ErrNonceTooLow; reth RpcInvalidTransactionError::NonceTooLow; erigon
    # NonceTooLow; anvil InvalidTransactionError::NonceTooLow; nethermind
    # TxPoolErrorMessages.NonceTooLow; besu RpcErrorType.NONCE_TOO_LOW; EDR
    # ProviderError::AutoMineNonceTooLow and mem_pool NonceTooLow ("Transaction nonce too low").
    # Not geth core/txpool/errors.go ErrAuthorityNonceTooLow: that is an EIP-7702
    # authorization's nonce, not the transaction's.
    (SendOutcome.NONCE_TOO_LOW, r"(?<!authority )\bnonce too low\b"),
    # besu TransactionInvalidReason.NONCE_TOO_LOW
    (SendOutcome.NONCE_TOO_LOW, r"\bnonce_too_low\b"),
    # nethermind AcceptTxResult.OldNonce (code name: "OldNonce, Current nonce: .., nonce of ..")
    (SendOutcome.NONCE_TOO_LOW, r"\boldnonce\b"),
    # openethereum rpc helpers/errors.rs TransactionError::Old ("Transaction nonce is too low")
    (SendOutcome.NONCE_TOO_LOW, r"\bnonce is too low\b"),
    # --- a gap below the nonce ----------------------------------------------------------------
    # geth core/error.go ErrNonceTooHigh; reth RpcInvalidTransactionError::NonceTooHigh and
    # Eip4844PoolTransactionError::Eip4844NonceGap; anvil NonceTooHigh; nethermind
    # TxPoolErrorMessages.NonceTooHigh; besu RpcErrorType.NONCE_TOO_HIGH; EDR
    # ProviderError::AutoMineNonceTooHigh ("Nonce too high. Expected nonce to be ..")
    (SendOutcome.NONCE_TOO_HIGH, r"\bnonce too high\b"),
    # besu TransactionInvalidReason.NONCE_TOO_HIGH and NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER
    (SendOutcome.NONCE_TOO_HIGH, r"\bnonce_too_high\b|\bnonce_too_far_in_future_for_sender\b"),
    # besu RpcErrorType.NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER
    (SendOutcome.NONCE_TOO_HIGH, r"nonce is too distant from current sender nonce"),
    # besu RpcErrorType.LOWER_NONCE_INVALID_TRANSACTION_EXISTS: a lower nonce blocks this one
    (SendOutcome.NONCE_TOO_HIGH, r"invalid transaction with a lower nonce exists"),
    # nethermind AcceptTxResult.NonceGap and NonceTooFarInFuture (code names)
    (SendOutcome.NONCE_TOO_HIGH, r"\bnoncegap\b|\bnoncetoofarinfuture\b"),
    # nethermind TxPoolErrorMessages.NonceTooFarInFuture
    (SendOutcome.NONCE_TOO_HIGH, r"\bnonce too far in future\b"),
    # geth core/txpool/legacypool ErrOutOfOrderTxFromDelegated
    (SendOutcome.NONCE_TOO_HIGH, r"gapped-nonce tx from delegated accounts"),
    # --- the fee fields themselves are wrong: a signing bug -----------------------------------
    # before UNDERPRICED and FEE_CAP_EXCEEDED: these texts mention the fee cap too.
    # geth core/error.go ErrTipAboveFeeCap; reth RpcInvalidTransactionError::TipAboveFeeCap;
    # anvil InvalidTransactionError::TipAboveFeeCap
    (SendOutcome.TIP_ABOVE_FEE_CAP, r"max priority fee per gas higher than max fee per gas"),
    # geth core/error.go ErrTipVeryHigh and ErrFeeCapVeryHigh; reth TipVeryHigh, FeeCapVeryHigh
    (SendOutcome.TIP_ABOVE_FEE_CAP, r"fee per gas higher than 2\^256-1"),
    # anvil eth/error.rs BlockchainError::InvalidFeeInput
    (
        SendOutcome.TIP_ABOVE_FEE_CAP,
        r"max_priority_fee_per_gas`? greater than `?max_fee_per_gas",
    ),
    # EDR edr_provider requests/validation.rs (and Hardhat's former JS provider)
    (SendOutcome.TIP_ABOVE_FEE_CAP, r"maxpriorityfeepergas \(\d+\) is bigger than maxfeepergas"),
    # besu RpcErrorType.MAX_PRIORITY_FEE_PER_GAS_EXCEEDS_MAX_FEE_PER_GAS and the
    # TransactionInvalidReason of the same name
    (
        SendOutcome.TIP_ABOVE_FEE_CAP,
        r"max priority fee per gas exceeds max fee per gas|"
        r"\bmax_priority_fee_per_gas_exceeds_max_fee_per_gas\b",
    ),
    # --- the node's fee cap -------------------------------------------------------------------
    # geth internal/ethapi/api.go checkTxFee ("tx fee (1.20 ether) exceeds the configured cap
    # (1.00 ether)"); reth InvalidPoolTransactionError::ExceedsFeeCap (in wei)
    (SendOutcome.FEE_CAP_EXCEEDED, r"exceeds the configured cap"),
    # besu RpcErrorType.TX_FEECAP_EXCEEDED and TransactionInvalidReason.TX_FEECAP_EXCEEDED
    (SendOutcome.FEE_CAP_EXCEEDED, r"\btransaction fee cap exceeded\b|\btx_feecap_exceeded\b"),
    # --- the signer cannot pay ----------------------------------------------------------------
    # geth core/error.go ErrInsufficientFunds and ErrInsufficientFundsForTransfer; reth
    # RpcInvalidTransactionError::InsufficientFunds; erigon InsufficientFunds; anvil
    # InsufficientFunds; nethermind TxErrorMessages.InsufficientFundsForGas; openethereum
    # TransactionError::InsufficientBalance ("Insufficient funds. The account ..")
    (SendOutcome.INSUFFICIENT_FUNDS, r"\binsufficient funds\b"),
    # nethermind AcceptTxResult.InsufficientFunds (code name)
    (SendOutcome.INSUFFICIENT_FUNDS, r"\binsufficientfunds\b"),
    # besu RpcErrorType.TRANSACTION_UPFRONT_COST_EXCEEDS_BALANCE and
    # TransactionInvalidReason.UPFRONT_COST_EXCEEDS_BALANCE
    (
        SendOutcome.INSUFFICIENT_FUNDS,
        r"upfront cost exceeds account balance|\bupfront_cost_exceeds_balance\b",
    ),
    # EDR mem_pool MemPoolAddTransactionError::InsufficientFunds and chain spec error.rs;
    # ethereumjs-vm runTx, which Ganache 2 and the old Hardhat network ran
    (SendOutcome.INSUFFICIENT_FUNDS, r"sender doesn't have enough funds to send tx"),
    # reth transaction-pool error.rs InvalidPoolTransactionError::Overdraft
    (SendOutcome.INSUFFICIENT_FUNDS, r"transaction overdraws from account"),
    # --- the fee is too low for this pool or block ----------------------------------------------
    # geth core/error.go ErrFeeCapTooLow; reth FeeCapTooLow; anvil FeeCapTooLow: the fee cap is
    # below the base fee, so it waits for the base fee to fall.
    (SendOutcome.UNDERPRICED, r"max fee per gas less than block base fee"),
    # geth core/types/transaction.go ErrGasFeeCapTooLow
    (SendOutcome.UNDERPRICED, r"fee cap less than base fee"),
    # geth core/txpool/errors.go ErrUnderpriced; reth RpcPoolError::Underpriced; nethermind
    # AcceptTxResult.FeeTooLow (TxPoolErrorMessages.TransactionUnderpriced); Ganache
    # errors.ts UNDERPRICED; erigon txpoolcfg.go UnderPriced ("underpriced")
    (SendOutcome.UNDERPRICED, r"\bunderpriced\b"),
    # geth core/txpool/errors.go ErrTxGasPriceTooLow
    (SendOutcome.UNDERPRICED, r"transaction gas price below minimum"),
    # erigon txpoolcfg.go FeeTooLow and its ImportResult_FEE_TOO_LOW prefix
    (SendOutcome.UNDERPRICED, r"\bfee too low\b|\bfee_too_low\b"),
    # nethermind AcceptTxResult.FeeTooLow and FeeTooLowToCompete (code names)
    (SendOutcome.UNDERPRICED, r"\bfeetoolow(tocompete)?\b"),
    # reth PoolErrorKind::FeeCapBelowMinimumProtocolFeeCap
    (SendOutcome.UNDERPRICED, r"\bbelow chain minimum\b"),
    # reth InvalidPoolTransactionError::PriorityFeeBelowMinimum
    (SendOutcome.UNDERPRICED, r"priority fee below minimum required priority fee"),
    # besu RpcErrorType.GAS_PRICE_TOO_LOW and GAS_PRICE_BELOW_CURRENT_BASE_FEE, and the
    # TransactionInvalidReason names
    (
        SendOutcome.UNDERPRICED,
        r"gas price below configured minimum gas price|gas price below current base fee|"
        r"\bgas_price_too_low\b|\bgas_price_below_current_base_fee\b",
    ),
    # EDR ProviderError::AutoMineMaxFeePerGasTooLow and AutoMineGasPriceTooLow
    (SendOutcome.UNDERPRICED, r"is too low for the next block, which has a basefeepergas"),
    # EDR ProviderError::AutoMinePriorityFeeTooLow ("Transaction gas price is 0, which is
    # below the minimum of 1")
    (SendOutcome.UNDERPRICED, r"which is below the minimum of \d+"),
    # openethereum TransactionError::InsufficientGasPrice and GasPriceLowerThanBaseFee
    # ("lower then", sic)
    (
        SendOutcome.UNDERPRICED,
        r"does not satisfy your node's minimal gas price|lower then the required base fee",
    ),
    # --- gas limit below the intrinsic cost -----------------------------------------------------
    # before GAS_LIMIT_TOO_HIGH: besu's "Intrinsic gas exceeds gas limit" reads like it.
    # geth core/error.go ErrIntrinsicGas; reth GasTooLow; anvil GasTooLow; Ganache errors.ts
    # INTRINSIC_GAS_TOO_LOW; reth InvalidPoolTransactionError::IntrinsicGasTooLow
    (SendOutcome.INTRINSIC_GAS, r"\bintrinsic gas too low\b"),
    # erigon txpoolcfg.go IntrinsicGas ("IntrinsicGas")
    (SendOutcome.INTRINSIC_GAS, r"\bintrinsicgas\b"),
    # besu RpcErrorType.INTRINSIC_GAS_EXCEEDS_LIMIT and
    # TransactionInvalidReason.INTRINSIC_GAS_EXCEEDS_GAS_LIMIT
    (
        SendOutcome.INTRINSIC_GAS,
        r"intrinsic gas exceeds gas limit|\bintrinsic_gas_exceeds_gas_limit\b",
    ),
    # geth core/error.go ErrFloorDataGas (EIP-7623 calldata floor)
    (SendOutcome.INTRINSIC_GAS, r"insufficient gas for floor data gas cost"),
    # EDR edr_runtime transaction.rs CreationError::InsufficientGas and GasFloorTooHigh
    (
        SendOutcome.INTRINSIC_GAS,
        r"requires at least \d+ gas but got \d+|requires gas floor of \d+ but got limit of",
    ),
    # openethereum TransactionError::InsufficientGas
    (SendOutcome.INTRINSIC_GAS, r"not enough gas to cover minimal cost of the transaction"),
    # --- gas limit above the per-transaction or block cap ---------------------------------------
    # geth core/txpool/errors.go ErrGasLimit; reth RpcPoolError::ExceedsGasLimit; Ganache
    # errors.ts GAS_LIMIT; besu RpcErrorType.EXCEEDS_BLOCK_GAS_LIMIT and the
    # TransactionInvalidReason of the same name; EDR mem_pool ExceedsBlockGasLimit
    (SendOutcome.GAS_LIMIT_TOO_HIGH, r"\bexceeds[ _]block[ _]gas[ _]limit\b"),
    # geth core/error.go ErrGasLimitTooHigh (EIP-7825); reth
    # RpcInvalidTransactionError::GasLimitTooHigh; erigon txpoolcfg.go GasLimitTooHigh
    # ("gas limit is too high")
    (SendOutcome.GAS_LIMIT_TOO_HIGH, r"\bgas limit (is )?too high\b"),
    # EDR mem_pool ExceedsTransactionGasCap (EIP-7825)
    (SendOutcome.GAS_LIMIT_TOO_HIGH, r"exceeds transaction gas cap"),
    # reth RpcPoolError::MaxTxGasLimitExceeded, and the pool's MaxTxGasLimitExceeded and
    # ExceedsGasLimit texts
    (
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        r"exceeds max transaction gas limit|exceeds maximum per-transaction gas limit|"
        r"exceeds block's gas limit",
    ),
    # reth RpcInvalidTransactionError::GasTooHigh; anvil InvalidTransactionError::GasTooHigh
    (SendOutcome.GAS_LIMIT_TOO_HIGH, r"\bintrinsic gas too high\b"),
    # anvil InvalidTransactionError::TxGasLimitGreaterThanCap
    (SendOutcome.GAS_LIMIT_TOO_HIGH, r"transaction gas limit is greater than the block gas limit"),
    # nethermind AcceptTxResult.GasLimitExceeded: its code name, its current text
    # (TxPoolErrorMessages.GasLimitReached, as geth core/error.go ErrGasLimitReached) and the
    # detail GasLimitTxFilter appends ("Tx gas limit cap: .., gas limit of rejected tx: ..")
    (
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        r"\bgaslimitexceeded\b|\bgas limit reached\b|gas limit of rejected tx",
    ),
    # besu RpcErrorType.EXCEEDS_TRANSACTION_GAS_LIMIT and the TransactionInvalidReason name
    (
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        r"transaction gas limit cap exceeded|\bexceeds_transaction_gas_limit\b",
    ),
    # openethereum TransactionError::GasLimitExceeded and InvalidGasLimit
    (
        SendOutcome.GAS_LIMIT_TOO_HIGH,
        r"transaction cost exceeds current gas limit|supplied gas is beyond limit",
    ),
    # --- gas limit wrong, direction not said ------------------------------------------------------
    # reth RpcInvalidTransactionError::GasRequiredExceedsAllowance; anvil
    # InvalidTransactionError::BasicOutOfGas ("Out of gas: gas required exceeds allowance")
    (SendOutcome.GAS_LIMIT, r"gas required exceeds allowance"),
    # geth core/error.go ErrGasUintOverflow; reth and anvil GasUintOverflow; erigon
    # txpoolcfg.go GasUintOverflow ("GasUintOverflow")
    (SendOutcome.GAS_LIMIT, r"\bgas uint64 overflow\b|\bgasuintoverflow\b"),
    # --- the encoded transaction is too large ---------------------------------------------------
    # geth core/txpool/errors.go ErrOversizedData; erigon OversizedData; reth OversizedData
    (SendOutcome.OVERSIZED_DATA, r"\boversized data\b"),
    # reth transaction-pool InvalidPoolTransactionError::OversizedData (older text)
    (SendOutcome.OVERSIZED_DATA, r"\binput data too large\b"),
    # nethermind TxPoolErrorMessages.TransactionTooLarge and AcceptTxResult.MaxTxSizeExceeded
    (SendOutcome.OVERSIZED_DATA, r"\btransaction too large\b|\bmaxtxsizeexceeded\b"),
    # besu TransactionInvalidReason.EXCEEDS_MAX_TX_BYTES
    (SendOutcome.OVERSIZED_DATA, r"\bexceeds_max_tx_bytes\b"),
    # openethereum TransactionError::TooBig; erigon txpoolcfg.go RLPTooLong
    (SendOutcome.OVERSIZED_DATA, r"transaction is too big|\brlptoolong\b"),
    # --- the pool, or this sender's share of it, is full -----------------------------------------
    # geth core/txpool/legacypool ErrTxPoolOverflow; reth RpcPoolError::TxPoolOverflow
    (SendOutcome.POOL_FULL, r"\btxpool is full\b"),
    # erigon txpoolcfg.go PendingPoolOverflow, BaseFeePoolOverflow, QueuedPoolOverflow
    (SendOutcome.POOL_FULL, r"sub-pool is full"),
    # geth core/txpool/errors.go ErrAccountLimitExceeded
    (SendOutcome.POOL_FULL, r"\baccount limit exceeded\b"),
    # geth core/txpool/errors.go ErrInflightTxLimitReached
    (SendOutcome.POOL_FULL, r"in-flight transaction limit reached"),
    # geth core/txpool/legacypool ErrFutureReplacePending (only when the pool is full)
    (SendOutcome.POOL_FULL, r"future transaction tries to replace pending"),
    # erigon txpoolcfg.go Spammer; reth PoolErrorKind::SpammerExceededCapacity
    (SendOutcome.POOL_FULL, r"\bspammer\b"),
    # reth PoolErrorKind::DiscardedOnInsert
    (SendOutcome.POOL_FULL, r"discarded outright due to pool size constraints"),
    # openethereum TransactionError::LimitReached
    (SendOutcome.POOL_FULL, r"too many transactions in the queue"),
    # --- no answer in time ------------------------------------------------------------------------
    # Transport text rather than a node's: httpx ReadTimeout and "timed out", Go
    # context.DeadlineExceeded "context deadline exceeded" (erigon's rpcdaemon relays its txpool
    # gRPC errors), besu RpcErrorType.TIMEOUT_ERROR ("Timeout expired"), anvil
    # BlockchainError::TransactionConfirmationTimeout ("Transaction confirmation timeout").
    (SendOutcome.TIMEOUT, r"timeout|\btime out\b|\btimed out\b|\bdeadline exceeded\b"),
)

TABLE: tuple[tuple[SendOutcome, re.Pattern[str]], ...] = tuple(
    (outcome, re.compile(pattern, re.IGNORECASE)) for outcome, pattern in _ROWS
)

# Ganache (and ethereumjs-vm runTx under it) answers one text for both directions: "the tx
# doesn't have the correct nonce. account has nonce of: 8 tx has nonce of: 7". Ganache
# transaction-pool.ts TransactionPool.insert raises it for a nonce below the account's,
# ethereumjs-vm runTx for any mismatch, so the two numbers decide the direction.
_WRONG_NONCE = re.compile(
    r"account has nonce of: (?P<account>\d+) tx has nonce of: (?P<tx>\d+)", re.IGNORECASE
)


def _wrong_nonce(message: str) -> SendOutcome | None:
    match = _WRONG_NONCE.search(message)
    if match is None:
        return None
    account, tx = int(match["account"]), int(match["tx"])
    if tx < account:
        return SendOutcome.NONCE_TOO_LOW
    if tx > account:
        return SendOutcome.NONCE_TOO_HIGH
    return SendOutcome.UNKNOWN


def classify_send_error(message: str) -> SendOutcome:
    """The outcome a node's error message stands for (UNKNOWN when no row matches)."""
    outcome = _wrong_nonce(message)
    if outcome is not None:
        return outcome
    for outcome, pattern in TABLE:
        if pattern.search(message):
            return outcome
    return SendOutcome.UNKNOWN


def unknown_backoff_blocks(failures: int, base: int = 1, cap: int = 64) -> int:
    """Blocks to wait before resending after `failures` consecutive UNKNOWN answers.

    Exponential: `base`, 2 * `base`, 4 * `base`, ... for failures 1, 2, 3, ..., never above
    `cap`. An unknown answer may hide an accepted transaction, so the manager waits (and checks
    the pending nonce and receipts) rather than hammering the node with the same bytes; the
    cap bounds how stale a stuck intent gets. `failures` below 1 means nothing failed yet: 0.
    """
    if base < 1 or cap < base:
        raise ValueError(f"need 1 <= base <= cap, got base={base} cap={cap}")
    if failures < 1:
        return 0
    # Stop doubling once past the cap: `failures` can grow without bound on a dead node.
    if failures - 1 >= cap.bit_length():
        return cap
    return min(cap, base << (failures - 1))
