"""A JSON-RPC proxy in front of a real node that behaves like a hosted provider.

`RpcProxy(upstream)` listens on 127.0.0.1 and forwards every call to `upstream` (an anvil URL),
except that it can:

- refuse `eth_getLogs` calls whose block range exceeds `max_blocks` and/or whose result would
  exceed `max_results` logs, answering with the error a real provider sends (`style`, below);
- inject faults into the next `n` HTTP requests (or every request until `clear_faults()`;
  all requests, or those carrying given methods, optionally only with given params):
  an HTTP status (502, 429, ...) with any body (an HTML page, invalid JSON, JSON that is no
  JSON-RPC answer, the node's real answer cut in half with `truncate`) and a `Retry-After`,
  a dropped connection before forwarding or, with `after_forwarding`, after the node answered
  (the request reached the node: a send went out), a delay before forwarding, or a
  well-formed JSON-RPC error answer (HTTP 200) to each call of the given methods;
- misbehave until `clear_faults()`: serve a head `lag_head(blocks)` behind the node's (blocks,
  receipts and logs above it unknown), drop the logs of the node's newest blocks from
  `eth_getLogs` answers (`drop_logs(newest)`, as a load-balanced node that has only just seen
  a block does), report another chain id (`report_chain_id(id)`);
- answer JSON-RPC batch arrays, applying the limits call by call;
- with `finalized_is_head`, answer the `finalized` and `safe` block tags with the latest block,
  as Hardhat's node and Ganache do (anvil answers head - 64);
- add `receipt_fields` to every receipt it returns (e.g. `{"l1Fee": "0x…"}`, as an OP-stack
  node's receipts carry);
- count what it saw: calls per method, refused `eth_getLogs` calls, and every `eth_getLogs`
  range with its outcome, in order (`getlogs`);
- **hold** a request (`hold()`): the n-th request carrying a given method is stopped either
  before it is forwarded or after the node answered but before the reply goes back; the test
  is told (`Hold.reached`) and decides what happens next (kill the client; `drop()` or
  `release()` the request). That is how crash tests stop a `keeper run` at an exact step
  without failpoints in the keeper.

It runs its own event loop in a thread, so it serves a `keeper run` subprocess, synchronous
test code and `@pytest.mark.anyio` tests alike. Use it as a context manager::

    with RpcProxy(anvil.url, max_blocks=50, style="geth") as proxy:
        client = ChainClient(proxy.url)

A hold, e.g. to kill the daemon after its second transaction reached the node but before it
learned so::

    held = proxy.hold("eth_sendRawTransaction", nth=2, reply=True)
    assert held.wait(30)
    keeper.kill()
    held.drop()

Limit styles (the messages are the providers' own, with the numbers filled in):

- "alchemy": "Log response size exceeded. You can make eth_getLogs requests with up to a 2K
  block range and no limit on the response size, or you can request any block range with a cap
  of 10K logs in the response. Based on your parameters, this block range should work: [...]"
  (a call passes if it is within *either* limit, as on Alchemy's paid plans); with only
  `max_blocks`, the free-tier "You can make eth_getLogs requests with up to a 500 block range.
  Based on your parameters, this block range should work: [...]".
- "infura": "query returned more than 10000 results. Try with this block range [0x.., 0x..]."
  (code -32005); a block limit is "range 1000000 exceeds limit of 10000" (code -32602).
- "geth": "exceed maximum block range: 5000" (op-geth, bsc); results: "query returned more
  than 10000 results" (no hint).
- "quicknode": "eth_getLogs is limited to a 10,000 range" (code -32614).
- "nohint": "block range too large" / "query returned too many results", nothing to go on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web

LimitStyle = Literal["alchemy", "infura", "geth", "quicknode", "nohint"]
FaultKind = Literal["status", "drop", "delay", "error"]

_TAGS_FROM_NODE = ("latest", "safe", "finalized", "pending")


@dataclass
class Fault:
    """A fault applied to the next `remaining` HTTP requests (None: until cleared)."""

    kind: FaultKind
    remaining: int | None
    status: int = 502
    delay: float = 0.0
    methods: frozenset[str] | None = None  # only requests carrying one of these methods
    params: Callable[[list[Any]], bool] | None = None  # ... in a call whose params pass this
    error: tuple[int, str] = (-32600, "bad request")  # the JSON-RPC error of an "error" fault
    body: bytes | None = None  # a "status" fault's body (None: a provider's error page)
    content_type: str = "text/html"
    retry_after: str | None = None  # a "status" fault's Retry-After header
    truncate: bool = False  # a "status" fault answers the node's real reply, cut in half
    after_forwarding: bool = False  # a "drop" fault forwards first, then drops the answer

    def matches(self, calls: Iterable[dict[str, Any]]) -> bool:
        """Whether this fault applies to a request carrying `calls`."""
        if self.methods is None:
            return True
        return any(
            c.get("method") in self.methods
            and (self.params is None or self.params(list(c.get("params") or [])))
            for c in calls
        )


@dataclass
class Hold:
    """One request to stop: the `nth` request (counted from when the hold was set) carrying a
    `method` call whose params pass `params`, and, with `reply`, whose result passes `result`.

    Without `reply` the request is held before it is forwarded (the node never sees it unless
    it is released); with `reply` it is forwarded and the node's answer is held back from the
    client. `reached` is set when the request is held; a hold serves one request only. A held
    request ends with `release()` (it goes on), `drop()` or the proxy's `stop()` (both close
    the connection without forwarding or answering).
    """

    method: str
    nth: int = 1
    reply: bool = False
    params: Callable[[list[Any]], bool] | None = None
    result: Callable[[Any], bool] | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    dropped: bool = False  # ended without forwarding or answering (see `drop`)
    seen: int = 0  # matching requests so far
    held_calls: list[dict[str, Any]] = field(default_factory=list)  # the held request's calls

    def wait(self, timeout: float) -> bool:
        """Block until the request is held (True) or `timeout` seconds passed (False)."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        """Let the held request go on: forwarded, or its reply sent back."""
        self.released.set()

    def drop(self) -> None:
        """End the held request without forwarding it or answering it (the connection is
        closed): what became of a request whose client was killed while it was held."""
        self.dropped = True
        self.released.set()

    def _about(self, call: dict[str, Any]) -> bool:
        """Whether `call` is one this hold is about (its method, its params)."""
        return call.get("method") == self.method and (
            self.params is None or self.params(list(call.get("params") or []))
        )

    def _matches(self, calls: list[dict[str, Any]], replies: list[dict[str, Any]] | None) -> bool:
        """Whether a request (and, after forwarding, its replies) is one to count."""
        if replies is None or self.result is None:
            return any(self._about(c) for c in calls)
        result = self.result
        return any(
            self._about(c) and result(r.get("result")) for c, r in zip(calls, replies, strict=True)
        )


@dataclass(frozen=True)
class GetLogsCall:
    """One `eth_getLogs` call the proxy saw: its block range and whether it was refused."""

    from_block: int
    to_block: int
    refused: bool
    logs: int | None  # number of logs returned (None when refused)
    suggested_to: int | None = None  # the end of the range a refusal suggested, if it did

    @property
    def span(self) -> int:
        """Number of blocks in the range."""
        return self.to_block - self.from_block + 1


def _k(n: int) -> str:
    """Alchemy writes round limits as `2K`, `10K`."""
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else str(n)


def _block_arg(value: Any) -> int | str:
    if value is None:
        return "latest"
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    if isinstance(value, int):
        return value
    return str(value)


class RpcProxy:
    """An HTTP JSON-RPC proxy with provider limits and injectable faults (see module doc)."""

    def __init__(
        self,
        upstream: str,
        *,
        max_blocks: int | None = None,
        max_results: int | None = None,
        style: LimitStyle = "geth",
        port: int = 0,
        finalized_is_head: bool = False,
        receipt_fields: dict[str, Any] | None = None,
    ) -> None:
        self.upstream = upstream
        self.finalized_is_head = finalized_is_head
        self.receipt_fields = dict(receipt_fields or {})
        self.max_blocks = max_blocks
        self.max_results = max_results
        self.style: LimitStyle = style
        self.port = port
        self.calls: Counter[str] = Counter()
        self.http_requests = 0
        self.batches = 0
        self.faults_served: Counter[str] = Counter()
        self.errors_served: Counter[str] = Counter()  # JSON-RPC error answers, by method
        self.getlogs: list[GetLogsCall] = []
        self._faults: list[Fault] = []
        self._lag: int | None = None
        self._drop_newest: int | None = None
        self._chain_id: int | None = None
        self.dropped_logs = 0  # logs left out by drop_logs
        self.lagged_answers = 0  # answers changed by lag_head
        self._holds: list[Hold] = []  # not reached yet
        self._all_holds: list[Hold] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The proxy's JSON-RPC endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RpcProxy:
        """Start serving (in a thread with its own event loop); returns self."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, name="rpc-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the RPC proxy did not start")
        return self

    def stop(self) -> None:
        """Stop serving (the port is closed: clients get "connection refused")."""
        if self._loop is None or self._thread is None:
            return
        with self._lock:
            holds, self._all_holds = self._all_holds, []
        for held in holds:
            held.drop()  # nothing held is forwarded or answered once the proxy stops
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        # Any path: hosted RPC URLs carry their API key in it (`/v2/<key>`).
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ control (any thread)

    def fail_next(
        self,
        n: int | None,
        status: int = 502,
        *,
        body: str | bytes | None = None,
        content_type: str = "text/html",
        retry_after: str | None = None,
        truncate: bool = False,
        methods: Iterable[str] | None = None,
        params: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        """Answer the next `n` requests (None: all, until `clear_faults`) with HTTP `status`,
        with `body` (default: a provider's error page) of `content_type`, and a `Retry-After`
        header when given. With `truncate`, the request is forwarded and the node's real
        answer is sent cut in half (as JSON).

        `methods` limits the fault to requests carrying one of them, `params` further to those
        where such a call's params pass the test (e.g. one raw transaction and not another)."""
        data = body.encode() if isinstance(body, str) else body
        fault = Fault(
            "status",
            n,
            status=status,
            body=data,
            content_type="application/json" if truncate else content_type,
            retry_after=retry_after,
            truncate=truncate,
            **_only(methods, params),
        )
        self._add(fault)

    def drop_next(
        self,
        n: int | None,
        *,
        after_forwarding: bool = False,
        methods: Iterable[str] | None = None,
        params: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        """Close the connection of the next `n` requests without answering: before they are
        forwarded, or with `after_forwarding` once the node has answered them."""
        self._add(Fault("drop", n, after_forwarding=after_forwarding, **_only(methods, params)))

    def lag_head(self, blocks: int | None) -> None:
        """Serve a head `blocks` behind the node's until `clear_faults` (None: stop)."""
        with self._lock:
            self._lag = blocks

    def drop_logs(self, newest: int | None) -> None:
        """Leave the logs of the node's `newest` blocks out of `eth_getLogs` answers until
        `clear_faults` (None: stop)."""
        with self._lock:
            self._drop_newest = newest

    def report_chain_id(self, chain_id: int | None) -> None:
        """Answer `eth_chainId` and `net_version` with `chain_id` until `clear_faults`."""
        with self._lock:
            self._chain_id = chain_id

    def delay_next(
        self,
        n: int | None,
        seconds: float,
        *,
        methods: Iterable[str] | None = None,
        params: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        """Wait `seconds` before forwarding the next `n` requests."""
        self._add(Fault("delay", n, delay=seconds, **_only(methods, params)))

    def error_next(
        self,
        n: int | None,
        code: int = -32600,
        message: str = "bad request",
        *,
        methods: Iterable[str] | None = None,
        params: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        """Answer the next `n` requests (None: all, until `clear_faults`) carrying one of
        `methods` (None: any) with a JSON-RPC error `{code, message}` in an HTTP 200 reply, one
        per matching call; the other calls of a batch are forwarded as usual."""
        self._add(Fault("error", n, error=(code, message), **_only(methods, params)))

    def clear_faults(self) -> None:
        """Drop every pending fault and mode: the proxy forwards normally again."""
        with self._lock:
            self._faults.clear()
            self._lag = self._drop_newest = self._chain_id = None

    def hold(
        self,
        method: str,
        *,
        nth: int = 1,
        reply: bool = False,
        params: Callable[[list[Any]], bool] | None = None,
        result: Callable[[Any], bool] | None = None,
    ) -> Hold:
        """Hold the `nth` request carrying a `method` call (see `Hold`); returns the hold."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        if result is not None and not reply:
            raise ValueError("a result filter needs reply=True (the result comes from the node)")
        held = Hold(method, nth=nth, reply=reply, params=params, result=result)
        with self._lock:
            self._holds.append(held)
            self._all_holds.append(held)
        return held

    def clear_holds(self) -> None:
        """Forget the holds not reached yet (held requests stay held until released)."""
        with self._lock:
            self._holds.clear()

    def pending_faults(self) -> int:
        """Number of faults not yet used up."""
        with self._lock:
            return len(self._faults)

    def refusals(self) -> list[GetLogsCall]:
        """The `eth_getLogs` calls refused so far."""
        with self._lock:
            return [c for c in self.getlogs if c.refused]

    def served(self) -> list[GetLogsCall]:
        """The `eth_getLogs` calls answered with logs so far."""
        with self._lock:
            return [c for c in self.getlogs if not c.refused]

    def reset_counts(self) -> None:
        """Forget what was counted so far."""
        with self._lock:
            self.calls.clear()
            self.faults_served.clear()
            self.errors_served.clear()
            self.getlogs.clear()
            self.http_requests = 0
            self.batches = 0

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_hold(
        self, calls: list[dict[str, Any]], replies: list[dict[str, Any]] | None
    ) -> Hold | None:
        """The hold this request triggers at this stage (before forwarding when `replies` is
        None, after it otherwise), counted and removed; None when there is none."""
        with self._lock:
            for held in self._holds:
                if held.reply != (replies is not None) or not held._matches(calls, replies):
                    continue
                held.seen += 1
                if held.seen < held.nth:
                    continue
                self._holds.remove(held)
                held.held_calls = [c for c in calls if held._about(c)]
                return held
        return None

    async def _wait_for_release(self, request: web.Request, held: Hold) -> None:
        held.reached.set()
        # A worker thread waits, so the proxy keeps serving every other request meanwhile.
        await asyncio.to_thread(held.released.wait)
        if held.dropped:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing is sent: the client (if any) sees a reset

    def _take_fault(self, calls: list[dict[str, Any]]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if not fault.matches(calls):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                self.faults_served[fault.kind] += 1
                return fault
        return None

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response(_error(None, -32700, "parse error"), status=400)
        calls: list[dict[str, Any]] = body if isinstance(body, list) else [body]
        methods = [str(c.get("method", "")) for c in calls]
        with self._lock:
            self.http_requests += 1
            self.batches += isinstance(body, list)
            self.calls.update(methods)
        fault = self._take_fault(calls)
        if fault is not None:
            if fault.kind == "drop":
                if fault.after_forwarding:
                    for c in calls:
                        await self._call(c)  # the node has it; the client never learns so
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # nothing is sent: the client sees a reset
            if fault.kind == "status":
                if fault.truncate:
                    replies = [await self._call(c) for c in calls]
                    whole = json.dumps(replies if isinstance(body, list) else replies[0]).encode()
                    return _body_response(fault, whole[: len(whole) // 2])
                if fault.body is not None:
                    return _body_response(fault, fault.body)
                return _status_response(fault.status, fault.retry_after)
            if fault.kind == "error":
                code, message = fault.error
                with self._lock:
                    self.errors_served.update(
                        str(c.get("method", "")) for c in calls if fault.matches([c])
                    )
                replies = [
                    _error(c.get("id"), code, message)
                    if fault.matches([c])
                    else await self._call(c)
                    for c in calls
                ]
                return web.json_response(replies if isinstance(body, list) else replies[0])
            await asyncio.sleep(fault.delay)
        held = self._take_hold(calls, None)
        if held is not None:
            await self._wait_for_release(request, held)
        replies = [await self._call(c) for c in calls]
        held = self._take_hold(calls, replies)
        if held is not None:
            await self._wait_for_release(request, held)
        return web.json_response(replies if isinstance(body, list) else replies[0])

    async def _call(self, call: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            lag, drop_newest, chain_id = self._lag, self._drop_newest, self._chain_id
        method = call.get("method")
        if chain_id is not None and method in ("eth_chainId", "net_version"):
            value = hex(chain_id) if method == "eth_chainId" else str(chain_id)
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": value}
        if lag is not None:
            lagged = await self._lagged(call, lag)
            if lagged is not None:
                with self._lock:
                    self.lagged_answers += 1
                return lagged
        reply = await self._call_node(call)
        logs = reply.get("result")
        if method == "eth_getLogs" and isinstance(logs, list) and (lag or drop_newest):
            # Logs of blocks a lagging node has not seen, or of the newest blocks, left out.
            head = await self._block_number("latest")
            last = head - max(lag or 0, drop_newest or 0)
            kept = [lg for lg in logs if int(lg["blockNumber"], 16) <= last]
            with self._lock:
                self.dropped_logs += len(logs) - len(kept)
            reply = {**reply, "result": kept}
        return reply

    async def _lagged(self, call: dict[str, Any], lag: int) -> dict[str, Any] | None:
        """The answer of a node `lag` blocks behind, when it differs from the node's."""
        method, params = call.get("method"), list(call.get("params") or [])
        head = await self._block_number("latest")
        behind = max(head - lag, 0)

        def answer(result: Any) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": result}

        if method == "eth_blockNumber":
            return answer(hex(behind))
        if method == "eth_getBlockByNumber" and params:
            tag = params[0]
            if tag in ("latest", "pending"):
                return await self._forward({**call, "params": [hex(behind), *params[1:]]})
            if tag in ("finalized", "safe"):
                number = await self._block_number(tag)
                if number > behind:
                    return await self._forward({**call, "params": [hex(behind), *params[1:]]})
                return None
            if isinstance(tag, str) and tag.startswith("0x") and int(tag, 16) > behind:
                return answer(None)
        if method == "eth_getTransactionReceipt":
            reply = await self._forward(call)
            result = reply.get("result")
            if isinstance(result, dict) and int(result["blockNumber"], 16) > behind:
                return answer(None)
            return reply
        return None

    async def _call_node(self, call: dict[str, Any]) -> dict[str, Any]:
        if call.get("method") == "eth_getLogs":
            return await self._get_logs(call)
        params = list(call.get("params") or [])
        if (
            self.finalized_is_head
            and call.get("method") == "eth_getBlockByNumber"
            and params
            and params[0] in ("finalized", "safe")
        ):
            return await self._forward({**call, "params": ["latest", *params[1:]]})
        reply = await self._forward(call)
        if (
            self.receipt_fields
            and call.get("method") == "eth_getTransactionReceipt"
            and isinstance(reply.get("result"), dict)
        ):
            reply["result"] = {**reply["result"], **self.receipt_fields}
        return reply

    async def _forward(self, call: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.post(self.upstream, json=call) as resp:
            reply: dict[str, Any] = await resp.json(content_type=None)
            return reply

    async def _block_number(self, arg: int | str) -> int:
        if isinstance(arg, int):
            return arg
        if arg == "earliest":
            return 0
        if arg not in _TAGS_FROM_NODE:
            raise ValueError(f"bad block argument {arg!r}")
        reply = await self._forward(
            {"jsonrpc": "2.0", "id": 0, "method": "eth_getBlockByNumber", "params": [arg, False]}
        )
        return int(reply["result"]["number"], 16)

    async def _get_logs(self, call: dict[str, Any]) -> dict[str, Any]:
        params = call.get("params") or [{}]
        flt = dict(params[0])
        if "blockHash" in flt or (self.max_blocks is None and self.max_results is None):
            return await self._forward(call)
        start = await self._block_number(_block_arg(flt.get("fromBlock")))
        end = await self._block_number(_block_arg(flt.get("toBlock")))
        span = end - start + 1
        within_blocks = self.max_blocks is None or span <= self.max_blocks
        # The block limit alone can refuse without reading anything (except on Alchemy, where
        # a long range still passes when its result is small).
        if not within_blocks and (self.style != "alchemy" or self.max_results is None):
            return self._refuse(call, start, end, None, None)
        reply = await self._forward(call)
        if "error" in reply or self.max_results is None:
            self._record(GetLogsCall(start, end, False, len(reply.get("result") or [])))
            return reply
        logs: list[dict[str, Any]] = reply["result"]
        within_results = len(logs) <= self.max_results
        allowed = (
            (within_blocks or within_results)
            if self.style == "alchemy"
            else (within_blocks and within_results)
        )
        if allowed:
            self._record(GetLogsCall(start, end, False, len(logs)))
            return reply
        return self._refuse(call, start, end, logs, self.max_results)

    def _record(self, entry: GetLogsCall) -> None:
        with self._lock:
            self.getlogs.append(entry)

    def _refuse(
        self,
        call: dict[str, Any],
        start: int,
        end: int,
        logs: list[dict[str, Any]] | None,
        cap: int | None,
    ) -> dict[str, Any]:
        suggested = self._suggest(start, end, logs, cap)
        code, message = self._message(start, end, suggested, too_many_logs=logs is not None)
        hinted = self.style == "alchemy" or (self.style == "infura" and logs is not None)
        self._record(GetLogsCall(start, end, True, None, suggested if hinted else None))
        return _error(call.get("id"), code, message)

    def _suggest(
        self, start: int, end: int, logs: list[dict[str, Any]] | None, cap: int | None
    ) -> int:
        """The last block of the range from `start` the provider says would be answered."""
        candidates = []
        if self.max_blocks is not None:
            candidates.append(start + self.max_blocks - 1)
        if logs is not None and cap is not None:
            numbers = sorted(int(lg["blockNumber"], 16) for lg in logs)
            # The block holding the first log over the cap ends the range just before it.
            candidates.append(numbers[cap] - 1)
        # Alchemy names the wider of its two allowances; the others the narrower.
        best = max(candidates) if self.style == "alchemy" else min(candidates)
        return max(start, min(best, end - 1))

    def _message(
        self, start: int, end: int, suggested: int, *, too_many_logs: bool
    ) -> tuple[int, str]:
        k = self.max_blocks or 0
        n = self.max_results or 0
        span = end - start + 1
        if self.style == "alchemy":
            hint = (
                f"Based on your parameters, this block range should work: "
                f"[{hex(start)}, {hex(suggested)}]"
            )
            if self.max_results is None:
                return -32600, (
                    f"You can make eth_getLogs requests with up to a {k} block range. {hint}"
                )
            return -32602, (
                f"Log response size exceeded. You can make eth_getLogs requests with up to a "
                f"{_k(k)} block range and no limit on the response size, or you can request "
                f"any block range with a cap of {_k(n)} logs in the response. {hint}"
            )
        if self.style == "infura":
            if too_many_logs:
                return -32005, (
                    f"query returned more than {n} results. Try with this block range "
                    f"[0x{start:X}, 0x{suggested:X}]."
                )
            return -32602, f"range {span} exceeds limit of {k}"
        if self.style == "quicknode" and not too_many_logs:
            return -32614, f"eth_getLogs is limited to a {k:,} range"
        if self.style == "nohint":
            return -32000, "query returned too many results" if too_many_logs else (
                "block range too large"
            )
        if too_many_logs:
            return -32005, f"query returned more than {n} results"
        return -32000, f"exceed maximum block range: {k}"


def _only(
    methods: Iterable[str] | None, params: Callable[[list[Any]], bool] | None
) -> dict[str, Any]:
    """The `methods` and `params` fields of a `Fault`."""
    if params is not None and methods is None:
        raise ValueError("a params filter needs the methods whose params it tests")
    return {"methods": frozenset(methods) if methods is not None else None, "params": params}


def _error(call_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}}


def _body_response(fault: Fault, body: bytes) -> web.Response:
    headers = {"Content-Type": fault.content_type}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    return web.Response(status=fault.status, body=body, headers=headers)


def _status_response(status: int, retry_after: str | None = None) -> web.Response:
    if status == 429:
        # What Alchemy sends when throttling: a JSON-RPC error in a 429 response.
        body = _error(
            None,
            429,
            "Your app has exceeded its compute units per second capacity. If you have retries "
            "enabled, you can safely ignore this message.",
        )
        return web.json_response(body, status=429, headers={"Retry-After": retry_after or "0"})
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    text = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(
        status, "Error"
    )
    return web.Response(
        status=status,
        text=f"<html><body><h1>{status} {text}</h1></body></html>",
        content_type="text/html",
        headers=headers,
    )
