"""The typed errors of JSON-RPC calls and how a node's error answer is classified.

A JSON-RPC error answer to a plain read (a block, logs, a receipt, a balance: `READS`) is the
node failing, not an answer about the chain: a provider's "bad request", a backend behind a load
balancer that is not ready. It is retried like a transport fault and, once the attempts are
used up, raised as `RpcUnavailable`, which every loop of the daemon reports and waits out. Error
answers that carry meaning stay typed errors: a revert of `eth_call` / `eth_estimateGas`, a send
refusal, a range limit, and a node that does not know the `finalized` or `safe` tag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from keeper import metrics
from keeper.chain.reverts import revert_data
from keeper.errors import KeeperError


class RpcError(KeeperError):
    """The chain's RPC endpoint failed."""

    def __init__(self, message: str | None = None, *, method: str = "", help: str | None = None):  # noqa: A002
        super().__init__(message, help=help)
        self.method = method


class RpcUnavailable(RpcError):
    """The RPC endpoint could not be reached or kept failing."""


class RpcTransient(RpcError):
    """A failure worth retrying (connection, timeout, rate limit, node lagging)."""


class RpcResponseError(RpcError):
    """The RPC endpoint answered with a JSON-RPC error."""

    def __init__(
        self, message: str, *, method: str, code: int | None = None, data: bytes | None = None
    ) -> None:
        super().__init__(message, method=method)
        self.code = code
        self.data = data  # revert data of a reverted eth_call / eth_estimateGas, if any

    @property
    def reverted(self) -> bool:
        """Whether this answer to eth_call / eth_estimateGas is the call reverting (as opposed
        to the node failing to run it)."""
        return self.data is not None or self.code == 3 or "revert" in self.message.lower()


class RangeTooLarge(RpcResponseError):
    """The provider refused an eth_getLogs range (too many blocks or too many results)."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        code: int | None = None,
        suggested_to: int | None = None,
        max_blocks: int | None = None,
    ) -> None:
        super().__init__(message, method=method, code=code)
        self.suggested_to = suggested_to
        self.max_blocks = max_blocks


# Messages providers use for eth_getLogs limits (geth/erigon/reth, Alchemy, Infura, QuickNode,
# Ankr, BlastAPI, Chainstack, public RPCs). Matched case-insensitively.
_RANGE_PATTERNS = re.compile(
    r"query returned more than|too many (results|logs|blocks)|response size exceeded|"
    r"block range|range (is )?too (large|wide|big)|exceed(s|ed)? (the )?(maximum|max|limit)|"
    r"limited to|max(imum)? (block )?range|log response size|range limit|"
    r"results? (limit|exceeded)|more than \d+ (results|logs)",
    re.IGNORECASE,
)
_SUGGESTED_RANGE = re.compile(r"\[\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*(0x[0-9a-fA-F]+|\d+)\s*\]")
_MAX_BLOCKS = re.compile(
    r"(?:max(?:imum)?(?: block)? range(?: of| is|:)?|limited to(?: a)?|up to(?: a)?|"
    r"exceeds? (?:the )?(?:max(?:imum)?|limit)(?: of| block range)?:?)\s*(\d[\d,]*)(k?)\b",
    re.IGNORECASE,
)
_TRANSIENT_PATTERNS = re.compile(
    r"header not found|unknown block|rate limit|too many requests|timeout|timed out|"
    r"temporarily|try again|busy|capacity|internal error",
    re.IGNORECASE,
)


# Methods that only read the chain (see the module docstring).
READS = frozenset(
    {
        "eth_blockNumber",
        "eth_chainId",
        "eth_feeHistory",
        "eth_gasPrice",
        "eth_getBalance",
        "eth_getBlockByHash",
        "eth_getBlockByNumber",
        "eth_getCode",
        "eth_getLogs",
        "eth_getTransactionCount",
        "eth_getTransactionReceipt",
        "net_version",
    }
)
# Block tags some nodes do not serve: an error answer means "no such tag", and the callers fall
# back (head - finality_depth).
_OPTIONAL_TAGS = frozenset({"finalized", "safe"})


def _optional_tag(method: str, params: Sequence[Any]) -> bool:
    return method == "eth_getBlockByNumber" and bool(params) and params[0] in _OPTIONAL_TAGS


def answer_error(method: str, params: Sequence[Any], error: Any) -> RpcError:
    """The typed error of a JSON-RPC error answer to `method(params)`: `RpcTransient` when it
    is worth asking again (a transient fault, or any error answer to a read: the node failing),
    else the error the caller acts on. A node's refusal of an optional block tag is never
    retried: the caller falls back at once."""
    err = classify_error(method, _error_object(error))
    if _optional_tag(method, params):
        if isinstance(err, RpcTransient):
            return RpcResponseError(err.message, method=method)
        return err
    if method in READS and type(err) is RpcResponseError:
        return RpcTransient(err.message, method=method)
    return err


# The calls whose error answer may be the call reverting (RpcResponseError.reverted).
CALLS = frozenset({"eth_call", "eth_estimateGas"})


def count_error_answer(err: RpcError) -> None:
    """Count an error answer: a call that reverted in keeper_rpc_reverts_total (the contract
    said no: paused, a missing role), anything else in keeper_rpc_errors_total by its type (the
    node or the request failed)."""
    if isinstance(err, RpcResponseError) and err.method in CALLS and err.reverted:
        metrics.RPC_REVERTS.labels(method=err.method).inc()
    else:
        metrics.RPC_ERRORS.labels(method=err.method, kind=type(err).__name__).inc()


def _int(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text.replace(",", ""))


def _blocks(match: re.Match[str]) -> int:
    """A stated block limit, with Alchemy's "2K" style suffix."""
    return _int(match.group(1)) * (1000 if match.group(2) else 1)


def classify_error(method: str, error: dict[str, Any]) -> RpcError:
    """Turn a JSON-RPC `error` object into a typed exception."""
    message = str(error.get("message", ""))
    data = error.get("data")
    text = f"{message} {data}" if isinstance(data, str) else message
    code = error.get("code")
    if method == "eth_getLogs" and _RANGE_PATTERNS.search(text):
        suggested = _SUGGESTED_RANGE.search(text)
        max_blocks = _MAX_BLOCKS.search(text)
        return RangeTooLarge(
            f"{method}: {message}",
            method=method,
            code=code,
            suggested_to=_int(suggested.group(2)) if suggested else None,
            max_blocks=_blocks(max_blocks) if max_blocks else None,
        )
    if code in (-32005, 429) or _TRANSIENT_PATTERNS.search(text):
        return RpcTransient(f"{method}: {message}", method=method)
    return RpcResponseError(
        f"{method}: {message}", method=method, code=code, data=revert_data(error)
    )


def _error_object(error: Any) -> dict[str, Any]:
    """A reply's `error` member as a dict (a provider may send a bare string)."""
    return dict(error) if isinstance(error, dict) else {"message": str(error)}
