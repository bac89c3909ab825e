"""keeper.chain.transport against a real HTTP server on loopback that answers as failing
providers do: every status a provider returns, bodies that are HTML, cut short, empty or JSON
that is no JSON-RPC answer, `Retry-After`, a connection reset, no answer in time. None of it may
escape as anything but a `ProviderFault` (the retry layer's transient fault), and no message may
carry the URL's API key."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from keeper.chain.rpc import ChainClient, RpcTransient, RpcUnavailable
from keeper.chain.transport import MAX_RETRY_AFTER, HttpTransport, ProviderFault
from keeper.chain.transport import retry_after_seconds as retry_after

KEY = "pr0v1derK3y"
HTML_502 = "<html><body>502 Bad Gateway</body></html>"
Answer = Callable[[web.Request], Any]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[Answer]]]:
    """A loopback server that answers each request with the next scripted handler; the URL
    carries an API key in its path, as hosted providers' URLs do."""
    script: list[Answer] = []

    async def handle(request: web.Request) -> Any:
        return await script.pop(0)(request)

    app = web.Application()
    app.router.add_post("/v2/{key}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v2/{KEY}", script
    await runner.cleanup()


def reply(status: int, body: str | bytes, ctype: str = "text/html", **headers: str) -> Answer:
    async def answer(request: web.Request) -> web.Response:
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=data, headers={"Content-Type": ctype, **headers})

    return answer


def result(value: Any) -> Answer:
    async def answer(request: web.Request) -> web.Response:
        call = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": value})

    return answer


def reset() -> Answer:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()  # the connection drops after the request arrived
        return web.Response()

    return answer


TRUNCATED = b'{"jsonrpc":"2.0","id":1,"result":{"number":"0x10","hash":"0xab'
BODIES: dict[str, tuple[int, str | bytes, str]] = {
    "html-502": (502, HTML_502, "text/html"),
    "html-200": (200, HTML_502, "text/html"),
    "truncated": (200, TRUNCATED, "application/json"),
    "invalid": (200, '{"jsonrpc":"2.0","id":1,"result":', "application/json"),
    "not-json": (200, "not json", "text/plain"),
    "empty": (200, b"", "application/json"),
    "message-only": (200, '{"message":"Internal server error"}', "application/json"),
    "empty-array": (200, "[]", "application/json"),
    "null": (200, "null", "application/json"),
    "binary": (200, b"\xff\xfe\x00garbage", "application/octet-stream"),
    "truncated-502": (502, TRUNCATED, "application/json"),
}
STATUSES = [400, 401, 403, 404, 405, 408, 413, 429, 500, 502, 503, 504, 520, 524, 301]


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(BODIES))
async def test_a_body_that_is_no_answer_is_a_provider_fault(
    server: tuple[str, list[Answer]], name: str
) -> None:
    url, script = server
    status, body, ctype = BODIES[name]
    script.append(reply(status, body, ctype))
    transport = HttpTransport(url, timeout=5)
    with pytest.raises(ProviderFault) as raised:
        await transport.post({"id": 1, "method": "eth_chainId"}, "eth_chainId")
    await transport.close()
    fault = raised.value
    assert isinstance(fault, RpcTransient)
    if status != 200:
        assert fault.kind == f"http_{status}"
    elif name in ("message-only", "empty-array", "null"):
        assert fault.kind == "bad_reply"  # JSON, but no JSON-RPC answer
    else:
        assert fault.kind == "bad_body"
    assert KEY not in str(fault) and "127.0.0.1" in str(fault)
    assert "Bad Gateway" not in str(fault)  # a body is described, never quoted


@pytest.mark.anyio
@pytest.mark.parametrize("status", STATUSES)
async def test_every_error_status_is_a_provider_fault(
    server: tuple[str, list[Answer]], status: int
) -> None:
    url, script = server
    script.append(reply(status, f"error {status} at /v2/{KEY}", "text/plain"))
    transport = HttpTransport(url, timeout=5)
    with pytest.raises(ProviderFault) as raised:
        await transport.post({"id": 1}, "eth_blockNumber")
    await transport.close()
    assert raised.value.kind == f"http_{status}"
    assert f"HTTP {status}" in str(raised.value) and KEY not in str(raised.value)


@pytest.mark.anyio
async def test_a_json_rpc_error_with_a_4xx_status_is_an_answer(
    server: tuple[str, list[Answer]],
) -> None:
    """Some providers send a JSON-RPC error answer with HTTP 400: it is the node's answer (a
    revert, a refused send), not a provider fault."""
    url, script = server
    body = '{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted"}}'
    script.append(reply(400, body, "application/json"))
    transport = HttpTransport(url, timeout=5)
    answer = await transport.post({"id": 1}, "eth_call")
    await transport.close()
    assert answer["error"]["message"] == "execution reverted"


@pytest.mark.anyio
async def test_rate_limits_carry_their_retry_after(server: tuple[str, list[Answer]]) -> None:
    url, script = server
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    script += [
        reply(429, "slow down", "text/plain", **{"Retry-After": "3"}),
        reply(503, "maintenance", "text/plain", **{"Retry-After": when}),
        reply(429, "slow down", "text/plain", **{"Retry-After": "86400"}),
    ]
    transport = HttpTransport(url, timeout=5)
    seen = []
    for _ in range(3):
        with pytest.raises(ProviderFault) as raised:
            await transport.post({"id": 1}, "eth_getLogs")
        seen.append(raised.value.retry_after)
    await transport.close()
    assert seen[0] == 3.0
    assert seen[1] is not None and 15 < seen[1] <= 20
    assert seen[2] == MAX_RETRY_AFTER


def test_unreadable_retry_after_is_ignored() -> None:
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("nan") is None
    assert retry_after("-5") == 0.0


@pytest.mark.anyio
async def test_a_reset_and_a_timeout_are_provider_faults(server: tuple[str, list[Answer]]) -> None:
    url, script = server

    async def slow(request: web.Request) -> web.Response:
        import anyio

        await anyio.sleep(2)
        return web.Response()

    script += [reset(), slow]
    transport = HttpTransport(url, timeout=0.5)
    with pytest.raises(ProviderFault) as raised:
        await transport.post({"id": 1}, "eth_sendRawTransaction")
    assert raised.value.kind == "transport" and KEY not in str(raised.value)
    with pytest.raises(ProviderFault) as raised:
        await transport.post({"id": 1}, "eth_blockNumber")
    assert raised.value.kind == "timeout"
    await transport.close()


@pytest.mark.anyio
async def test_a_refused_connection_is_a_provider_fault() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    transport = HttpTransport(f"http://127.0.0.1:{port}/v2/{KEY}", timeout=2)
    with pytest.raises(ProviderFault) as raised:
        await transport.post({"id": 1}, "eth_chainId")
    assert raised.value.kind == "transport" and KEY not in str(raised.value)
    await transport.close()


@pytest.mark.anyio
async def test_the_client_rides_out_a_bad_minute(server: tuple[str, list[Answer]]) -> None:
    """Through the client: HTML 502, a truncated 200 and a reset are retried, and the answer
    that follows counts; with nothing but failures, the client raises `RpcUnavailable` (which
    every loop of the daemon reports and waits out), never a decoding error."""
    url, script = server
    script += [
        reply(502, HTML_502),
        reply(200, TRUNCATED, "application/json"),
        reset(),
        result("0x7a69"),
    ]
    client = ChainClient(url, attempts=4, max_backoff=0.01)
    assert await client.chain_id() == 31337
    script += [reply(502, HTML_502)] * 2
    client.attempts = 2
    with pytest.raises(RpcUnavailable) as raised:
        await client.chain_id()
    assert "HTTP 502" in str(raised.value) and KEY not in str(raised.value)
    await client.close()
