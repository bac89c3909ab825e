"""Revert reasons, decoded for people: `Error(string)`, `Panic(uint256)` and the custom errors
of the keeper's contracts (and the OpenZeppelin errors they inherit).

`revert_reason(data)` never raises: unknown selectors and malformed data are shown as hex, so
a reason is always recorded even when it cannot be decoded.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi.abi import decode
from eth_utils import keccak, to_checksum_address

from keeper.resources import CONTRACT_NAMES, load_artifact

ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)

# Solidity's panic codes (docs: "Panic via assert and error via require").
PANIC_CODES = {
    0x00: "generic compiler panic",
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "bad storage byte array encoding",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}


@cache
def custom_errors() -> dict[bytes, tuple[str, tuple[str, ...]]]:
    """selector -> (name, argument types) of every error in the shipped ABIs."""
    out: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    for name in CONTRACT_NAMES:
        for entry in load_artifact(name).abi:
            if entry.get("type") != "error":
                continue
            types = tuple(str(i["type"]) for i in entry.get("inputs", []))
            signature = f"{entry['name']}({','.join(types)})"
            out[keccak(text=signature)[:4]] = (str(entry["name"]), types)
    return out


def _show(value: Any, kind: str) -> str:
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def revert_reason(data: bytes | None) -> str:
    """A readable reason for revert `data` (the return data of a reverted call)."""
    if not data:
        return "reverted without a reason"
    selector, body = data[:4], data[4:]
    try:
        if selector == ERROR_STRING:
            (message,) = decode(["string"], body)
            return str(message)
        if selector == PANIC:
            (code,) = decode(["uint256"], body)
            return f"Panic(0x{code:02x}: {PANIC_CODES.get(code, 'unknown panic code')})"
        known = custom_errors().get(selector)
        if known is not None:
            name, types = known
            values = decode(list(types), body) if types else ()
            args = ", ".join(_show(v, t) for v, t in zip(values, types, strict=True))
            return f"{name}({args})"
    except Exception:  # noqa: S110 - malformed data is shown raw, below
        pass
    return f"unknown revert data 0x{data.hex()}"


def revert_data(error: Any) -> bytes | None:
    """The revert data inside a JSON-RPC error's `data` field, however the node nests it
    (a hex string, or an object with `data`); None when there is none."""
    for _ in range(3):
        if isinstance(error, dict):
            error = error.get("data")
            continue
        break
    if isinstance(error, str) and error.startswith("0x"):
        try:
            return bytes.fromhex(error[2:])
        except ValueError:
            return None
    return None
