// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title StreamManager
/// @notice Per-second payment streams in one ERC-20 token, settled in batches by anyone into a
/// payee ledger, plus usage charged per unit by holders of ORACLE_ROLE (the usage oracle is a role
/// on this contract, not a separate contract: a report then costs no external call).
///
/// Accrual: due = min(balance, rate * (now - settledAt)). A stream whose balance reaches zero is
/// depleted and accrues nothing until topped up. Usage charges are taken from the balance first;
/// time accrual is capped by whatever balance is left.
///
/// Every state-changing event carries the post-state an indexer needs (balanceAfter, the usage
/// sequence, the amounts credited), so the stream's state never has to be read back by eth_call.
/// A `StreamSettled` event also means "settledAt is now the block's timestamp".
contract StreamManager is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant ORACLE_ROLE = keccak256("ORACLE_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint256 public constant MAX_FEE_BPS = 1000;
    uint256 public constant MAX_USAGE_UNITS = type(uint64).max;

    uint8 internal constant STATUS_NONE = 0;
    uint8 internal constant STATUS_OPEN = 1;
    uint8 internal constant STATUS_CLOSED = 2;

    /// Reasons carried by SettleSkipped.
    uint8 public constant SKIP_UNKNOWN = 1;
    uint8 public constant SKIP_CLOSED = 2;
    uint8 public constant SKIP_NOTHING_DUE = 3;

    /// Reasons carried by UsageSkipped (SKIP_UNKNOWN and SKIP_CLOSED as above).
    uint8 public constant SKIP_REPLAY = 4;
    uint8 public constant SKIP_GAP = 5;
    uint8 public constant SKIP_BAD_UNITS = 6;

    /// Storage of one stream: three slots. The first holds everything settlement and usage
    /// read and write, so a settle touches one slot read-write and one (payee) read-only.
    struct Stream {
        // slot 0: hot state
        uint96 balance;
        uint64 rate; // token base units per second
        uint40 settledAt;
        uint48 usageSeq; // last applied usage sequence number
        uint8 status;
        // slot 1: read-only during settlement
        address payee;
        uint96 pricePerUnit;
        // slot 2: cold, used for access control only
        address payer;
    }

    IERC20 public immutable token;

    /// feeRecipient, feeBps and the pause flag share one slot: a batch reads all three with one
    /// SLOAD. (This is why the contract does not inherit OpenZeppelin's Pausable, whose flag
    /// would sit in a slot of its own; the interface is the same: paused(), Paused, Unpaused.)
    address public feeRecipient;
    uint16 public feeBps;
    bool private _paused;
    uint256 public nextStreamId = 1;

    mapping(uint256 => Stream) internal _streams;
    /// Amount each payee (and the fee recipient) can claim, across all its streams.
    mapping(address => uint256) public credited;

    event StreamOpened(
        uint256 indexed id,
        address indexed payer,
        address indexed payee,
        uint256 ratePerSecond,
        uint256 deposit
    );
    /// `amount` left the stream's balance; the payee was credited `amount - fee`.
    /// The two per-item events of the batch paths (StreamSettled, UsageRecorded) carry the id as
    /// data rather than as a topic: a topic costs 375 gas, a data word 256, and the keeper reads
    /// every log of the contract anyway.
    event StreamSettled(uint256 id, uint256 amount, uint256 fee, uint256 balanceAfter);
    event SettleSkipped(uint256 indexed id, uint8 reason);
    event StreamToppedUp(uint256 indexed id, uint256 amount, uint256 balanceAfter);
    event StreamRateUpdated(uint256 indexed id, uint256 ratePerSecond);
    event StreamClosed(uint256 indexed id, uint256 refunded);
    event UsagePriceSet(uint256 indexed id, uint256 pricePerUnit);
    /// `charged` left the balance (payee credited `charged - fee`); `shortfall` is the part of
    /// `units * pricePerUnit` the balance could not cover.
    event UsageRecorded(
        uint256 id,
        uint256 seq,
        uint256 units,
        uint256 charged,
        uint256 fee,
        uint256 shortfall,
        uint256 balanceAfter
    );
    event UsageSkipped(uint256 indexed id, uint256 seq, uint256 lastSeq, uint8 reason);
    event FeesCredited(address indexed recipient, uint256 amount);
    event Claimed(address indexed payee, uint256 amount);
    event FeeUpdated(uint256 feeBps);
    event Paused(address account);
    event Unpaused(address account);
    event FeeRecipientUpdated(address indexed recipient);

    error EnforcedPause();
    error ExpectedPause();
    error ZeroAddress();
    error AmountTooLarge();
    error RateTooLarge();
    error PriceTooLarge();
    error FeeTooHigh();
    error UnknownStream(uint256 id);
    error StreamNotOpen(uint256 id);
    error NotPayer(uint256 id);
    error NotPayee(uint256 id);
    error NotParty(uint256 id);
    error NothingToClaim();
    error LengthMismatch();

    constructor(IERC20 token_, address admin, address feeRecipient_, uint16 feeBps_) {
        if (address(token_) == address(0) || admin == address(0) || feeRecipient_ == address(0)) {
            revert ZeroAddress();
        }
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh();
        token = token_;
        feeRecipient = feeRecipient_;
        feeBps = feeBps_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        // The initial fee settings are announced like later changes, so an indexer learns
        // them from the logs alone.
        emit FeeRecipientUpdated(feeRecipient_);
        emit FeeUpdated(feeBps_);
    }

    // ------------------------------------------------------------------ payer actions

    /// @notice Open a stream paying `payee` `ratePerSecond`, funded with `deposit` (may be 0).
    function openStream(address payee, uint256 ratePerSecond, uint256 deposit)
        external
        whenNotPaused
        returns (uint256 id)
    {
        // Money credited to this contract's own address could never be claimed.
        if (payee == address(0) || payee == address(this)) revert ZeroAddress();
        if (ratePerSecond > type(uint64).max) revert RateTooLarge();
        if (deposit > type(uint96).max) revert AmountTooLarge();
        id = nextStreamId++;
        Stream storage s = _streams[id];
        s.balance = uint96(deposit);
        s.rate = uint64(ratePerSecond);
        s.settledAt = uint40(block.timestamp);
        s.status = STATUS_OPEN;
        s.payee = payee;
        s.payer = msg.sender;
        emit StreamOpened(id, msg.sender, payee, ratePerSecond, deposit);
        if (deposit != 0) token.safeTransferFrom(msg.sender, address(this), deposit);
    }

    /// @notice Add `amount` to a stream's balance (anyone may pay in). Settles first, so a
    /// depleted stream starts accruing again from now.
    function topUp(uint256 id, uint256 amount) external whenNotPaused {
        Stream storage s = _openStream(id);
        _settleOne(id, s);
        uint256 balance = uint256(s.balance) + amount;
        if (balance > type(uint96).max) revert AmountTooLarge();
        s.balance = uint96(balance);
        emit StreamToppedUp(id, amount, balance);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Change the rate; what accrued at the old rate is settled first.
    function updateRate(uint256 id, uint256 newRate) external whenNotPaused {
        Stream storage s = _openStream(id);
        if (s.payer != msg.sender) revert NotPayer(id);
        if (newRate > type(uint64).max) revert RateTooLarge();
        _settleOne(id, s);
        s.rate = uint64(newRate);
        emit StreamRateUpdated(id, newRate);
    }

    /// @notice Set the price the oracle charges per usage unit.
    function setUsagePrice(uint256 id, uint256 pricePerUnit) external whenNotPaused {
        Stream storage s = _openStream(id);
        if (s.payer != msg.sender) revert NotPayer(id);
        if (pricePerUnit > type(uint96).max) revert PriceTooLarge();
        s.pricePerUnit = uint96(pricePerUnit);
        emit UsagePriceSet(id, pricePerUnit);
    }

    /// @notice Settle, then refund the rest of the balance to the payer and close the stream.
    /// The payer or the payee may close.
    function closeStream(uint256 id) external whenNotPaused {
        Stream storage s = _openStream(id);
        address payer = s.payer;
        if (msg.sender != payer && msg.sender != s.payee) revert NotParty(id);
        _settleOne(id, s);
        uint256 refund = s.balance;
        s.balance = 0;
        s.status = STATUS_CLOSED;
        emit StreamClosed(id, refund);
        if (refund != 0) token.safeTransfer(payer, refund);
    }

    // ------------------------------------------------------------------ payee actions

    /// @notice Settle one stream and pay its payee everything credited to it (all streams).
    function withdrawAvailable(uint256 id) external whenNotPaused returns (uint256 amount) {
        Stream storage s = _openStream(id);
        if (s.payee != msg.sender) revert NotPayee(id);
        _settleOne(id, s);
        amount = _claim(msg.sender);
    }

    /// @notice Pay the caller everything credited to it across all its streams.
    function claim() external whenNotPaused returns (uint256 amount) {
        amount = _claim(msg.sender);
    }

    // ------------------------------------------------------------------ keeper actions

    /// @notice Settle many streams. Unknown, closed and already-settled ids are skipped with a
    /// SettleSkipped event; the batch never reverts because of one id. Permissionless: money only
    /// ever moves to payees.
    function settleStreams(uint256[] calldata ids) external whenNotPaused returns (uint256 settled) {
        uint256 bps = feeBps;
        uint256 totalFee;
        bytes32 settledTopic = StreamSettled.selector;
        bytes32 skippedTopic = SettleSkipped.selector;
        // The hottest path of the system, written in Yul to keep the per-stream overhead around
        // the storage accesses small. Per id, exactly as the Solidity of _settleOne would do:
        //   word = hot slot; if status != OPEN -> SettleSkipped(id, UNKNOWN | CLOSED)
        //   due = min(balance, rate * (now - settledAt)); if due == 0 -> SettleSkipped(NOTHING_DUE)
        //   balance -= due; settledAt = now (one SSTORE); fee = due * bps / 10000
        //   credit due - fee to the payee, folding runs of one payee into one ledger write
        //   emit StreamSettled(id, due, fee, balance)
        // No overflow is possible: rate < 2^64 and elapsed < 2^40; credits are bounded by the
        // tokens this contract holds. Block timestamps only grow and stay below 2^40 (the
        // settledAt field) until the year 36812, so neither the subtraction nor the shift into
        // settledAt needs a guard.
        assembly ("memory-safe") {
            let buf := mload(0x40) // scratch for event data; never allocated
            let curPayee := 0
            let curCredit := 0
            let end := add(ids.offset, shl(5, ids.length))
            for { let p := ids.offset } lt(p, end) { p := add(p, 0x20) } {
                let id := calldataload(p)
                mstore(0x00, id)
                mstore(0x20, _streams.slot)
                let slot := keccak256(0x00, 0x40)
                let word := sload(slot)
                let status := shr(248, word)
                if iszero(eq(status, 1)) {
                    // 0 (never opened) -> SKIP_UNKNOWN = 1; 2 (closed) -> SKIP_CLOSED = 2
                    mstore(buf, add(1, iszero(iszero(status))))
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                let bal := and(word, 0xffffffffffffffffffffffff)
                let due := mul(
                    and(shr(96, word), 0xffffffffffffffff),
                    sub(timestamp(), and(shr(160, word), 0xffffffffff))
                )
                if gt(due, bal) { due := bal }
                if iszero(due) {
                    mstore(buf, 3) // SKIP_NOTHING_DUE
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                bal := sub(bal, due)
                let fee := div(mul(due, bps), 10000)
                // keep rate, usageSeq and status; rewrite bal and settledAt
                sstore(slot, or(or(and(word, KEEP_ON_SETTLE), bal), shl(160, timestamp())))
                totalFee := add(totalFee, fee)
                let payee := and(sload(add(slot, 1)), 0xffffffffffffffffffffffffffffffffffffffff)
                if iszero(eq(payee, curPayee)) {
                    if curCredit {
                        mstore(0x00, curPayee)
                        mstore(0x20, credited.slot)
                        let cs := keccak256(0x00, 0x40)
                        sstore(cs, add(sload(cs), curCredit))
                    }
                    curPayee := payee
                    curCredit := 0
                }
                curCredit := add(curCredit, sub(due, fee))
                settled := add(settled, 1)
                mstore(buf, id)
                mstore(add(buf, 0x20), due)
                mstore(add(buf, 0x40), fee)
                mstore(add(buf, 0x60), bal)
                log1(buf, 0x80, settledTopic)
            }
            if curCredit {
                mstore(0x00, curPayee)
                mstore(0x20, credited.slot)
                let cs := keccak256(0x00, 0x40)
                sstore(cs, add(sload(cs), curCredit))
            }
        }
        _creditFees(totalFee);
    }

    /// @notice Charge usage reports: stream `ids[i]` used `units[i]` units, as its report number
    /// `seqs[i]`. A report applies only when seqs[i] == last applied + 1 (exactly once); replays,
    /// gaps, unknown or closed streams and out-of-range units are skipped with UsageSkipped.
    /// A report costing more than the balance charges what is left and reports the shortfall.
    function recordUsageBatch(uint256[] calldata ids, uint256[] calldata units, uint256[] calldata seqs)
        external
        whenNotPaused
        onlyRole(ORACLE_ROLE)
        returns (uint256 recorded)
    {
        uint256 n = ids.length;
        if (units.length != n || seqs.length != n) revert LengthMismatch();
        uint256 bps = feeBps;
        address curPayee;
        uint256 curCredit;
        uint256 totalFee;
        for (uint256 i; i < n; ) {
            uint256 id = ids[i];
            uint256 seq = seqs[i];
            uint256 u = units[i];
            Stream storage s = _streams[id];
            uint256 word = _loadHot(s);
            uint256 status = word >> STATUS_SHIFT;
            uint256 last = (word >> SEQ_SHIFT) & MASK_48;
            uint8 reason;
            if (status != STATUS_OPEN) {
                reason = status == STATUS_NONE ? SKIP_UNKNOWN : SKIP_CLOSED;
            } else if (seq <= last) {
                reason = SKIP_REPLAY;
            } else if (seq != last + 1 || seq > MASK_48) {
                // (seq > MASK_48 only when the 48-bit sequence space is exhausted.)
                reason = SKIP_GAP;
            } else if (u == 0 || u > MAX_USAGE_UNITS) {
                reason = SKIP_BAD_UNITS;
            }
            if (reason != 0) {
                emit UsageSkipped(id, seq, last, reason);
            } else {
                unchecked {
                    // payee and price share the second slot: one SLOAD for both.
                    uint256 cold = _loadCold(s);
                    address payee = address(uint160(cold));
                    // u < 2^64 and price < 2^96: no overflow.
                    uint256 cost = u * (cold >> PRICE_SHIFT);
                    uint256 balance = word & MASK_96;
                    uint256 charged = cost > balance ? balance : cost;
                    uint256 fee = (charged * bps) / 10_000;
                    balance -= charged;
                    _storeHot(s, (word & KEEP_ON_USAGE) | balance | (seq << SEQ_SHIFT));
                    totalFee += fee;
                    if (payee != curPayee) {
                        if (curCredit != 0) credited[curPayee] += curCredit;
                        curPayee = payee;
                        curCredit = 0;
                    }
                    curCredit += charged - fee;
                    ++recorded;
                    emit UsageRecorded(id, seq, u, charged, fee, cost - charged, balance);
                }
            }
            unchecked {
                ++i;
            }
        }
        if (curCredit != 0) credited[curPayee] += curCredit;
        _creditFees(totalFee);
    }

    // ------------------------------------------------------------------ admin

    function setFee(uint256 newFeeBps) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newFeeBps > MAX_FEE_BPS) revert FeeTooHigh();
        feeBps = uint16(newFeeBps);
        emit FeeUpdated(newFeeBps);
    }

    function setFeeRecipient(address recipient) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (recipient == address(0) || recipient == address(this)) revert ZeroAddress();
        feeRecipient = recipient;
        emit FeeRecipientUpdated(recipient);
    }

    function pause() external onlyRole(PAUSER_ROLE) {
        if (_paused) revert EnforcedPause();
        _paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        if (!_paused) revert ExpectedPause();
        _paused = false;
        emit Unpaused(msg.sender);
    }

    function paused() external view returns (bool) {
        return _paused;
    }

    modifier whenNotPaused() {
        if (_paused) revert EnforcedPause();
        _;
    }

    // ------------------------------------------------------------------ views

    /// @notice What settling `id` now would move out of its balance (0 unless open).
    function accruedOf(uint256 id) external view returns (uint256) {
        Stream storage s = _streams[id];
        if (s.status != STATUS_OPEN) return 0;
        uint256 due = uint256(s.rate) * (block.timestamp - s.settledAt);
        return due > s.balance ? s.balance : due;
    }

    /// @notice The whole stored state of a stream (status: 0 unknown, 1 open, 2 closed).
    function getStream(uint256 id)
        external
        view
        returns (
            address payer,
            address payee,
            uint256 balance,
            uint256 ratePerSecond,
            uint256 settledAt,
            uint256 usageSeq,
            uint256 pricePerUnit,
            uint8 status
        )
    {
        Stream storage s = _streams[id];
        return (s.payer, s.payee, s.balance, s.rate, s.settledAt, s.usageSeq, s.pricePerUnit, s.status);
    }

    // ------------------------------------------------------------------ internals

    // Bit layout of the hot slot (Solidity packs struct fields from the low-order end).
    uint256 internal constant RATE_SHIFT = 96;
    uint256 internal constant SETTLED_SHIFT = 160;
    uint256 internal constant SEQ_SHIFT = 200;
    uint256 internal constant STATUS_SHIFT = 248;
    uint256 internal constant PRICE_SHIFT = 160; // in the second slot, above the payee
    uint256 internal constant MASK_96 = (1 << 96) - 1;
    uint256 internal constant MASK_64 = (1 << 64) - 1;
    uint256 internal constant MASK_48 = (1 << 48) - 1;
    uint256 internal constant MASK_40 = (1 << 40) - 1;
    /// Settlement rewrites balance and settledAt and keeps rate, usageSeq and status.
    uint256 internal constant KEEP_ON_SETTLE =
        0xffffffffffffff0000000000ffffffffffffffff000000000000000000000000;
    /// Usage rewrites balance and usageSeq and keeps rate, settledAt and status.
    uint256 internal constant KEEP_ON_USAGE = ~(MASK_96 | (MASK_48 << SEQ_SHIFT));

    function _loadHot(Stream storage s) private view returns (uint256 word) {
        assembly {
            word := sload(s.slot)
        }
    }

    function _loadCold(Stream storage s) private view returns (uint256 word) {
        assembly {
            word := sload(add(s.slot, 1))
        }
    }

    function _storeHot(Stream storage s, uint256 word) private {
        assembly {
            sstore(s.slot, word)
        }
    }

    function _openStream(uint256 id) internal view returns (Stream storage s) {
        s = _streams[id];
        uint8 status = s.status;
        if (status == STATUS_NONE) revert UnknownStream(id);
        if (status != STATUS_OPEN) revert StreamNotOpen(id);
    }

    /// Settle one open stream, always moving settledAt to now (even when nothing is due, so a
    /// depleted stream that is topped up accrues from the top-up, not from its depletion).
    function _settleOne(uint256 id, Stream storage s) internal {
        uint256 balance = s.balance;
        uint256 due = uint256(s.rate) * (block.timestamp - s.settledAt);
        if (due > balance) due = balance;
        uint256 fee = (due * feeBps) / 10_000;
        balance -= due;
        s.balance = uint96(balance);
        s.settledAt = uint40(block.timestamp);
        if (due != 0) credited[s.payee] += due - fee;
        _creditFees(fee);
        emit StreamSettled(id, due, fee, balance);
    }

    function _creditFees(uint256 amount) internal {
        if (amount == 0) return;
        address recipient = feeRecipient;
        credited[recipient] += amount;
        emit FeesCredited(recipient, amount);
    }

    function _claim(address payee) internal returns (uint256 amount) {
        amount = credited[payee];
        if (amount == 0) revert NothingToClaim();
        credited[payee] = 0;
        emit Claimed(payee, amount);
        token.safeTransfer(payee, amount);
    }
}
