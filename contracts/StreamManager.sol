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
/// Usage prices. A payee publishes a price list: endpoints (named features of its API) with a
/// price per unit each. A stream opened with `openStreamOnPriceList` is charged the payee's
/// price of the endpoint a report names; a stream opened with `openStream` is charged its own
/// price per unit, set by its payer (`setUsagePrice`), whatever the endpoint.
///
/// Terms a payer cannot dodge. A report is charged the price in force when it is applied, and
/// every change that would make usage already delivered cheaper, or unbillable, takes effect
/// only `noticePeriod` seconds (chain time) after it is made:
/// - a payee's price change (either way) is in force from `now + noticePeriod`;
/// - a payer's decrease of its own price likewise (an increase applies at once);
/// - a payer's close is a request: time accrual stops at once (the stream is settled and its
///   rate becomes 0), usage reports still apply until `closeAt = now + noticePeriod`, and then
///   the payer (or the payee) closes it and the rest of the balance goes back to the payer.
///   The payee closes at once: it gives up its own unreported usage.
/// The usage oracle must report what was served before a change before the change is in force.
///
/// Fees. Each payee's ledger carries the remainder of its fee divisions: for an item of `a`
/// base units at `bps`, `t = remainder + a * bps; fee = t / 10000; remainder = t % 10000`. The
/// fees of any sequence of a payee's items are then floor((r0 + sum(a * bps)) / 10000): within
/// one base unit of the fee of their sum, however often they are settled or reported.
///
/// Pause. While paused, money cannot come in or be claimed and nothing is settled in batches,
/// but payers can still leave (`closeStream`, request and finish) and the oracle can still
/// report usage already delivered. Time accrual runs on: the service is still delivered.
///
/// Every state-changing event carries the post-state an indexer needs (balanceAfter, the usage
/// sequence, the amounts credited, when a change takes effect), so the stream's state never has
/// to be read back by eth_call. A `StreamSettled` event also means "settledAt is now the
/// block's timestamp".
contract StreamManager is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant ORACLE_ROLE = keccak256("ORACLE_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint256 public constant MAX_FEE_BPS = 1000;
    uint256 public constant MAX_USAGE_UNITS = type(uint64).max;
    uint256 public constant MAX_USAGE_SEQ = type(uint32).max;
    uint256 public constant MAX_PAYEES = (1 << 24) - 1;
    uint256 public constant MAX_ENDPOINTS = type(uint32).max;

    uint256 internal constant STATUS_NONE = 0;
    uint256 internal constant STATUS_OPEN = 1;
    uint256 internal constant STATUS_CLOSED = 2;
    uint256 internal constant STATUS_CLOSING = 3;

    /// Reasons carried by SettleSkipped.
    uint8 public constant SKIP_UNKNOWN = 1;
    uint8 public constant SKIP_CLOSED = 2;
    uint8 public constant SKIP_NOTHING_DUE = 3;

    /// Reasons carried by UsageSkipped (SKIP_UNKNOWN and SKIP_CLOSED as above; a closing stream
    /// whose closeAt has come is skipped as closed).
    uint8 public constant SKIP_REPLAY = 4;
    uint8 public constant SKIP_GAP = 5;
    uint8 public constant SKIP_BAD_UNITS = 6;
    uint8 public constant SKIP_UNKNOWN_ENDPOINT = 7;

    /// Storage of one stream: three slots. The first (`hot`) holds everything settlement and
    /// usage read and write, the payee's ledger index included, so a settlement or a report
    /// touches that slot and the payee's ledger slot only.
    ///   hot = balance (96) | rate << 96 (64) | settledAt << 160 (36) | usageSeq << 196 (32)
    ///       | payeeIndex << 228 (24) | status << 252 (2) | ownPrice << 254 (1)
    /// settledAt holds 36 bits: block timestamps fit until the year 4147.
    struct Stream {
        uint256 hot;
        address payee;
        uint40 closeAt; // while closing: when usage stops and the payer may finish the close
        address payer;
    }

    IERC20 public immutable token;
    /// Seconds between a change to the terms (price decrease, payee price change, payer close)
    /// and the moment it takes effect.
    uint256 public immutable noticePeriod;

    /// feeRecipient, feeBps, the pause flag and the recipient's ledger index share one slot: a
    /// batch reads them with one SLOAD. (This is why the contract does not inherit
    /// OpenZeppelin's Pausable; the interface is the same: paused(), Paused, Unpaused.)
    address public feeRecipient;
    uint16 public feeBps;
    bool private _paused;
    uint24 private _feeRecipientIndex;
    uint256 public nextStreamId = 1;
    /// Payees (and the fee recipient) get a compact ledger index the first time they are seen.
    uint256 public payeeCount;
    mapping(address => uint256) public payeeIndexOf;

    mapping(uint256 => Stream) internal _streams;
    /// Per ledger index: amount claimable (low 240 bits) | fee remainder << 240 (< 10000).
    mapping(uint256 => uint256) internal _ledger;
    /// Per (payeeIndex << 32 | endpoint), one slot a report reads and writes:
    ///   price (96) | effectiveAt << 96 (40) | feeRemainder << 136 (14) | credit << 150 (105)
    ///   | listed << 255
    /// `_pendingPrices[key]` is in force from effectiveAt (0: no change pending); the first report
    /// after that folds it into `price`. `credit` is what usage of the endpoint credited the payee
    /// and it has not claimed yet: a report credits the entry it already holds warm instead of
    /// the payee's ledger, which saves a cold slot per report when payees differ.
    mapping(uint256 => uint256) internal _prices;
    mapping(uint256 => uint256) internal _pendingPrices;
    mapping(uint256 => bytes32) internal _endpointNames;
    mapping(uint256 => mapping(bytes32 => uint256)) internal _endpointByName;
    mapping(uint256 => uint256) internal _endpointCount;
    /// Own prices of streams not on a price list: price (96) | pending << 96 (96) | effectiveAt
    /// << 192 (40).
    mapping(uint256 => uint256) internal _streamPrices;

    event StreamOpened(
        uint256 indexed id,
        address indexed payer,
        address indexed payee,
        uint256 ratePerSecond,
        uint256 deposit,
        bool priceList
    );
    /// `amount` left the stream's balance; the payee was credited `amount - fee`.
    /// The per-item events of the batch paths (StreamSettled, UsageRecorded) carry the id as
    /// data rather than as a topic: a topic costs 375 gas, a data word 256, and the keeper reads
    /// every log of the contract anyway.
    event StreamSettled(uint256 id, uint256 amount, uint256 fee, uint256 balanceAfter);
    event SettleSkipped(uint256 indexed id, uint8 reason);
    event StreamToppedUp(uint256 indexed id, uint256 amount, uint256 balanceAfter);
    event StreamRateUpdated(uint256 indexed id, uint256 ratePerSecond);
    /// The payer asked to close: the rate is 0 from now, usage reports apply until `closeAt`.
    event StreamCloseRequested(uint256 indexed id, uint256 closeAt);
    event StreamClosed(uint256 indexed id, uint256 refunded);
    /// A stream's own price: `pricePerUnit` is in force from `effectiveAt` (this block's time
    /// for an increase).
    event UsagePriceSet(uint256 indexed id, uint256 pricePerUnit, uint256 effectiveAt);
    event EndpointAdded(address indexed payee, uint256 indexed endpoint, bytes32 name, uint256 price);
    event EndpointPriceSet(
        address indexed payee, uint256 indexed endpoint, uint256 price, uint256 effectiveAt
    );
    /// One applied report, packed into three words (one event word per field would cost 1,300
    /// gas more per report):
    ///   report = id | seq << 64 | endpoint << 96 | units << 128   (the report as sent)
    ///   charge = charged | fee << 96                              (charged left the balance)
    ///   state  = balanceAfter | price << 96                       (price: the one charged)
    /// The shortfall (what the balance could not cover) is units * price - charged.
    event UsageRecorded(uint256 report, uint256 charge, uint256 state);
    event UsageSkipped(uint256 indexed id, uint256 seq, uint256 lastSeq, uint8 reason);
    event FeesCredited(address indexed recipient, uint256 amount);
    event Claimed(address indexed payee, uint256 amount);
    event FeeUpdated(uint256 feeBps);
    event NoticePeriodSet(uint256 noticePeriod);
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
    error OnPriceList(uint256 id);
    error CloseNotDue(uint256 id, uint256 closeAt);
    error UnknownEndpoint(address payee, uint256 endpoint);
    error EndpointExists(bytes32 name);
    error EmptyName();
    error TooManyPayees();
    error TooManyEndpoints();

    constructor(
        IERC20 token_,
        address admin,
        address feeRecipient_,
        uint16 feeBps_,
        uint32 noticePeriod_
    ) {
        if (address(token_) == address(0) || admin == address(0) || feeRecipient_ == address(0)) {
            revert ZeroAddress();
        }
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh();
        token = token_;
        noticePeriod = noticePeriod_;
        feeRecipient = feeRecipient_;
        feeBps = feeBps_;
        _feeRecipientIndex = uint24(_indexOf(feeRecipient_));
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        // The initial settings are announced like later changes, so an indexer learns them
        // from the logs alone.
        emit FeeRecipientUpdated(feeRecipient_);
        emit FeeUpdated(feeBps_);
        emit NoticePeriodSet(noticePeriod_);
    }

    // ------------------------------------------------------------------ payer actions

    /// @notice Open a stream paying `payee` `ratePerSecond`, funded with `deposit` (may be 0).
    /// Its usage is charged its own price per unit (`setUsagePrice`, 0 until set).
    function openStream(address payee, uint256 ratePerSecond, uint256 deposit)
        external
        whenNotPaused
        returns (uint256 id)
    {
        id = _open(payee, ratePerSecond, deposit, true);
    }

    /// @notice Open a stream whose usage is charged at the payee's price list, per endpoint.
    function openStreamOnPriceList(address payee, uint256 ratePerSecond, uint256 deposit)
        external
        whenNotPaused
        returns (uint256 id)
    {
        id = _open(payee, ratePerSecond, deposit, false);
    }

    /// @notice Add `amount` to a stream's balance (anyone may pay in). Settles first, so a
    /// depleted stream starts accruing again from now.
    function topUp(uint256 id, uint256 amount) external whenNotPaused {
        Stream storage s = _openStream(id);
        _settleOne(id, s);
        uint256 word = s.hot;
        uint256 balance = (word & MASK_96) + amount;
        if (balance > MASK_96) revert AmountTooLarge();
        s.hot = (word & ~MASK_96) | balance;
        emit StreamToppedUp(id, amount, balance);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Change the rate; what accrued at the old rate is settled first.
    function updateRate(uint256 id, uint256 newRate) external whenNotPaused {
        Stream storage s = _openStream(id);
        if (s.payer != msg.sender) revert NotPayer(id);
        if (newRate > MASK_64) revert RateTooLarge();
        _settleOne(id, s);
        s.hot = (s.hot & ~(MASK_64 << RATE_SHIFT)) | (newRate << RATE_SHIFT);
        emit StreamRateUpdated(id, newRate);
    }

    /// @notice Set the price per usage unit of a stream not on a price list. An increase is in
    /// force at once; a decrease from `now + noticePeriod` (reports until then pay the old price).
    function setUsagePrice(uint256 id, uint256 pricePerUnit) external whenNotPaused {
        Stream storage s = _openStream(id);
        if (s.payer != msg.sender) revert NotPayer(id);
        if (s.hot & OWN_PRICE == 0) revert OnPriceList(id);
        if (pricePerUnit > MASK_96) revert PriceTooLarge();
        (uint256 word, uint256 effectiveAt) =
            _changePrice(_streamPrices[id], pricePerUnit, pricePerUnit >= _inForce(_streamPrices[id]));
        _streamPrices[id] = word;
        emit UsagePriceSet(id, pricePerUnit, effectiveAt);
    }

    /// @notice Close a stream. The payee closes at once. The payer's first call requests the
    /// close (settles, stops time accrual, lets usage reports apply until `closeAt`); its call
    /// from `closeAt` on closes: the rest of the balance is refunded to the payer. Works while
    /// paused, so a payer can always leave.
    function closeStream(uint256 id) external {
        Stream storage s = _streams[id];
        uint256 status = (s.hot >> STATUS_SHIFT) & 3;
        if (status == STATUS_NONE) revert UnknownStream(id);
        if (status == STATUS_CLOSED) revert StreamNotOpen(id);
        address payer = s.payer;
        bool byPayee = msg.sender == s.payee;
        if (!byPayee && msg.sender != payer) revert NotParty(id);
        if (!byPayee) {
            if (status == STATUS_OPEN && noticePeriod != 0) {
                _settleOne(id, s);
                uint256 closeAt = block.timestamp + noticePeriod;
                s.hot = (s.hot & ~((MASK_64 << RATE_SHIFT) | (uint256(3) << STATUS_SHIFT)))
                    | (STATUS_CLOSING << STATUS_SHIFT);
                s.closeAt = uint40(closeAt);
                emit StreamCloseRequested(id, closeAt);
                return;
            }
            if (status == STATUS_CLOSING && block.timestamp < s.closeAt) {
                revert CloseNotDue(id, s.closeAt);
            }
        }
        _settleOne(id, s);
        uint256 word = s.hot;
        uint256 refund = word & MASK_96;
        s.hot = (word & ~(MASK_96 | (uint256(3) << STATUS_SHIFT))) | (STATUS_CLOSED << STATUS_SHIFT);
        s.closeAt = 0;
        emit StreamClosed(id, refund);
        if (refund != 0) token.safeTransfer(payer, refund);
    }

    // ------------------------------------------------------------------ payee actions

    /// @notice Publish a new endpoint with its price per unit, in force at once. Returns its
    /// number in the caller's price list (1, 2, ...).
    function addEndpoint(bytes32 name, uint256 price) external whenNotPaused returns (uint256 endpoint) {
        if (name == bytes32(0)) revert EmptyName();
        if (price > MASK_96) revert PriceTooLarge();
        uint256 index = _indexOf(msg.sender);
        if (_endpointByName[index][name] != 0) revert EndpointExists(name);
        endpoint = ++_endpointCount[index];
        if (endpoint > MAX_ENDPOINTS) revert TooManyEndpoints();
        uint256 key = (index << 32) | endpoint;
        _endpointByName[index][name] = endpoint;
        _endpointNames[key] = name;
        _prices[key] = price | LISTED;
        emit EndpointAdded(msg.sender, endpoint, name, price);
    }

    /// @notice Change one of the caller's endpoint prices, in force from `now + noticePeriod`.
    function setEndpointPrice(uint256 endpoint, uint256 price) external whenNotPaused {
        if (price > MASK_96) revert PriceTooLarge();
        uint256 key = _endpointKey(msg.sender, endpoint);
        uint256 word = _prices[key];
        uint256 effectiveAt = (word >> 96) & MASK_40;
        uint256 inForce = word & MASK_96;
        if (effectiveAt != 0 && block.timestamp >= effectiveAt) inForce = _pendingPrices[key];
        word &= ~(MASK_96 | (MASK_40 << 96));
        if (noticePeriod == 0) {
            effectiveAt = block.timestamp;
            _prices[key] = word | price;
        } else {
            effectiveAt = block.timestamp + noticePeriod;
            _prices[key] = word | inForce | (effectiveAt << 96);
            _pendingPrices[key] = price;
        }
        emit EndpointPriceSet(msg.sender, endpoint, price, effectiveAt);
    }

    /// @notice Settle one stream and pay its payee everything credited to it (all streams).
    function withdrawAvailable(uint256 id) external whenNotPaused returns (uint256 amount) {
        Stream storage s = _streams[id];
        uint256 status = (s.hot >> STATUS_SHIFT) & 3;
        if (status == STATUS_NONE) revert UnknownStream(id);
        if (status == STATUS_CLOSED) revert StreamNotOpen(id);
        if (s.payee != msg.sender) revert NotPayee(id);
        _settleOne(id, s);
        amount = _claim(msg.sender);
    }

    /// @notice Pay the caller everything credited to it across all its streams.
    function claim() external whenNotPaused returns (uint256 amount) {
        amount = _claim(msg.sender);
    }

    // ------------------------------------------------------------------ keeper actions

    /// @notice Settle many streams. Unknown, closed, closing and already-settled ids are skipped
    /// with a SettleSkipped event; the batch never reverts because of one id. Permissionless:
    /// money only ever moves to payees.
    function settleStreams(uint256[] calldata ids) external whenNotPaused returns (uint256 settled) {
        uint256 bps = feeBps;
        uint256 totalFee;
        bytes32 settledTopic = StreamSettled.selector;
        bytes32 skippedTopic = SettleSkipped.selector;
        // The hottest path of the system, written in Yul to keep the per-stream overhead around
        // the storage accesses small. Per id, exactly as the Solidity of _settleOne would do:
        //   word = hot slot; if status != OPEN -> SettleSkipped(id, UNKNOWN | CLOSED)
        //   due = min(balance, rate * (now - settledAt)); if due == 0 -> SettleSkipped(NOTHING_DUE)
        //   balance -= due; settledAt = now (one SSTORE)
        //   fee from the payee's ledger remainder; credit due - fee to the payee, loading and
        //   storing its ledger once per run of one payee
        //   emit StreamSettled(id, due, fee, balance)
        // No overflow is possible: rate < 2^64 and elapsed < 2^36; credits are bounded by the
        // tokens this contract holds. Block timestamps only grow and stay below 2^36 (the
        // settledAt field) until the year 4147, so neither the subtraction nor the shift into
        // settledAt needs a guard.
        assembly ("memory-safe") {
            let buf := mload(0x40) // scratch for event data; never allocated
            let curIndex := 0
            let ledgerSlot := 0
            let amount := 0
            let rem := 0
            let end := add(ids.offset, shl(5, ids.length))
            for { let p := ids.offset } lt(p, end) { p := add(p, 0x20) } {
                let id := calldataload(p)
                mstore(0x00, id)
                mstore(0x20, _streams.slot)
                let slot := keccak256(0x00, 0x40)
                let word := sload(slot)
                let status := and(shr(STATUS_SHIFT, word), 3)
                if iszero(eq(status, 1)) {
                    // 0 (never opened) -> SKIP_UNKNOWN = 1; 2, 3 (closed, closing) -> SKIP_CLOSED = 2
                    mstore(buf, add(1, iszero(iszero(status))))
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                let bal := and(word, MASK_96)
                let due := mul(
                    and(shr(RATE_SHIFT, word), MASK_64),
                    sub(timestamp(), and(shr(SETTLED_SHIFT, word), MASK_36))
                )
                if gt(due, bal) { due := bal }
                if iszero(due) {
                    mstore(buf, 3) // SKIP_NOTHING_DUE
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                bal := sub(bal, due)
                // keep rate, usageSeq, payee, status and flags; rewrite bal and settledAt
                sstore(slot, or(or(and(word, KEEP_ON_SETTLE), bal), shl(SETTLED_SHIFT, timestamp())))
                let index := and(shr(PAYEE_SHIFT, word), MASK_24)
                if iszero(eq(index, curIndex)) {
                    if curIndex { sstore(ledgerSlot, or(shl(240, rem), amount)) }
                    curIndex := index
                    mstore(0x00, index)
                    mstore(0x20, _ledger.slot)
                    ledgerSlot := keccak256(0x00, 0x40)
                    let l := sload(ledgerSlot)
                    rem := shr(240, l)
                    amount := and(l, MASK_240)
                }
                let t := add(rem, mul(due, bps))
                let fee := div(t, 10000)
                rem := mod(t, 10000)
                amount := add(amount, sub(due, fee))
                totalFee := add(totalFee, fee)
                settled := add(settled, 1)
                mstore(buf, id)
                mstore(add(buf, 0x20), due)
                mstore(add(buf, 0x40), fee)
                mstore(add(buf, 0x60), bal)
                log1(buf, 0x80, settledTopic)
            }
            if curIndex { sstore(ledgerSlot, or(shl(240, rem), amount)) }
        }
        _creditFees(totalFee);
    }

    /// @notice Charge usage reports, each packed in one word:
    /// `streamId | seq << 64 | endpoint << 96 | units << 128` (bits 192 and up are ignored).
    /// A report applies only when seq == last applied + 1 (exactly once); replays, gaps,
    /// unknown or closed streams (and closing ones from their closeAt), zero units and, on a
    /// price-list stream, an endpoint the payee does not list are skipped with UsageSkipped.
    /// The charge is units times the price in force now (the stream's own price, or the
    /// payee's price of the endpoint); a report costing more than the balance charges what is
    /// left and the event shows the shortfall. Not paused: usage already delivered is billable.
    function recordUsage(uint256[] calldata reports)
        external
        onlyRole(ORACLE_ROLE)
        returns (uint256 recorded)
    {
        uint256 bps = feeBps;
        uint256 totalFee;
        bytes32 recordedTopic = UsageRecorded.selector;
        bytes32 skippedTopic = UsageSkipped.selector;
        // Per report, in Yul for the same reason as settleStreams: one read and one write of the
        // stream's hot slot and one of the price entry, which on a price list also takes the
        // payee's credit (warm after the first report of a payee's endpoint). Own-price streams
        // credit the payee's ledger, loaded and stored once per run of one payee.
        // units < 2^64 and price < 2^96: the cost cannot overflow. An endpoint's credit holds
        // 105 bits: more than 10^31 base units, which no token's supply comes near.
        assembly ("memory-safe") {
            // The payee run: its index, ledger slot and ledger word (amount | remainder << 240).
            let curIndex := 0
            let ledgerSlot := 0
            let ledger := 0
            let end := add(reports.offset, shl(5, reports.length))
            for { let p := reports.offset } lt(p, end) { p := add(p, 0x20) } {
                let report := and(calldataload(p), MASK_192)
                mstore(0x00, and(report, MASK_64))
                mstore(0x20, _streams.slot)
                let slot := keccak256(0x00, 0x40)
                let word := sload(slot)
                let seq := and(shr(64, report), MASK_32)
                let last := and(shr(SEQ_SHIFT, word), MASK_32)
                // 0 (never opened) -> SKIP_UNKNOWN; 2 (closed) -> SKIP_CLOSED; 3 (closing) ->
                // SKIP_CLOSED from closeAt (slot 1, above the payee)
                let reason := 0
                switch and(shr(STATUS_SHIFT, word), 3)
                case 0 { reason := 1 }
                case 2 { reason := 2 }
                case 3 {
                    if iszero(lt(timestamp(), and(shr(160, sload(add(slot, 1))), MASK_40))) {
                        reason := 2
                    }
                }
                if iszero(reason) {
                    if iszero(gt(seq, last)) { reason := 4 }
                }
                if iszero(reason) {
                    if iszero(eq(seq, add(last, 1))) { reason := 5 }
                }
                if iszero(or(reason, shr(128, report))) { reason := 6 }
                // The price entry: the payee's for the endpoint, or the stream's own.
                let priceSlot := 0
                let priceWord := 0
                let own := and(word, OWN_PRICE)
                if iszero(reason) {
                    switch own
                    case 0 {
                        mstore(0x00, or(shl(32, and(shr(PAYEE_SHIFT, word), MASK_24)), and(shr(96, report), MASK_32)))
                        mstore(0x20, _prices.slot)
                        priceSlot := keccak256(0x00, 0x40)
                        priceWord := sload(priceSlot)
                        if iszero(shr(255, priceWord)) { reason := 7 }
                    }
                    default {
                        // (0x00 still holds the stream id)
                        mstore(0x20, _streamPrices.slot)
                        priceWord := sload(keccak256(0x00, 0x40))
                    }
                }
                if reason {
                    let b := mload(0x40)
                    mstore(b, seq)
                    mstore(add(b, 0x20), last)
                    mstore(add(b, 0x40), reason)
                    log2(b, 0x60, skippedTopic, and(report, MASK_64))
                    continue
                }
                // The price in force: a pending one from its effectiveAt on.
                let price := and(priceWord, MASK_96)
                switch own
                case 0 {
                    let effectiveAt := and(shr(96, priceWord), MASK_40)
                    if effectiveAt {
                        if iszero(lt(timestamp(), effectiveAt)) {
                            // fold the pending price in (written back with the credit below)
                            mstore(0x00, or(shl(32, and(shr(PAYEE_SHIFT, word), MASK_24)), and(shr(96, report), MASK_32)))
                            mstore(0x20, _pendingPrices.slot)
                            price := sload(keccak256(0x00, 0x40))
                            priceWord := or(and(priceWord, KEEP_ON_FOLD), price)
                        }
                    }
                }
                default {
                    let effectiveAt := and(shr(192, priceWord), MASK_40)
                    if effectiveAt {
                        if iszero(lt(timestamp(), effectiveAt)) { price := and(shr(96, priceWord), MASK_96) }
                    }
                }
                let charged := mul(shr(128, report), price)
                let bal := and(word, MASK_96)
                if gt(charged, bal) { charged := bal }
                bal := sub(bal, charged)
                sstore(slot, or(or(and(word, KEEP_ON_USAGE), bal), shl(SEQ_SHIFT, seq)))
                let fee := 0
                switch own
                case 0 {
                    // credit the endpoint's entry, with its own fee remainder
                    let t := add(and(shr(136, priceWord), MASK_14), mul(charged, bps))
                    fee := div(t, 10000)
                    sstore(
                        priceSlot,
                        or(
                            and(priceWord, KEEP_ON_CREDIT),
                            or(
                                shl(136, mod(t, 10000)),
                                shl(150, add(and(shr(150, priceWord), MASK_105), sub(charged, fee)))
                            )
                        )
                    )
                }
                default {
                    // credit the payee's ledger, loaded and stored once per run of one payee
                    let index := and(shr(PAYEE_SHIFT, word), MASK_24)
                    if iszero(eq(index, curIndex)) {
                        if curIndex { sstore(ledgerSlot, ledger) }
                        curIndex := index
                        mstore(0x00, index)
                        mstore(0x20, _ledger.slot)
                        ledgerSlot := keccak256(0x00, 0x40)
                        ledger := sload(ledgerSlot)
                    }
                    let t := add(shr(240, ledger), mul(charged, bps))
                    fee := div(t, 10000)
                    ledger := or(shl(240, mod(t, 10000)), add(and(ledger, MASK_240), sub(charged, fee)))
                }
                totalFee := add(totalFee, fee)
                recorded := add(recorded, 1)
                let b := mload(0x40)
                mstore(b, report)
                mstore(add(b, 0x20), or(charged, shl(96, fee)))
                mstore(add(b, 0x40), or(bal, shl(96, price)))
                log1(b, 0x60, recordedTopic)
            }
            if curIndex { sstore(ledgerSlot, ledger) }
        }
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
        _feeRecipientIndex = uint24(_indexOf(recipient));
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
    function accruedOf(uint256 id) public view returns (uint256) {
        uint256 word = _streams[id].hot;
        if ((word >> STATUS_SHIFT) & 3 != STATUS_OPEN) return 0;
        uint256 balance = word & MASK_96;
        uint256 due = ((word >> RATE_SHIFT) & MASK_64)
            * (block.timestamp - ((word >> SETTLED_SHIFT) & MASK_36));
        return due > balance ? balance : due;
    }

    /// @notice The whole stored state of a stream (status: 0 unknown, 1 open, 2 closed,
    /// 3 closing). `pricePerUnit` is the stream's own price in force now (0 on a price list).
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
        uint256 word = s.hot;
        return (
            s.payer,
            s.payee,
            word & MASK_96,
            (word >> RATE_SHIFT) & MASK_64,
            (word >> SETTLED_SHIFT) & MASK_36,
            (word >> SEQ_SHIFT) & MASK_32,
            word & OWN_PRICE != 0 ? _inForce(_streamPrices[id]) : 0,
            uint8((word >> STATUS_SHIFT) & 3)
        );
    }

    /// @notice Whether the stream is billed at its payee's price list.
    function onPriceList(uint256 id) external view returns (bool) {
        uint256 word = _streams[id].hot;
        return (word >> STATUS_SHIFT) & 3 != STATUS_NONE && word & OWN_PRICE == 0;
    }

    /// @notice When a closing stream stops taking usage and may be closed (0 unless closing).
    function closeAtOf(uint256 id) external view returns (uint256) {
        return _streams[id].closeAt;
    }

    /// @notice Amount `account` can claim (its ledger and its endpoints' usage credit).
    function credited(address account) external view returns (uint256 amount) {
        uint256 index = payeeIndexOf[account];
        amount = _ledger[index] & MASK_240;
        uint256 count = _endpointCount[index];
        for (uint256 e = 1; e <= count; ++e) {
            amount += (_prices[(index << 32) | e] >> 150) & MASK_105;
        }
    }

    /// @notice The ledger of `account`: what settlements and own-price usage credited it, and
    /// the remainder their next fee division starts from.
    function ledgerOf(address account) external view returns (uint256 amount, uint256 feeRemainder) {
        uint256 l = _ledger[payeeIndexOf[account]];
        return (l & MASK_240, l >> 240);
    }

    /// @notice What usage of one of `payee`'s endpoints credited it (not claimed yet), and the
    /// remainder the endpoint's next fee division starts from.
    function endpointCredit(address payee, uint256 endpoint)
        external
        view
        returns (uint256 credit, uint256 feeRemainder)
    {
        uint256 index = payeeIndexOf[payee];
        if (index == 0 || endpoint > MASK_32) return (0, 0);
        uint256 word = _prices[(index << 32) | endpoint];
        return ((word >> 150) & MASK_105, (word >> 136) & MASK_14);
    }

    /// @notice How many endpoints `payee` has published (they are numbered 1..count).
    function endpointCount(address payee) external view returns (uint256) {
        return _endpointCount[payeeIndexOf[payee]];
    }

    /// @notice One entry of a payee's price list: the price, a pending price in force from
    /// `effectiveAt` (0: none), whether it exists, and its name.
    function endpointPrice(address payee, uint256 endpoint)
        external
        view
        returns (uint256 price, uint256 pending, uint256 effectiveAt, bool listed, bytes32 name)
    {
        uint256 index = payeeIndexOf[payee];
        if (index == 0 || endpoint > MASK_32) return (0, 0, 0, false, bytes32(0));
        uint256 key = (index << 32) | endpoint;
        uint256 word = _prices[key];
        effectiveAt = (word >> 96) & MASK_40;
        return (
            word & MASK_96,
            effectiveAt != 0 ? _pendingPrices[key] : 0,
            effectiveAt,
            word & LISTED != 0,
            _endpointNames[key]
        );
    }

    /// @notice A stream's own price, a pending price and when it is in force (0: none pending).
    function streamPrice(uint256 id)
        external
        view
        returns (uint256 price, uint256 pending, uint256 effectiveAt)
    {
        uint256 word = _streamPrices[id];
        return (word & MASK_96, (word >> 96) & MASK_96, (word >> 192) & MASK_40);
    }

    /// @notice The price a report of `endpoint` on stream `id` would be charged now; `known` is
    /// false for an unknown stream or an endpoint the payee of a price-list stream does not list.
    function priceInForce(uint256 id, uint256 endpoint) public view returns (uint256 price, bool known) {
        uint256 word = _streams[id].hot;
        if ((word >> STATUS_SHIFT) & 3 == STATUS_NONE) return (0, false);
        if (word & OWN_PRICE != 0) return (_inForce(_streamPrices[id]), true);
        if (endpoint > MASK_32) return (0, false);
        uint256 key = (((word >> PAYEE_SHIFT) & MASK_24) << 32) | endpoint;
        uint256 entry = _prices[key];
        if (entry & LISTED == 0) return (0, false);
        uint256 effectiveAt = (entry >> 96) & MASK_40;
        if (effectiveAt != 0 && block.timestamp >= effectiveAt) return (_pendingPrices[key], true);
        return (entry & MASK_96, true);
    }

    /// @notice What `units` of `endpoint` would cost on stream `id` now.
    function estimateCost(uint256 id, uint256 endpoint, uint256 units) public view returns (uint256) {
        (uint256 price, bool known) = priceInForce(id, endpoint);
        if (!known) revert UnknownEndpoint(_streams[id].payee, endpoint);
        return units * price;
    }

    /// @notice Whether the stream's balance, after settling what has accrued, covers `units` of
    /// `endpoint` now.
    function canAffordUsage(uint256 id, uint256 endpoint, uint256 units) external view returns (bool) {
        uint256 cost = estimateCost(id, endpoint, units);
        return (_streams[id].hot & MASK_96) - accruedOf(id) >= cost;
    }

    // ------------------------------------------------------------------ internals

    uint256 internal constant RATE_SHIFT = 96;
    uint256 internal constant SETTLED_SHIFT = 160;
    uint256 internal constant SEQ_SHIFT = 196;
    uint256 internal constant PAYEE_SHIFT = 228;
    uint256 internal constant STATUS_SHIFT = 252;
    uint256 internal constant OWN_PRICE = 0x4000000000000000000000000000000000000000000000000000000000000000;
    uint256 internal constant LISTED = 0x8000000000000000000000000000000000000000000000000000000000000000;
    uint256 internal constant MASK_24 = 0xffffff;
    uint256 internal constant MASK_32 = 0xffffffff;
    uint256 internal constant MASK_36 = 0xfffffffff;
    uint256 internal constant MASK_40 = 0xffffffffff;
    uint256 internal constant MASK_64 = 0xffffffffffffffff;
    uint256 internal constant MASK_96 = 0xffffffffffffffffffffffff;
    uint256 internal constant MASK_192 = 0xffffffffffffffffffffffffffffffffffffffffffffffff;
    uint256 internal constant MASK_14 = 0x3fff;
    uint256 internal constant MASK_105 = 0x1ffffffffffffffffffffffffff;
    uint256 internal constant MASK_240 = 0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff;
    /// Settlement rewrites balance and settledAt and keeps everything else.
    uint256 internal constant KEEP_ON_SETTLE = 0xfffffffffffffff000000000ffffffffffffffff000000000000000000000000;
    /// Folding a pending endpoint price in rewrites price and effectiveAt.
    uint256 internal constant KEEP_ON_FOLD = 0xffffffffffffffffffffffffffffff0000000000000000000000000000000000;
    /// Crediting an endpoint entry rewrites its fee remainder and credit.
    uint256 internal constant KEEP_ON_CREDIT = 0x800000000000000000000000000000ffffffffffffffffffffffffffffffffff;
    /// Usage rewrites balance and usageSeq and keeps everything else.
    uint256 internal constant KEEP_ON_USAGE = 0xfffffff00000000fffffffffffffffffffffffff000000000000000000000000;

    function _open(address payee, uint256 rate, uint256 deposit, bool ownPrice) internal returns (uint256 id) {
        // Money credited to this contract's own address could never be claimed.
        if (payee == address(0) || payee == address(this)) revert ZeroAddress();
        if (rate > MASK_64) revert RateTooLarge();
        if (deposit > MASK_96) revert AmountTooLarge();
        uint256 index = _indexOf(payee);
        id = nextStreamId++;
        Stream storage s = _streams[id];
        s.hot = deposit | (rate << RATE_SHIFT) | (block.timestamp << SETTLED_SHIFT) | (index << PAYEE_SHIFT)
            | (STATUS_OPEN << STATUS_SHIFT) | (ownPrice ? OWN_PRICE : 0);
        s.payee = payee;
        s.payer = msg.sender;
        emit StreamOpened(id, msg.sender, payee, rate, deposit, !ownPrice);
        if (deposit != 0) token.safeTransferFrom(msg.sender, address(this), deposit);
    }

    /// The ledger index of `account`, given on first sight.
    function _indexOf(address account) internal returns (uint256 index) {
        index = payeeIndexOf[account];
        if (index == 0) {
            index = ++payeeCount;
            if (index > MAX_PAYEES) revert TooManyPayees();
            payeeIndexOf[account] = index;
        }
    }

    function _endpointKey(address payee, uint256 endpoint) internal view returns (uint256 key) {
        uint256 index = payeeIndexOf[payee];
        if (index == 0 || endpoint == 0 || endpoint > MASK_32) revert UnknownEndpoint(payee, endpoint);
        key = (index << 32) | endpoint;
        if (_prices[key] & LISTED == 0) revert UnknownEndpoint(payee, endpoint);
    }

    /// The price in force now of a price word.
    function _inForce(uint256 word) internal view returns (uint256) {
        uint256 effectiveAt = (word >> 192) & MASK_40;
        if (effectiveAt != 0 && block.timestamp >= effectiveAt) return (word >> 96) & MASK_96;
        return word & MASK_96;
    }

    /// A price word with `price` set: in force at once when `now_` (or the notice period is 0),
    /// else pending from now + noticePeriod. A pending change that has come into force is folded
    /// in first; a new change replaces a pending one. Keeps the listed bit.
    function _changePrice(uint256 word, uint256 price, bool now_)
        internal
        view
        returns (uint256 updated, uint256 effectiveAt)
    {
        uint256 inForce = _inForce(word);
        uint256 listed = word & LISTED;
        if (now_ || noticePeriod == 0) return (listed | price, block.timestamp);
        effectiveAt = block.timestamp + noticePeriod;
        updated = listed | inForce | (price << 96) | (effectiveAt << 192);
    }

    function _openStream(uint256 id) internal view returns (Stream storage s) {
        s = _streams[id];
        uint256 status = (s.hot >> STATUS_SHIFT) & 3;
        if (status == STATUS_NONE) revert UnknownStream(id);
        if (status != STATUS_OPEN) revert StreamNotOpen(id);
    }

    /// Settle one open or closing stream, always moving settledAt to now (even when nothing is
    /// due, so a depleted stream that is topped up accrues from the top-up, not from its
    /// depletion).
    function _settleOne(uint256 id, Stream storage s) internal {
        uint256 word = s.hot;
        uint256 balance = word & MASK_96;
        uint256 due = ((word >> RATE_SHIFT) & MASK_64) * (block.timestamp - ((word >> SETTLED_SHIFT) & MASK_36));
        if (due > balance) due = balance;
        balance -= due;
        s.hot = (word & KEEP_ON_SETTLE) | balance | (block.timestamp << SETTLED_SHIFT);
        uint256 fee;
        if (due != 0) {
            uint256 index = (word >> PAYEE_SHIFT) & MASK_24;
            uint256 l = _ledger[index];
            uint256 t = (l >> 240) + due * feeBps;
            fee = t / 10_000;
            _ledger[index] = ((t % 10_000) << 240) | ((l & MASK_240) + due - fee);
        }
        _creditFees(fee);
        emit StreamSettled(id, due, fee, balance);
    }

    function _creditFees(uint256 amount) internal {
        if (amount == 0) return;
        _ledger[_feeRecipientIndex] += amount;
        emit FeesCredited(feeRecipient, amount);
    }

    function _claim(address payee) internal returns (uint256 amount) {
        uint256 index = payeeIndexOf[payee];
        if (index == 0) revert NothingToClaim();
        uint256 l = _ledger[index];
        amount = l & MASK_240;
        if (amount != 0) _ledger[index] = l & ~MASK_240;
        uint256 count = _endpointCount[index];
        for (uint256 e = 1; e <= count; ++e) {
            uint256 key = (index << 32) | e;
            uint256 word = _prices[key];
            uint256 credit = (word >> 150) & MASK_105;
            if (credit != 0) {
                amount += credit;
                _prices[key] = word & ~(MASK_105 << 150);
            }
        }
        if (amount == 0) revert NothingToClaim();
        emit Claimed(payee, amount);
        token.safeTransfer(payee, amount);
    }
}
