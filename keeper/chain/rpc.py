"""Chain access: one JSON-RPC client with exactly one retry layer and typed errors.

The client posts raw JSON-RPC to its providers (`keeper.chain.transport`) and gets plain dicts
back: ingest decodes logs from the raw JSON itself, which is much faster than web3's formatted
objects. Transient failures (connection errors, timeouts, HTTP 429/5xx, bodies that are no
JSON-RPC answer, "header not found" from a lagging node) are retried here, on the next provider
when there are several (`keeper.chain.providers`), else after a backoff; anything else is raised
as a typed error (`keeper.chain.errors`). Range-limit answers to `eth_getLogs` become
`RangeTooLarge`, carrying the range the provider suggests when its message names one.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from keeper import metrics
from keeper.chain.errors import (
    CALLS,
    READS,
    RangeTooLarge,
    RpcError,
    RpcResponseError,
    RpcTransient,
    RpcUnavailable,
    answer_error,
    classify_error,
    count_error_answer,
)
from keeper.chain.providers import Provider, ProviderPool
from keeper.chain.transport import HttpTransport, ProviderFault

__all__ = [
    "CALLS",
    "READS",
    "BlockHeader",
    "ChainClient",
    "ProviderFault",
    "RangeTooLarge",
    "RpcError",
    "RpcResponseError",
    "RpcTransient",
    "RpcUnavailable",
    "answer_error",
    "classify_error",
    "count_error_answer",
    "effective_finalized",
]


def effective_finalized(tag: int | None, head: int, depth: int) -> int:
    """The block the keeper treats as final: the node's `finalized` tag (`tag`, None when the
    node has none), but never closer to the head than `depth` blocks. Hardhat's node and
    Ganache answer the tag with the head itself, which would make every reorg look deeper than
    finality; an L2 sequencer's tag may run ahead of what its L1 has settled. The same value
    drives the backfill, the fatal-reorg rule and intent finality. -1 before block `depth`."""
    floor = head - depth
    return max(floor if tag is None else min(tag, floor), -1)


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


class Logs(list[dict[str, Any]]):
    """An `eth_getLogs` answer and the provider that gave it (`keeper.ingest.checked_logs`
    believes two providers that agree, never one provider twice)."""

    def __init__(self, logs: Sequence[dict[str, Any]], *, provider: str | None) -> None:
        super().__init__(logs)
        self.provider = provider


class ChainClient:
    """The keeper's JSON-RPC client for one chain: one or several providers
    (`keeper.chain.providers`), one retry layer across them."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        max_backoff: float = 10.0,
        max_lag_blocks: int = 5,
        probe_interval: float = 10.0,
        _pool: ProviderPool | None = None,
        _pinned: Provider | None = None,
    ) -> None:
        if _pool is None:
            listed = [urls] if isinstance(urls, str) else list(urls)
            _pool = ProviderPool(
                [HttpTransport(u, timeout=timeout) for u in listed],
                max_lag_blocks=max_lag_blocks,
                probe_interval=probe_interval,
            )
        self.pool = _pool
        self._pinned = _pinned
        self.attempts = attempts
        self.max_backoff = max_backoff
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ChainClient({', '.join(self.labels)})"

    @property
    def labels(self) -> list[str]:
        """Each provider's name (scheme://host:port, made unique), in configuration order."""
        if self._pinned is not None:
            return [self._pinned.label]
        return [p.label for p in self.pool.providers]

    @property
    def several(self) -> bool:
        """Whether requests can go to more than one provider."""
        return self._pinned is None and self.pool.several

    def each(self) -> list[tuple[str, ChainClient]]:
        """Each provider's label and a client bound to it alone (sharing its connection)."""
        return [(p.label, self._bound(p)) for p in self.pool.providers]

    def others(self) -> list[tuple[str, ChainClient]]:
        """Like `each`, for the healthy providers other than the selected one: those that can
        confirm what it said (a failing one would only make the caller wait)."""
        current = self.pool.current
        return [
            (p.label, self._bound(p))
            for p in self.pool.providers
            if p is not current and self.pool.healthy(p)
        ]

    def _bound(self, p: Provider) -> ChainClient:
        return ChainClient(
            (), attempts=self.attempts, max_backoff=self.max_backoff, _pool=self.pool, _pinned=p
        )

    def exclude(self, label: str, reason: str) -> None:
        """Stop using the provider named `label` (it serves another chain; the caller logs
        it)."""
        for p in self.pool.providers:
            if p.label == label:
                self.pool.exclude(p, reason, logged=True)

    def blame(self, label: str | None, kind: str, detail: str) -> None:
        """The provider named `label` (None: the selected one) gave an answer that could not be
        believed (e.g. incomplete logs): count it as its failure, which demotes it."""
        p = next((q for q in self.pool.providers if q.label == label), None)
        p = p or self._pinned or self.pool.current
        self.pool.failed(p, p.transport.fault("eth_getLogs", kind, detail))

    def snapshot(self) -> list[dict[str, Any]]:
        """One line per provider (see `ProviderPool.snapshot`)."""
        return self.pool.snapshot()

    async def probe_forever(self) -> None:
        """Probe every provider in the background (returns at once with one provider)."""
        await self.pool.probe_forever(self._probe)

    async def probe_once(self) -> list[dict[str, Any]]:
        """Probe every provider once (whatever their number) and return `snapshot()`."""
        await self.pool.probe_all(self._probe)
        return self.snapshot()

    async def _probe(self, p: Provider) -> dict[str, Any]:
        calls: list[tuple[str, Sequence[Any]]] = [
            ("eth_chainId", []),
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_getBlockByNumber", ["finalized", False]),
        ]
        replies = await self._post_batch(p, calls)
        try:
            tag = replies[2].get("result") if "error" not in replies[2] else None
            return {
                "chain_id": int(replies[0]["result"], 16),
                "head": int(replies[1]["result"]["number"], 16),
                "finalized": int(tag["number"], 16) if isinstance(tag, dict) else None,
            }
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise p.transport.fault("probe", "bad_reply", "no chain id or head") from None

    async def close(self) -> None:
        """Close the HTTP sessions (a bound client leaves them to its parent)."""
        if self._pinned is None:
            for p in self.pool.providers:
                await p.transport.close()

    # ------------------------------------------------------------------ one request

    def _choose(self, avoid: list[Provider]) -> Provider:
        return self._pinned if self._pinned is not None else self.pool.choose(avoid)

    async def _post(self, p: Provider, payload: Any, method: str) -> Any:
        """One HTTP request to `p`, timed and counted; a fault demotes `p`."""
        started = time.perf_counter()
        self.pool.requested(p)
        try:
            answer = await p.transport.post(payload, method)
        except ProviderFault as fault:
            metrics.RPC_ERRORS.labels(method=method, kind="transport").inc()
            self.pool.failed(p, fault)
            raise
        finally:
            metrics.RPC_LATENCY.labels(method=method).observe(time.perf_counter() - started)
            metrics.RPC_REQUESTS.labels(method=method).inc()
        self.pool.succeeded(p, time.perf_counter() - started)
        return answer

    async def _once(self, p: Provider, method: str, params: Sequence[Any]) -> Any:
        call_id = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": call_id, "method": method, "params": list(params)}
        reply = await self._post(p, payload, method)
        if not isinstance(reply, dict):
            fault = p.transport.fault(method, "bad_reply", "a batch answer to one call")
            self.pool.failed(p, fault)
            raise fault
        if "error" in reply:
            err = answer_error(method, params, reply["error"])
            count_error_answer(err)
            if isinstance(err, RpcTransient):
                self.pool.failed(p, err)
            raise err
        result = reply.get("result")
        if (
            self.several
            and method == "eth_getBlockByNumber"
            and isinstance(result, dict)
            and params[:1] == ["latest"]
        ):
            self.pool.saw_head(p, int(result.get("number", "0x0"), 16))
        return result

    async def _post_batch(
        self, p: Provider, calls: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[Any]:
        """One batch to `p`: the replies in call order; a dict answer (the batch refused)
        is returned as the one element of the list."""
        first = next(self._ids)
        for _ in calls[1:]:
            next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": list(params)}
            for i, (m, params) in enumerate(calls)
        ]
        replies = await self._post(p, payload, "batch")
        if isinstance(replies, dict):
            return [replies]
        by_id = {r.get("id"): r for r in replies}
        ordered = [by_id.get(first + i) for i in range(len(calls))]
        if any(r is None for r in ordered):
            fault = p.transport.fault("batch", "bad_reply", "a batch answer without every reply")
            self.pool.failed(p, fault)
            raise fault
        return ordered

    def _pause(self, attempt: int, exc: RpcTransient, avoid: list[Provider]) -> float:
        """Seconds before the next attempt: none when another healthy provider is left to
        try, else backoff (at least what the provider asked for with Retry-After)."""
        if self._pinned is None and self.pool.has_alternative(avoid):
            return 0.0
        backoff = min(self.max_backoff, 0.1 * 2.0**attempt) + random.uniform(0, 0.1)  # noqa: S311 - jitter
        asked = exc.retry_after if isinstance(exc, ProviderFault) else None
        return max(backoff, asked or 0.0)

    async def _retrying(self, method: str, once: Callable[[Provider], Awaitable[Any]]) -> Any:
        avoid: list[Provider] = []
        for attempt in range(self.attempts):
            p = self._choose(avoid)
            try:
                return await once(p)
            except RpcTransient as exc:
                last = exc
                avoid.append(p)
                if attempt + 1 < self.attempts:
                    await anyio.sleep(self._pause(attempt, exc, avoid))
        tried = ", ".join(dict.fromkeys(p.label for p in avoid))
        raise RpcUnavailable(
            f"{last.message} (after {self.attempts} attempts)",
            method=method,
            help=f"check that the RPC at {tried} is up and reachable",
        ) from last

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call `method`, retrying transient failures (on the next provider when there is
        one); raise a typed `RpcError` otherwise."""
        return await self._retrying(method, lambda p: self._once(p, method, params))

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one JSON-RPC batch to one provider (one by one if refused)."""
        if not calls:
            return []
        if len(calls) == 1:
            return [await self.request(*calls[0])]
        replies = await self._retrying("batch", lambda p: self._post_batch(p, calls))
        if len(replies) != len(calls):
            return [await self.request(m, p) for m, p in calls]  # the batch was refused
        out: list[Any] = []
        for (method, params), reply in zip(calls, replies, strict=True):
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

    async def broadcast(self, method: str, params: Sequence[Any]) -> list[tuple[str, Any]]:
        """Send one call to every healthy provider at once: (label, result or the `RpcError`
        raised) per provider. With one provider, the call goes through the retry layer as
        any other; with several, each provider is asked once (their answers are merged)."""
        if not self.several:
            try:
                return [(self.labels[0], await self.request(method, params))]
            except RpcError as exc:
                return [(self.labels[0], exc)]
        targets = self.pool.healthy_providers()
        answers: list[tuple[str, Any]] = [(p.label, None) for p in targets]

        async def one(i: int, p: Provider) -> None:
            try:
                answers[i] = (p.label, await self._once(p, method, params))
            except RpcError as exc:
                answers[i] = (p.label, exc)

        async with anyio.create_task_group() as tg:
            for i, p in enumerate(targets):
                tg.start_soon(one, i, p)
        return answers

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
        return self.cap_finalized(
            effective_finalized(header.number if header else None, head.number, depth), depth
        )

    def cap_finalized(self, finalized: int, depth: int) -> int:
        """`finalized`, lowered to a block every healthy provider has finalized (with
        several providers): no provider alone decides what is final."""
        floor = self.pool.finalized_floor(depth) if self.several else None
        return finalized if floor is None else min(finalized, floor)

    async def get_logs(
        self, addresses: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        """Raw logs of `addresses` in [from_block, to_block], as a `Logs` list that names the
        provider that answered."""
        params = {
            "address": list(addresses),
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
        }

        async def once(p: Provider) -> tuple[Any, str]:
            return await self._once(p, "eth_getLogs", [params]), p.label

        result, label = await self._retrying("eth_getLogs", once)
        return Logs(result or [], provider=label)
