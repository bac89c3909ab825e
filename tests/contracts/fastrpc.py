"""A thin, fast JSON-RPC client for the invariant campaign.

web3.py spends about 20 ms of Python per call encoding, formatting and checking; the campaign
makes tens of thousands of calls. This client encodes with eth_abi from the same ABI, sends the
reads of one check as a single JSON-RPC batch, and decodes events itself. It is test plumbing
only: no retries, no middleware, anvil's unlocked accounts send the transactions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from eth_abi.abi import decode, encode
from eth_utils import keccak, to_checksum_address
from web3.contract import Contract


@dataclass(frozen=True)
class Call:
    """One encoded function call to one contract."""

    contract: str  # the key the client knows the contract by
    name: str
    to: str
    data: str
    outputs: tuple[str, ...]


class RpcError(AssertionError):
    """A JSON-RPC call answered with an error (a revert of an eth_call, among others)."""


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


def _normalize(kind: str, value: Any) -> Any:
    if kind == "address":
        return to_checksum_address(value)
    return value


class FastRpc:
    """Encode, batch and decode calls to the contracts it was given."""

    def __init__(self, url: str, contracts: dict[str, Contract]) -> None:
        # (The ABI as plain dicts: web3's TypedDicts do not narrow on "type".)
        self.url = url
        self.session = requests.Session()
        self._next_id = 0
        self._functions: dict[tuple[str, str], tuple[str, str, list[str], tuple[str, ...]]] = {}
        self._events: dict[tuple[str, str], tuple[str, list[dict[str, Any]]]] = {}
        self.addresses = {key: str(c.address) for key, c in contracts.items()}
        for key, c in contracts.items():
            abi: list[dict[str, Any]] = [dict(i) for i in c.abi]
            for item in abi:
                if item.get("type") == "function":
                    selector = "0x" + keccak(text=_signature(item))[:4].hex()
                    inputs = [i["type"] for i in item["inputs"]]
                    outputs = tuple(o["type"] for o in item["outputs"])
                    self._functions[(key, item["name"])] = (
                        str(c.address),
                        selector,
                        inputs,
                        outputs,
                    )
                elif item.get("type") == "event":
                    topic = "0x" + keccak(text=_signature(item)).hex()
                    self._events[(key, item["name"])] = (topic, item["inputs"])

    # ---------------------------------------------------------------- plumbing

    def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; an error answer raises `RpcError`."""
        (result,) = self.batch([(method, params)])
        return result

    def batch(self, calls: list[tuple[str, list[Any]]], *, errors: bool = False) -> list[Any]:
        """Several JSON-RPC calls in one HTTP request, results in order. With `errors`, an
        error answer is returned as an `RpcError` instead of raised."""
        if not calls:
            return []
        first = self._next_id
        self._next_id += len(calls)
        body: Any = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": p}
            for i, (m, p) in enumerate(calls)
        ]
        reply: list[dict[str, Any]] = self.session.post(self.url, json=body, timeout=60).json()
        answers = {a["id"]: a for a in reply}
        out: list[Any] = []
        for i, (method, _) in enumerate(calls):
            answer = answers[first + i]
            if "error" in answer:
                exc = RpcError(f"{method}: {answer['error']}")
                if not errors:
                    raise exc
                out.append(exc)
            else:
                out.append(answer["result"])
        return out

    # ---------------------------------------------------------------- calls

    def fn(self, contract: str, name: str, *args: Any) -> Call:
        """The call of `name(*args)` on `contract`."""
        to, selector, inputs, outputs = self._functions[(contract, name)]
        data = selector + encode(inputs, list(args)).hex()
        return Call(contract, name, to, data, outputs)

    def _decode(self, call: Call, raw: str) -> Any:
        values = decode(list(call.outputs), bytes.fromhex(raw[2:]))
        values = tuple(_normalize(k, v) for k, v in zip(call.outputs, values, strict=True))
        return values[0] if len(values) == 1 else values

    def call_many(self, calls: list[Call], *, errors: bool = False) -> list[Any]:
        """eth_call every call at the latest block, in one request; decoded results."""
        raw = self.batch(
            [("eth_call", [{"to": c.to, "data": c.data}, "latest"]) for c in calls], errors=errors
        )
        pairs = zip(calls, raw, strict=True)
        return [r if isinstance(r, RpcError) else self._decode(c, r) for c, r in pairs]

    def call(self, call: Call) -> Any:
        """eth_call one call at the latest block."""
        (result,) = self.call_many([call])
        return result

    def send(self, call: Call, sender: str, gas: int = 8_000_000) -> dict[str, Any]:
        """Send `call` from the unlocked `sender` (automine) and return the raw receipt."""
        tx = {"from": sender, "to": call.to, "data": call.data, "gas": hex(gas)}
        tx_hash = self.request("eth_sendTransaction", [tx])
        for _ in range(5_000):
            receipt = self.request("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                return dict(receipt)
            time.sleep(0.001)
        raise AssertionError(f"no receipt for {call.name}")

    # ---------------------------------------------------------------- events

    def events(self, contract: str, receipt: dict[str, Any], name: str) -> list[dict[str, Any]]:
        """The decoded arguments of every `name` event `contract` emitted in `receipt`."""
        topic, inputs = self._events[(contract, name)]
        address = self.addresses[contract].lower()
        found = []
        for log in receipt["logs"]:
            if log["address"].lower() != address or not log["topics"]:
                continue
            if log["topics"][0] != topic:
                continue
            indexed = [i for i in inputs if i["indexed"]]
            plain = [i for i in inputs if not i["indexed"]]
            args: dict[str, Any] = {}
            for item, t in zip(indexed, log["topics"][1:], strict=True):
                (value,) = decode([item["type"]], bytes.fromhex(t[2:]))
                args[item["name"]] = _normalize(item["type"], value)
            values = decode([i["type"] for i in plain], bytes.fromhex(log["data"][2:]))
            for item, value in zip(plain, values, strict=True):
                args[item["name"]] = _normalize(item["type"], value)
            found.append({i["name"]: args[i["name"]] for i in inputs})
        return found
