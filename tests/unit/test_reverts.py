"""Revert data is found in every shape nodes answer a reverted eth_call with, and decoded.

Each shape is tried with three real payloads: `Error(string)`, a custom error of the keeper's
contracts and `Panic(uint256)`; the error goes through `classify_error`, as a node's answer does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils import keccak

from keeper.chain.reverts import revert_data, revert_reason
from keeper.chain.rpc import RpcResponseError, classify_error

ERROR_STRING = bytes.fromhex("08c379a0") + encode(["string"], ["EnforcedPause: paused"])
CUSTOM = keccak(text="InsufficientBalance(uint256,uint256)")[:4] + encode(
    ["uint256", "uint256"], [500, 1_000_000]
)
PANIC = bytes.fromhex("4e487b71") + encode(["uint256"], [0x11])
PAYLOADS = {
    "error_string": (ERROR_STRING, "EnforcedPause: paused"),
    "custom_error": (CUSTOM, "InsufficientBalance(500, 1000000)"),
    "panic": (PANIC, "Panic(0x11: arithmetic overflow or underflow)"),
}
TX_HASH = "0x" + "5b" * 32


def found(error: dict[str, Any]) -> bytes | None:
    """The revert data of `error`, checked to be what the RPC layer attaches too."""
    data = revert_data(error)
    err = classify_error("eth_call", error)
    assert isinstance(err, RpcResponseError)
    assert err.data == data
    return data


def check(shape: Callable[[str], dict[str, Any]], payload: str) -> None:
    data, reason = PAYLOADS[payload]
    assert found(shape("0x" + data.hex())) == data
    assert revert_reason(data) == reason


each_payload = pytest.mark.parametrize("payload", sorted(PAYLOADS))


@each_payload
def test_data_as_a_hex_string_geth_and_anvil(payload: str) -> None:
    check(lambda h: {"code": 3, "message": "execution reverted", "data": h}, payload)


@each_payload
def test_data_nested_in_data_hardhat_and_edr(payload: str) -> None:
    check(
        lambda h: {
            "code": -32603,
            "message": "Error: VM Exception while processing transaction: reverted with "
            "reason string 'EnforcedPause: paused'",
            "data": {"message": "VM Exception while processing transaction", "data": h},
        },
        payload,
    )


@each_payload
def test_data_result_ganache_7(payload: str) -> None:
    check(
        lambda h: {
            "code": -32000,
            "message": "VM Exception while processing transaction: revert",
            "data": {
                "hash": None,
                "programCounter": 1702,
                "result": h,
                "reason": None,
                "message": "revert",
            },
        },
        payload,
    )


@each_payload
def test_data_keyed_by_transaction_hash_old_ganache(payload: str) -> None:
    check(
        lambda h: {
            "code": -32000,
            "message": "VM Exception while processing transaction: revert",
            "data": {
                TX_HASH: {"error": "revert", "program_counter": 1702, "return": h},
                "stack": "RuntimeError: VM Exception while processing transaction: revert\n"
                "    at Function.RuntimeError.fromResults (runtime.js:94:13)",
                "name": "RuntimeError",
            },
        },
        payload,
    )


@each_payload
def test_hex_in_the_message_execution_reverted(payload: str) -> None:
    check(lambda h: {"code": -32000, "message": f"execution reverted: {h}"}, payload)


@each_payload
def test_hex_in_the_message_reverted_with_data(payload: str) -> None:
    check(
        lambda h: {"code": -32015, "message": f"VM execution error: reverted with data {h}"},
        payload,
    )


@each_payload
def test_hex_in_the_message_hardhat_unrecognized_custom_error(payload: str) -> None:
    check(
        lambda h: {
            "code": -32603,
            "message": "Error: VM Exception while processing transaction: reverted with an "
            f"unrecognized custom error (return data: {h})",
        },
        payload,
    )


@each_payload
def test_textual_data_nethermind_reverted(payload: str) -> None:
    check(
        lambda h: {"code": -32015, "message": "VM execution error.", "data": f"Reverted {h}"},
        payload,
    )


def test_empty_revert_data_in_text() -> None:
    error = {"code": -32015, "message": "VM execution error.", "data": "Reverted 0x"}
    assert found(error) == b""
    assert revert_reason(b"") == "reverted without a reason"


@pytest.mark.parametrize(
    "error",
    [
        {"code": -32000, "message": "execution reverted"},
        {"code": -32000, "message": "execution reverted: EnforcedPause: paused"},
        {
            "code": -32000,
            "message": "nonce too low: address 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266, "
            "tx: 5 state: 7",
        },
        {
            "code": -32000,
            "message": "insufficient funds for gas * price + value: address "
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 have 0 want 10",
        },
        {"code": -32000, "message": f"transaction reverted in {TX_HASH}"},
        {"code": -32000, "message": "execution reverted", "data": {"txHash": TX_HASH[:-2]}},
        {"code": -32602, "message": "invalid argument 1: hex string has odd length"},
    ],
)
def test_no_revert_data_is_invented(error: dict[str, Any]) -> None:
    """Addresses, hashes and other hex in an error are not revert data."""
    assert found(error) is None
