// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title EscrowVault
/// @notice Deposits, withdrawals and escrows in one ERC-20 token. A payer locks part of its
/// deposit for a payee until a deadline; the payer releases it to the payee, or once the deadline
/// has passed anyone may refund it to the payer (in batches, by `refundExpired`). The admin
/// ("owner") may refund an open escrow at any time, as the arbiter of disputes.
///
/// Released and refunded amounts are credited to the receiver's deposit balance, withdrawn with
/// `withdraw`.
contract EscrowVault is AccessControl, Pausable {
    using SafeERC20 for IERC20;

    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint256 public constant DEFAULT_TIMEOUT = 7 days;
    uint256 public constant MAX_TIMEOUT = 3650 days;

    /// Status reported by getEscrow.
    uint8 public constant STATUS_NONE = 0;
    uint8 public constant STATUS_OPEN = 1;
    uint8 public constant STATUS_RELEASED = 2;
    uint8 public constant STATUS_REFUNDED = 3;

    /// Reasons carried by RefundSkipped.
    uint8 public constant SKIP_UNKNOWN = 1;
    uint8 public constant SKIP_NOT_OPEN = 2;
    uint8 public constant SKIP_NOT_EXPIRED = 3;

    uint8 internal constant HELD_OPEN = 1;
    uint8 internal constant HELD_RELEASED = 2;

    /// One escrow in two slots. A refund clears the first slot entirely: the storage refund
    /// for zeroing it pays for a good part of the refund, which is the batched, keeper-driven
    /// path. "Refunded" is then read as: first slot empty, second slot (payee) present.
    struct Escrow {
        // slot 0: cleared on refund
        address payer;
        uint88 amount;
        uint8 held; // HELD_OPEN or HELD_RELEASED
        // slot 1: kept
        address payee;
        uint40 expiresAt;
    }

    /// A depositor's balance. `active` is set on first use and never cleared, so the slot stays
    /// non-zero: crediting an account later (a refund, a release) costs 2,900 gas, not 20,000.
    struct Account {
        uint128 available;
        uint120 locked; // in open escrows
        bool active;
    }

    IERC20 public immutable token;
    uint256 public nextEscrowId = 1;

    mapping(uint256 => Escrow) internal _escrows;
    mapping(address => Account) internal _accounts;

    event Deposited(address indexed account, uint256 amount, uint256 availableAfter);
    event Withdrawn(address indexed account, uint256 amount, uint256 availableAfter);
    event EscrowCreated(
        uint256 indexed id,
        address indexed payer,
        address indexed payee,
        uint256 amount,
        uint256 expiresAt,
        uint256 payerAvailableAfter
    );
    event EscrowReleased(uint256 indexed id, address indexed payee, uint256 amount, uint256 payeeAvailableAfter);
    /// Emitted by the batched refund path, so its fields are data, not topics: a topic costs
    /// 375 gas, a data word 256, and the keeper reads every log of the contract anyway.
    event EscrowRefunded(uint256 id, address payer, uint256 amount, uint256 payerAvailableAfter);
    event RefundSkipped(uint256 indexed id, uint8 reason);

    error ZeroAddress();
    error ZeroAmount();
    error AmountTooLarge();
    error TimeoutTooLong();
    error InsufficientBalance(uint256 available, uint256 needed);
    error UnknownEscrow(uint256 id);
    error EscrowNotOpen(uint256 id);
    error NotPayer(uint256 id);
    error NotExpired(uint256 id, uint256 expiresAt);

    constructor(IERC20 token_, address admin) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    // ------------------------------------------------------------------ deposits

    function deposit(uint256 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender];
        uint256 available = uint256(a.available) + amount;
        if (available > type(uint128).max) revert AmountTooLarge();
        a.available = uint128(available);
        a.active = true;
        emit Deposited(msg.sender, amount, available);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    function withdraw(uint256 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender];
        uint256 available = a.available;
        if (amount > available) revert InsufficientBalance(available, amount);
        unchecked {
            available -= amount;
        }
        a.available = uint128(available);
        emit Withdrawn(msg.sender, amount, available);
        token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------ escrows

    /// @notice Lock `amount` of the caller's deposit for `payee` for `timeout` seconds
    /// (0 means DEFAULT_TIMEOUT).
    function createEscrow(address payee, uint256 amount, uint256 timeout)
        external
        whenNotPaused
        returns (uint256 id)
    {
        // An escrow released to this contract's own address could never be withdrawn.
        if (payee == address(0) || payee == address(this)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint88).max) revert AmountTooLarge();
        if (timeout == 0) timeout = DEFAULT_TIMEOUT;
        if (timeout > MAX_TIMEOUT) revert TimeoutTooLong();
        Account storage a = _accounts[msg.sender];
        uint256 available = a.available;
        if (amount > available) revert InsufficientBalance(available, amount);
        unchecked {
            available -= amount;
        }
        a.available = uint128(available);
        a.locked += uint120(amount);
        uint256 expiresAt = block.timestamp + timeout;
        id = nextEscrowId++;
        _escrows[id] = Escrow({
            payer: msg.sender,
            amount: uint88(amount),
            held: HELD_OPEN,
            payee: payee,
            expiresAt: uint40(expiresAt)
        });
        emit EscrowCreated(id, msg.sender, payee, amount, expiresAt, available);
    }

    /// @notice The payer hands the escrowed amount to the payee.
    function releaseEscrow(uint256 id) external whenNotPaused {
        Escrow storage e = _escrows[id];
        _requireOpen(id, e);
        if (e.payer != msg.sender) revert NotPayer(id);
        uint256 amount = e.amount;
        address payee = e.payee;
        e.held = HELD_RELEASED;
        _accounts[msg.sender].locked -= uint120(amount);
        Account storage p = _accounts[payee];
        uint256 available = uint256(p.available) + amount;
        if (available > type(uint128).max) revert AmountTooLarge();
        p.available = uint128(available);
        p.active = true;
        emit EscrowReleased(id, payee, amount, available);
    }

    /// @notice Refund one escrow to its payer: by the payer once expired, by the admin any time.
    function refundEscrow(uint256 id) external whenNotPaused {
        Escrow storage e = _escrows[id];
        _requireOpen(id, e);
        if (!hasRole(DEFAULT_ADMIN_ROLE, msg.sender)) {
            if (e.payer != msg.sender) revert NotPayer(id);
            uint256 expiresAt = e.expiresAt;
            if (block.timestamp < expiresAt) revert NotExpired(id, expiresAt);
        }
        _refund(id, e);
    }

    /// @notice Refund every listed escrow whose deadline has passed. Permissionless. Ids that
    /// are unknown, no longer open or not yet expired are skipped with RefundSkipped.
    function refundExpired(uint256[] calldata ids) external whenNotPaused returns (uint256 refunded) {
        bytes32 refundedTopic = EscrowRefunded.selector;
        bytes32 skippedTopic = RefundSkipped.selector;
        bytes4 tooLarge = AmountTooLarge.selector;
        // The keeper's batch path, in Yul to keep the per-escrow overhead small. Per id, as
        // refundEscrow's _refund would do in Solidity:
        //   not open -> RefundSkipped(id, UNKNOWN | NOT_OPEN); now < expiresAt -> NOT_EXPIRED
        //   clear the escrow's first slot (refunded); payer.available += amount;
        //   payer.locked -= amount (one SSTORE); emit EscrowRefunded(id, payer, amount, available)
        assembly ("memory-safe") {
            let buf := mload(0x40) // scratch for event data; never allocated
            let end := add(ids.offset, shl(5, ids.length))
            for { let p := ids.offset } lt(p, end) { p := add(p, 0x20) } {
                let id := calldataload(p)
                mstore(0x00, id)
                mstore(0x20, _escrows.slot)
                let slot := keccak256(0x00, 0x40)
                let w := sload(slot)
                let second := sload(add(slot, 1))
                if iszero(eq(shr(248, w), 1)) {
                    // SKIP_UNKNOWN = 1 when no payee was ever written, else SKIP_NOT_OPEN = 2
                    mstore(buf, add(1, iszero(iszero(and(second, 0xffffffffffffffffffffffffffffffffffffffff)))))
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                if lt(timestamp(), and(shr(160, second), 0xffffffffff)) {
                    mstore(buf, 3) // SKIP_NOT_EXPIRED
                    log2(buf, 0x20, skippedTopic, id)
                    continue
                }
                sstore(slot, 0)
                let payer := and(w, 0xffffffffffffffffffffffffffffffffffffffff)
                let amount := and(shr(160, w), 0xffffffffffffffffffffff)
                mstore(0x00, payer)
                mstore(0x20, _accounts.slot)
                let aslot := keccak256(0x00, 0x40)
                let a := sload(aslot)
                let avail := add(and(a, 0xffffffffffffffffffffffffffffffff), amount)
                if gt(avail, 0xffffffffffffffffffffffffffffffff) {
                    mstore(0x00, tooLarge) // bytes4 values sit in the high-order bytes
                    revert(0x00, 0x04)
                }
                // locked (bits 128..247) >= amount, so subtracting amount << 128 cannot borrow.
                a := sub(a, shl(128, amount))
                sstore(aslot, or(and(a, not(0xffffffffffffffffffffffffffffffff)), avail))
                refunded := add(refunded, 1)
                mstore(buf, id)
                mstore(add(buf, 0x20), payer)
                mstore(add(buf, 0x40), amount)
                mstore(add(buf, 0x60), avail)
                log1(buf, 0x80, refundedTopic)
            }
        }
    }

    // ------------------------------------------------------------------ admin

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // ------------------------------------------------------------------ views

    function getEscrow(uint256 id)
        external
        view
        returns (address payer, address payee, uint256 amount, uint256 expiresAt, uint8 status)
    {
        Escrow storage e = _escrows[id];
        payee = e.payee;
        expiresAt = e.expiresAt;
        if (e.held == HELD_OPEN) {
            return (e.payer, payee, e.amount, expiresAt, STATUS_OPEN);
        }
        if (e.held == HELD_RELEASED) {
            return (e.payer, payee, e.amount, expiresAt, STATUS_RELEASED);
        }
        if (payee != address(0)) return (address(0), payee, 0, expiresAt, STATUS_REFUNDED);
        return (address(0), address(0), 0, 0, STATUS_NONE);
    }

    function balanceOf(address account) external view returns (uint256 available, uint256 locked) {
        Account storage a = _accounts[account];
        return (a.available, a.locked);
    }

    // ------------------------------------------------------------------ internals

    function _requireOpen(uint256 id, Escrow storage e) internal view {
        if (e.held != HELD_OPEN) {
            if (e.payee == address(0)) revert UnknownEscrow(id);
            revert EscrowNotOpen(id);
        }
    }

    function _refund(uint256 id, Escrow storage e) internal {
        address payer = e.payer;
        uint256 amount = e.amount;
        // Clearing the slot marks the escrow refunded and earns the storage refund.
        e.payer = address(0);
        e.amount = 0;
        e.held = 0;
        Account storage a = _accounts[payer];
        uint256 available = uint256(a.available) + amount;
        if (available > type(uint128).max) revert AmountTooLarge();
        unchecked {
            a.locked -= uint120(amount); // this escrow's amount is part of `locked`
        }
        a.available = uint128(available);
        emit EscrowRefunded(id, payer, amount, available);
    }
}
