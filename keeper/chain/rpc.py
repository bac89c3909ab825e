"""Chain access: one JSON-RPC client with exactly one retry layer and typed errors.

The client sends raw requests through web3's `AsyncHTTPProvider` (its own retries switched
off) and gets plain dicts back: ingest decodes logs from the raw JSON itself, which is much
faster than web3's formatted objects. Transient failures (connection errors, timeouts, HTTP
429/5xx, "header not found" from a lagging node) are retried here with backoff; anything else is
raised as a typed error. Range-limit answers to `eth_getLogs` become `RangeTooLarge`, carrying
the range the provider suggests when its message names one.

A JSON-RPC error answer to a plain read (a block, logs, a receipt, a balance: `READS`) is the
node failing, not an answer about the chain: a provider's "bad request", a backend behind a load
balancer that is not ready. It is retried like a transport fault and, once the attempts are
used up, raised as `RpcUnavailable`, which every loop of the daemon reports and waits out. Error
answers that carry meaning stay typed errors: a revert of `eth_call` / `eth_estimateGas`, a send
refusal, a range limit, and a node that does not know the `finalized` or `safe` tag.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from web3 import AsyncHTTPProvider

from keeper import metrics
from keeper.chain.reverts import revert_data
from keeper.errors import KeeperError

log = structlog.get_logger(__name__)


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


def effective_finalized(tag: int | None, head: int, depth: int) -> int:
    """The block the keeper treats as final: the node's `finalized` tag (`tag`, None when the
    node has none), but never closer to the head than `depth` blocks. Hardhat's node and
    Ganache answer the tag with the head itself, which would make every reorg look deeper than
    finality; an L2 sequencer's tag may run ahead of what its L1 has settled. The same value
    drives the backfill, the fatal-reorg rule and intent finality. -1 before block `depth`."""
    floor = head - depth
    return max(floor if tag is None else min(tag, floor), -1)


def _error_object(error: Any) -> dict[str, Any]:
    """A reply's `error` member as a dict (a provider may send a bare string)."""
    return dict(error) if isinstance(error, dict) else {"message": str(error)}


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What the indexer needs of a block."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int
    base_fee: int | None = None  # EIP-1559 chains only
    logs_bloom: str | None = None  # the header's 2048-bit logsBloom, as 0x-hex

    @classmethod
    def from_rpc(cls, block: dict[str, Any]) -> BlockHeader:
        """Build from an `eth_getBlockByNumber` result."""
        return cls(
            number=int(block["number"], 16),
            hash=block["hash"],
            parent_hash=block["parentHash"],
            timestamp=int(block["timestamp"], 16),
            base_fee=int(block["baseFeePerGas"], 16) if block.get("baseFeePerGas") else None,
            logs_bloom=block.get("logsBloom"),
        )


class ChainClient:
    """The keeper's JSON-RPC client for one chain."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        max_backoff: float = 10.0,
    ) -> None:
        self.url = url
        self.provider = AsyncHTTPProvider(
            url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            exception_retry_configuration=None,  # the retry layer is ours, below
        )
        self.attempts = attempts
        self.max_backoff = max_backoff

    def __repr__(self) -> str:
        return f"ChainClient({metrics.redact_url(self.url)})"

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.provider.disconnect()

    async def _once(self, method: str, params: Sequence[Any]) -> Any:
        started = time.perf_counter()
        try:
            reply = await self.provider.make_request(method, list(params))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            metrics.RPC_ERRORS.labels(method=method, kind="transport").inc()
            # Not str(exc): aiohttp's messages carry the full URL, and hosted RPC URLs carry
            # API keys. Only the status (if any) and the redacted endpoint are kept.
            status = getattr(exc, "status", None)
            detail = f"HTTP {status}" if status else type(exc).__name__
            raise RpcTransient(
                f"{method}: {detail} from {metrics.redact_url(self.url)}", method=method
            ) from None
        finally:
            metrics.RPC_LATENCY.labels(method=method).observe(time.perf_counter() - started)
            metrics.RPC_REQUESTS.labels(method=method).inc()
        if "error" in reply:
            err = answer_error(method, params, reply["error"])
            count_error_answer(err)
            raise err
        return reply.get("result")

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call `method`, retrying transient failures; raise a typed `RpcError` otherwise."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RpcTransient),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential_jitter(multiplier=0.1, max=self.max_backoff, jitter=0.1),
                reraise=True,
            ):
                with attempt:
                    return await self._once(method, params)
        except RpcTransient as exc:
            raise RpcUnavailable(
                f"{exc.message} (after {self.attempts} attempts)",
                method=method,
                help=f"check that the RPC at {metrics.redact_url(self.url)} is up and reachable",
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying always yields

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one JSON-RPC batch (falls back to one by one if refused)."""
        if not calls:
            return []
        if len(calls) == 1:
            return [await self.request(*calls[0])]
        try:
            replies = await self.provider.make_batch_request(
                [(m, list(p)) for m, p in calls]  # type: ignore[misc]
            )
        except (TimeoutError, aiohttp.ClientError, OSError):
            return [await self.request(m, p) for m, p in calls]
        if not isinstance(replies, list):
            return [await self.request(m, p) for m, p in calls]
        metrics.RPC_REQUESTS.labels(method="batch").inc()
        by_id = sorted(replies, key=lambda r: int(str(r.get("id", 0))))
        out: list[Any] = []
        for (method, params), reply in zip(calls, by_id, strict=True):
            if "error" in reply:
                err = answer_error(method, params, reply["error"])
                if isinstance(err, RpcTransient):
                    # Asked again on its own, through the retry layer.
                    out.append(await self.request(method, params))
                    continue
                count_error_answer(err)
                raise err
            out.append(reply.get("result"))
        return out

    # ------------------------------------------------------------------ typed helpers

    async def chain_id(self) -> int:
        """`eth_chainId`."""
        return int(await self.request("eth_chainId"), 16)

    async def header(self, block: int | str) -> BlockHeader | None:
        """The header of block `block` (a number or a tag such as "latest"); None if unknown."""
        tag = hex(block) if isinstance(block, int) else block
        result = await self.request("eth_getBlockByNumber", [tag, False])
        return BlockHeader.from_rpc(result) if result else None

    async def headers(self, numbers: Sequence[int]) -> list[BlockHeader | None]:
        """Headers of several blocks in one batch."""
        results = await self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        return [BlockHeader.from_rpc(r) if r else None for r in results]

    async def head(self) -> BlockHeader:
        """The latest block."""
        header = await self.header("latest")
        if header is None:
            raise RpcResponseError("eth_getBlockByNumber(latest) returned nothing", method="head")
        return header

    async def finalized(self, head: BlockHeader, depth: int) -> int:
        """The effective finalized block (see `effective_finalized`)."""
        try:
            header = await self.header("finalized")
        except RpcResponseError:
            header = None
        return effective_finalized(header.number if header else None, head.number, depth)

    async def get_logs(
        self, addresses: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        """Raw logs of `addresses` in [from_block, to_block]."""
        params = {
            "address": list(addresses),
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
        }
        result = await self.request("eth_getLogs", [params])
        return list(result or [])
