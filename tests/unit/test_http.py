"""The health port's request parser and server, without a database or a chain: the parser on
good and bad heads, and the server on a real socket with an empty `HealthState` (and, for the
500 path, a fake pool whose connection answers nonsense)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio
import anyio.abc
import asyncpg
import pytest
from structlog.testing import capture_logs

from keeper.service.health import HealthState
from keeper.service.request_gate import (
    MAX_HEAD,
    BadRequest,
    HeadReader,
    Response,
    encode_response,
    parse_request,
)
from tests.support.http import exchange, parse_reply, request, serving

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------- a raw HTTP client


# ---------------------------------------------------------------------- the parser


def test_a_get_is_parsed_with_its_headers() -> None:
    req = parse_request(
        b"GET /metrics?name[]=x HTTP/1.1\r\nHost: localhost:9464\r\n"
        b"Accept:  text/plain \r\nX-A: 1\r\nx-a: 2"
    )
    assert (req.method, req.path, req.query, req.version) == (
        "GET",
        "/metrics",
        "name[]=x",
        "HTTP/1.1",
    )
    assert req.headers == {"host": "localhost:9464", "accept": "text/plain", "x-a": "1, 2"}


def test_http_1_0_needs_no_host() -> None:
    assert parse_request(b"HEAD /healthz HTTP/1.0").method == "HEAD"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS hello
        (b"GET /healthz", 400),  # no version
        (b"GET /healthz HTTP/1.1 extra\r\nHost: x", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: x", 400),  # two spaces
        (b"G(T /healthz HTTP/1.1\r\nHost: x", 400),
        (b"GET /healthz HTTP/1.1", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: x", 505),
        (b"GET /healthz HTTPS/1.1\r\nHost: x", 400),
        (b"GET http://example.com/healthz HTTP/1.1\r\nHost: x", 400),  # absolute form
        (b"GET * HTTP/1.1\r\nHost: x", 400),
        (b"GET healthz HTTP/1.1\r\nHost: x", 400),
        (b"GET /healthz#top HTTP/1.1\r\nHost: x", 400),
        (b"GET /h\x7f HTTP/1.1\r\nHost: x", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1", 400),
        (b"GET /healthz HTTP/1.1\r\nHost : x", 400),  # whitespace before the colon
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b", 400),
        (b"GET /healthz HTTP/1.1\nHost: x", 400),  # bare LF
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nX: y", 400),  # an empty line inside
        (b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2", 400),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
            400,
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x" + b"\r\nX: y" * 101, 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD, 431),
    ],
)
def test_malformed_heads_are_refused(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        parse_request(head)
    assert err.value.status == status


def test_dot_segments_are_not_resolved() -> None:
    # The routes are matched exactly: "/../healthz" is no route (404), never "/healthz".
    assert parse_request(b"GET /../healthz HTTP/1.1\r\nHost: x").path == "/../healthz"


def feed_all(reader: HeadReader, *chunks: bytes) -> bytes | None:
    """Feed the chunks in order, as a connection receives them; the head once complete."""
    head = None
    for chunk in chunks:
        head = reader.feed(chunk)
    return head


async def test_the_head_is_read_across_chunks_and_the_body_is_left() -> None:
    reader = HeadReader()
    head = feed_all(reader, b"GET / HTTP/1.1\r\nHo", b"st: x\r", b"\n\r\nbody")
    assert head == b"GET / HTTP/1.1\r\nHost: x"
    assert reader.tail == b"body"  # passed on to aiohttp, never read by the gate


async def test_reading_stops_at_the_limit() -> None:
    # An asyncio transport hands over what one recv() gives (up to 256 KiB), so the bound is on
    # what the reader holds: the chunk crossing the limit is refused, nothing of it kept.
    reader = HeadReader()
    data = b"A" * (10 * MAX_HEAD)
    accepted = 0
    with pytest.raises(BadRequest) as err:
        while accepted < len(data):
            reader.feed(data[accepted : accepted + 4096])
            accepted += 4096
    assert err.value.status == 431
    assert accepted <= MAX_HEAD + 4  # refused by the chunk that crossed the limit
    assert len(reader.buffer) <= MAX_HEAD + 4  # never held more than the limit
    with pytest.raises(BadRequest) as err:
        HeadReader().feed(data)  # in one chunk
    assert err.value.status == 431


async def test_a_connection_closed_mid_head_or_before_it() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\n") is None
    with pytest.raises(BadRequest):
        reader.eof()
    HeadReader().eof()  # nothing sent: nothing to answer


def test_the_gates_answers_carry_the_length_and_close() -> None:
    response = Response(200, b"hello", headers=(("Allow", "GET"),))
    full = encode_response(response)
    head, _, body = full.partition(b"\r\n\r\n")
    assert body == b"hello"
    assert b"Content-Length: 5\r\n" in head and b"Connection: close\r\n" in head
    assert b"Allow: GET\r\n" in full


async def test_head_answers_carry_the_length_but_no_body() -> None:
    async with serving(HealthState(chain_id=1)) as port:
        get = await request(port, "GET", "/healthz")
        head = await request(port, "HEAD", "/healthz")
    assert (get.body, head.body) == (b"ok\n", b"")
    assert head.headers["content-length"] == "3" and head.headers["connection"] == "close"
    assert {k: v for k, v in head.headers.items() if k != "date"} == {
        k: v for k, v in get.headers.items() if k != "date"
    }


# ---------------------------------------------------------------------- the server


async def test_an_unconnected_process_is_alive_but_not_ready() -> None:
    state = HealthState(chain_id=31337)
    async with serving(state) as port:
        alive = await request(port, "GET", "/healthz")
        assert (alive.status, alive.body) == (200, b"ok\n")
        assert alive.headers["connection"] == "close"
        ready = await request(port, "GET", "/readyz")
        assert ready.status == 503
        body = ready.json()
        assert body["ready"] is False and body["role"] == "starting"
        assert body["reason"] == ("starting; database not connected yet; rpc not connected yet")
        assert set(body["checks"]) == {"database", "rpc", "backfill", "lag", "role"}
        status = await request(port, "GET", "/status")
        assert status.status == 503
        assert status.json()["process"]["role"] == "starting"
        scraped = await request(port, "GET", "/metrics")
        assert scraped.status == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=")
        assert b'keeper_http_requests_total{code="200",path="/healthz"}' in scraped.body


async def test_only_get_and_head_are_allowed() -> None:
    async with serving(HealthState(chain_id=1)) as port:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
            reply = await request(port, method, "/healthz", body=b'{"role": "leader"}')
            assert reply.status == 405, method
            assert reply.headers["allow"] == "GET, HEAD"
        head = await request(port, "HEAD", "/healthz")
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == "3"
        assert (await request(port, "GET", "/nothing")).status == 404
        assert (await request(port, "GET", "/healthz/")).status == 404


@dataclass
class NonsenseConnection:
    """Answers every query with an empty row: collect_status trips over it."""

    def is_in_transaction(self) -> bool:
        return True

    async def fetchrow(self, *args: Any) -> dict[str, Any]:
        return {}

    async def fetch(self, *args: Any) -> list[dict[str, Any]]:
        return []

    async def fetchval(self, *args: Any) -> None:
        return None


class NonsensePool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[NonsenseConnection]:
        yield NonsenseConnection()


async def test_a_failing_handler_answers_500_and_the_server_goes_on() -> None:
    state = HealthState(chain_id=1, pool=cast(asyncpg.Pool, NonsensePool()))
    async with serving(state) as port:
        with capture_logs() as logs:
            reply = await request(port, "GET", "/status")
        assert reply.status == 500
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["http_handler_failed"]
        assert (await request(port, "GET", "/healthz")).status == 200


async def test_connections_beyond_the_limit_get_503() -> None:
    async with serving(HealthState(chain_id=1), max_connections=2, read_timeout=60) as port:
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        try:
            # The two idle connections are being read from; let the server take them up.
            for _ in range(100):
                refused = parse_reply(await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n"))
                if refused.status == 503:
                    break
                await anyio.sleep(0.01)
            assert refused.status == 503
        finally:
            for stream in idle:
                await stream.aclose()
        for _ in range(100):
            again = parse_reply(await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n"))
            if again.status == 200:
                break
            await anyio.sleep(0.01)
        assert again.status == 200


async def test_a_slow_client_times_out_with_408() -> None:
    async with serving(HealthState(chain_id=1), read_timeout=0.2) as port:
        reply = parse_reply(await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))
        assert reply.status == 408
        assert (await request(port, "GET", "/healthz")).status == 200
