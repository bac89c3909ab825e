"""Revert reasons, decoded for people: `Error(string)`, `Panic(uint256)` and the custom errors
of the keeper's contracts (and the OpenZeppelin errors they inherit).

`revert_reason(data)` never raises: unknown selectors and malformed data are shown as hex, so
a reason is always recorded even when it cannot be decoded.
"""

from __future__ import annotations

import re
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


# Where nodes put revert data in a JSON-RPC error, outermost first: `data` (geth, anvil,
# erigon, reth; Hardhat/EDR nest it as `data.data`), `result` (Ganache 7: `data.result`),
# `return` (Ganache 6: `data.<tx hash>.return`).
_DATA_KEYS = ("data", "result", "return")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
# Hex after a revert in an error's text: `execution reverted: 0x08c379a0…`, Nethermind's
# `Reverted 0x…`, Hardhat's `reverted with an unrecognized custom error (return data: 0x…)`.
_REVERT_WORD = re.compile(r"\brevert(?:ed)?\b", re.IGNORECASE)
_HEX_WORD = re.compile(r"(?<![0-9a-zA-Z])0x([0-9a-fA-F]*)(?![0-9a-zA-Z])")
_NESTING = 4  # how deep data objects are searched


def _hex(value: str) -> bytes | None:
    if not value.startswith("0x") or len(value) % 2:
        return None
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return None


def _nested(value: Any, depth: int) -> bytes | None:
    """Revert data held in `value` as a hex string, or under one of `_DATA_KEYS` or a tx hash."""
    if isinstance(value, str):
        return _hex(value)
    if not isinstance(value, dict) or depth > _NESTING:
        return None
    for key in _DATA_KEYS:
        if key in value:
            found = _nested(value[key], depth + 1)
            if found is not None:
                return found
    for key, inner in value.items():
        if isinstance(key, str) and _TX_HASH.fullmatch(key) and isinstance(inner, dict):
            found = _nested(inner, depth + 1)
            if found is not None:
                return found
    return None


def _texts(value: Any, depth: int = 0) -> list[str]:
    """The messages of an error and of its data objects, and data strings that are not hex."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict) or depth > _NESTING:
        return []
    out = [str(value["message"])] if isinstance(value.get("message"), str) else []
    for key in _DATA_KEYS:
        inner = value.get(key)
        if (isinstance(inner, str) and _hex(inner) is None) or isinstance(inner, dict):
            out += _texts(inner, depth + 1)
    return out


def _in_text(text: str) -> bytes | None:
    """Hex revert data written after a revert in `text`. Only a plausible length counts (none,
    or a selector and whole 32-byte words), so an address or a hash in the text never does."""
    revert = _REVERT_WORD.search(text)
    if revert is None:
        return None
    for match in _HEX_WORD.finditer(text, revert.end()):
        digits = match.group(1)
        if digits == "" or (len(digits) >= 8 and (len(digits) - 8) % 64 == 0):
            return bytes.fromhex(digits)
    return None


def revert_data(error: Any) -> bytes | None:
    """The revert data inside a JSON-RPC error, however the node words it; None when there is
    none.

    In order: a hex `data` (geth, anvil), nested as `data.data` (Hardhat, EDR, some providers),
    `data.result` (Ganache 7) or `data.<tx hash>.return` (Ganache 6); then hex written after a
    revert in the message or in a textual `data` (`execution reverted: 0x…`, `Reverted 0x…`).
    """
    found = _nested(error, 0)
    if found is not None:
        return found
    for text in _texts(error):
        found = _in_text(text)
        if found is not None:
            return found
    return None
