"""keeper.chain.rpc without a network: error classification and the one retry layer.

The messages are the ones real providers send (copied from their answers), so the classifier is
held to what the keeper will meet in production: Alchemy, Infura, QuickNode, geth-family nodes
(op-geth, bsc), reth, erigon forks, and the plain "no hint" kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from keeper.chain.rpc import (
    BlockHeader,
    ChainClient,
    RangeTooLarge,
    RpcError,
    RpcResponseError,
    RpcTransient,
    RpcUnavailable,
    classify_error,
)

ALCHEMY_PAID = (
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range "
    "and no limit on the response size, or you can request any block range with a cap of 10K "
    "logs in the response. Based on your parameters, this block range should work: [0x1, 0x4b7]"
)

# (code, message, suggested_to, max_blocks): what the classifier must read out of each.
RANGE_ERRORS: list[Any] = [
    pytest.param(
        -32600,
        "You can make eth_getLogs requests with up to a 500 block range. Based on your "
        "parameters, this block range should work: [0x1be4213, 0x1be4406]",
        0x1BE4406,
        500,
        id="alchemy-free-tier",
    ),
    pytest.param(
        -32600,
        "Under the Free tier plan, you can make eth_getLogs requests with up to a 10 block range. "
        "Based on your parameters, this block range should work: [0x1312d00, 0x1312d09]",
        0x1312D09,
        10,
        id="alchemy-free-tier-10",
    ),
    # "2K" is two thousand blocks, not two; "10K" is a cap on logs, not on blocks.
    pytest.param(-32602, ALCHEMY_PAID, 0x4B7, 2000, id="alchemy-log-response-size"),
    pytest.param(
        -32005,
        "query returned more than 10000 results. Try with this block range [0x1D6C3A0, 0x1D6C9F1].",
        0x1D6C9F1,
        None,  # 10000 is a number of results
        id="infura-results",
    ),
    pytest.param(-32602, "range 1000000 exceeds limit of 10000", None, 10000, id="infura-range"),
    pytest.param(-32000, "exceed maximum block range: 5000", None, 5000, id="op-geth-bsc"),
    pytest.param(-32614, "eth_getLogs is limited to a 10,000 range", None, 10000, id="quicknode"),
    pytest.param(-32000, "block range too large", None, None, id="no-hint"),
    pytest.param(-32000, "Block range is too large", None, None, id="no-hint-capitalised"),
    pytest.param(
        -32000, "block range is bigger than maxBlockRange", None, None, id="scroll-no-number"
    ),
    pytest.param(-32005, "block range too large, max range: 1000", None, 1000, id="cdk-erigon"),
    pytest.param(-32602, "query exceeds max block range 100000", None, 100000, id="reth-range"),
    pytest.param(
        -32000,
        "Try with this block range [100, 199].",  # decimal numbers in the brackets
        199,
        None,
        id="decimal-suggestion",
    ),
]

# Messages whose numbers the classifier need not read, but must never misread: the range or
# maximum it reports, if any, is the right one (a wrong max_blocks sends backfill off course).
RANGE_ERRORS_LENIENT: list[Any] = [
    pytest.param(
        -32005,
        "eth_getLogs block range too large, range: 855077, max: 3500",
        None,
        3500,
        id="range-and-max",
    ),
    pytest.param(
        -32000,
        "block range is larger than max block range, block range = 5120, max block range = 5000",
        None,
        5000,
        id="morph-larger-than-max",
    ),
    pytest.param(
        -32000, "block range is too wide (maximum 1024)", None, 1024, id="moonbeam-too-wide"
    ),
    pytest.param(
        -32602,
        "query exceeds max results 20000, retry with the range 24383075-24383089",
        24383089,
        None,  # 20000 is a number of results
        id="reth-results",
    ),
]


@pytest.mark.parametrize(("code", "message", "suggested_to", "max_blocks"), RANGE_ERRORS)
def test_range_limits_are_read(
    code: int, message: str, suggested_to: int | None, max_blocks: int | None
) -> None:
    err = classify_error("eth_getLogs", {"code": code, "message": message})
    assert isinstance(err, RangeTooLarge)
    assert err.suggested_to == suggested_to
    assert err.max_blocks == max_blocks
    assert err.code == code
    assert err.method == "eth_getLogs"
    assert message in str(err)


@pytest.mark.parametrize(("code", "message", "suggested_to", "max_blocks"), RANGE_ERRORS_LENIENT)
def test_range_limits_are_never_misread(
    code: int, message: str, suggested_to: int | None, max_blocks: int | None
) -> None:
    err = classify_error("eth_getLogs", {"code": code, "message": message})
    assert isinstance(err, RangeTooLarge)
    assert err.suggested_to in (None, suggested_to)
    assert err.max_blocks in (None, max_blocks)


def test_a_hint_in_the_data_field_is_read() -> None:
    err = classify_error(
        "eth_getLogs",
        {"code": -32602, "message": "invalid params", "data": "exceed maximum block range: 2000"},
    )
    assert isinstance(err, RangeTooLarge)
    assert err.max_blocks == 2000


def test_range_words_from_other_methods_are_not_range_limits() -> None:
    err = classify_error("eth_call", {"code": -32000, "message": "block range too large"})
    assert not isinstance(err, RangeTooLarge)
    assert isinstance(err, RpcResponseError)


@pytest.mark.parametrize(
    ("method", "code", "message"),
    [
        ("eth_getBlockByNumber", -32000, "header not found"),
        ("eth_getLogs", -32000, "unknown block"),
        (
            "eth_getLogs",
            429,
            "Your app has exceeded its compute units per second capacity. If you have retries "
            "enabled, you can safely ignore this message.",
        ),
        ("eth_getLogs", -32005, "project ID request rate exceeded"),
        ("eth_getLogs", -32005, "limit exceeded"),
        ("eth_chainId", -32016, "Too Many Requests"),
        ("eth_blockNumber", -32603, "internal error"),
        ("eth_getLogs", -32000, "request timed out"),
        ("eth_getBlockByNumber", -32000, "server is busy, try again later"),
    ],
)
def test_transient_errors(method: str, code: int, message: str) -> None:
    err = classify_error(method, {"code": code, "message": message})
    assert type(err) is RpcTransient, err


@pytest.mark.parametrize(
    ("method", "code", "message"),
    [
        ("eth_call", 3, "execution reverted"),
        ("eth_getLogs", -32602, "invalid argument 0: hex string without 0x prefix"),
        ("eth_sendRawTransaction", -32000, "nonce too low"),
        ("eth_foo", -32601, "the method eth_foo does not exist/is not available"),
    ],
)
def test_other_errors_are_final(method: str, code: int, message: str) -> None:
    err = classify_error(method, {"code": code, "message": message})
    assert type(err) is RpcResponseError
    assert err.code == code


def test_block_header_from_rpc() -> None:
    header = BlockHeader.from_rpc(
        {
            "number": "0x1b4",
            "hash": "0x" + "ab" * 32,
            "parentHash": "0x" + "cd" * 32,
            "timestamp": "0x6553f100",
        }
    )
    assert header == BlockHeader(436, "0x" + "ab" * 32, "0x" + "cd" * 32, 1_700_000_000)


# --------------------------------------------------------------------------- the retry layer

SECRET = "s3cr3tApiKey0123456789"
URL_WITH_KEY = f"https://eth-mainnet.example.com/v2/{SECRET}"


class FakeProvider:
    """Stands in for AsyncHTTPProvider: answers from a script, one entry per request."""

    def __init__(self, script: Sequence[Any]) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        self.batches = 0

    def _next(self) -> Any:
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def make_request(self, method: str, params: Any) -> Any:
        self.requests.append(method)
        return self._next()

    async def make_batch_request(self, calls: Any) -> Any:
        self.batches += 1
        return self._next()


def client_with(
    monkeypatch: pytest.MonkeyPatch, script: Sequence[Any], attempts: int = 4
) -> tuple[ChainClient, FakeProvider]:
    client = ChainClient(URL_WITH_KEY, attempts=attempts, max_backoff=0.001)
    fake = FakeProvider(script)
    monkeypatch.setattr(client.provider, "make_request", fake.make_request)
    monkeypatch.setattr(client.provider, "make_batch_request", fake.make_batch_request)
    return client, fake


def ok(result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}


def http_error(status: int) -> aiohttp.ClientResponseError:
    """What aiohttp raises for an HTTP error status: it names the full URL."""
    info = aiohttp.RequestInfo(
        URL(URL_WITH_KEY), "POST", CIMultiDictProxy(CIMultiDict()), URL(URL_WITH_KEY)
    )
    return aiohttp.ClientResponseError(info, (), status=status, message="Bad Gateway")


def test_the_provider_does_not_retry_on_its_own() -> None:
    client = ChainClient("http://127.0.0.1:8545")
    assert client.provider.exception_retry_configuration is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        http_error(502),
        http_error(429),
        error(-32000, "header not found"),
        error(429, "Too Many Requests"),
    ],
    ids=["disconnected", "reset", "refused", "timeout", "502", "429", "lagging", "rate-limited"],
)
async def test_transient_failures_are_retried(
    monkeypatch: pytest.MonkeyPatch, failure: Any
) -> None:
    client, fake = client_with(monkeypatch, [failure, failure, ok("0x7a69")])
    assert await client.chain_id() == 31337
    assert fake.requests == ["eth_chainId"] * 3


@pytest.mark.anyio
async def test_retries_stop_with_rpc_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    client, fake = client_with(monkeypatch, [aiohttp.ServerDisconnectedError()] * 4, attempts=4)
    with pytest.raises(RpcUnavailable) as raised:
        await client.chain_id()
    assert len(fake.requests) == 4
    assert "after 4 attempts" in str(raised.value)
    assert raised.value.method == "eth_chainId"
    assert isinstance(raised.value.__cause__, RpcTransient)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 502])
async def test_rpc_errors_never_show_the_api_key(
    monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """The URL's path carries the provider's API key: errors (which are logged) omit it."""
    client, _ = client_with(monkeypatch, [http_error(status)] * 2, attempts=2)
    with pytest.raises(RpcUnavailable) as raised:
        await client.chain_id()
    assert "eth-mainnet.example.com" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(client)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "params", "reply"),
    [
        ("eth_getLogs", [{}], error(-32000, "exceed maximum block range: 5000")),
        ("eth_call", [{}, "latest"], error(3, "execution reverted")),
        ("eth_estimateGas", [{}], error(-32000, "insufficient funds for gas * price + value")),
        ("eth_sendRawTransaction", ["0x00"], error(-32000, "nonce too low")),
        ("eth_getBlockByNumber", ["finalized", False], error(-39001, "unknown block")),
        ("eth_getBlockByNumber", ["finalized", False], error(-32000, "finalized block not found")),
        ("eth_getBlockByNumber", ["safe", False], error(-32602, "invalid block tag")),
    ],
    ids=["range", "revert", "estimate", "send", "unknown-block", "no-finalized", "no-safe-tag"],
)
async def test_answers_with_meaning_are_not_retried(
    monkeypatch: pytest.MonkeyPatch, method: str, params: list[Any], reply: dict[str, Any]
) -> None:
    """Error answers the caller acts on (a range limit, a revert, a send refusal, a node
    without the `finalized` tag) come back at once, typed."""
    client, fake = client_with(monkeypatch, [reply])
    with pytest.raises(RpcResponseError):
        await client.request(method, params)
    assert fake.requests == [method]


READ_CALLS: list[tuple[str, list[Any]]] = [
    ("eth_getBlockByNumber", ["latest", False]),
    ("eth_getBlockByNumber", ["0x10", False]),
    ("eth_getBlockByHash", ["0x" + "ab" * 32, False]),
    ("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x2"}]),
    ("eth_getTransactionReceipt", ["0x" + "ab" * 32]),
    ("eth_getTransactionCount", ["0x" + "11" * 20, "pending"]),
    ("eth_getBalance", ["0x" + "11" * 20, "latest"]),
    ("eth_chainId", []),
    ("eth_blockNumber", []),
    ("eth_gasPrice", []),
    ("eth_getCode", ["0x" + "11" * 20, "latest"]),
]
# Error answers providers give to reads when a backend fails (their own words).
READ_FAILURES = [
    error(-32600, "bad request"),
    error(-32000, "missing trie node 2b3a... (path )"),
    error(-32601, "the method eth_getLogs does not exist/is not available"),
    error(-32602, "invalid argument 0: json: cannot unmarshal hex string"),
    {"jsonrpc": "2.0", "id": 1, "error": "upstream failed"},  # a bare string, not an object
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "params"), READ_CALLS, ids=[m for m, _ in READ_CALLS])
@pytest.mark.parametrize("reply", READ_FAILURES, ids=["bad", "trie", "nomethod", "invalid", "str"])
async def test_error_answers_to_reads_are_retried(
    monkeypatch: pytest.MonkeyPatch, method: str, params: list[Any], reply: dict[str, Any]
) -> None:
    """A read's error answer is the node failing: asked again, and the answer that follows
    counts."""
    client, fake = client_with(monkeypatch, [reply, reply, ok("0x1")])
    assert await client.request(method, params) == "0x1"
    assert fake.requests == [method] * 3


@pytest.mark.anyio
async def test_a_read_that_keeps_failing_is_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the attempts, a read's error answers are `RpcUnavailable`, which the daemon's loops
    wait out; the provider's text (which may repeat the request path) stays in the message."""
    client, fake = client_with(monkeypatch, [error(-32600, "bad request")] * 3, attempts=3)
    with pytest.raises(RpcUnavailable) as raised:
        await client.head()
    assert fake.requests == ["eth_getBlockByNumber"] * 3
    assert "bad request" in str(raised.value) and "after 3 attempts" in str(raised.value)


@pytest.mark.anyio
async def test_a_node_without_the_finalized_tag_falls_back_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, fake = client_with(monkeypatch, [error(-39001, "unknown block")])
    head = BlockHeader(1000, "0x" + "ab" * 32, "0x" + "cd" * 32, 1_700_000_000)
    assert await client.finalized(head, 64) == 936
    assert fake.requests == ["eth_getBlockByNumber"]


@pytest.mark.anyio
async def test_a_read_error_inside_a_batch_is_asked_again_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replies = [
        {"jsonrpc": "2.0", "id": 1, "result": "a"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32600, "message": "bad request"}},
    ]
    client, fake = client_with(monkeypatch, [replies, error(-32600, "bad request"), ok("b")])
    calls: list[tuple[str, Sequence[Any]]] = [
        ("eth_getBlockByNumber", ["latest", False]),
        ("eth_getTransactionReceipt", ["0x" + "ab" * 32]),
    ]
    assert await client.batch(calls) == ["a", "b"]
    assert fake.requests == ["eth_getTransactionReceipt"] * 2


@pytest.mark.anyio
async def test_a_refused_range_carries_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = client_with(monkeypatch, [error(-32602, ALCHEMY_PAID)])
    with pytest.raises(RangeTooLarge) as raised:
        await client.get_logs(["0x" + "11" * 20], 1, 5_000)
    assert raised.value.suggested_to == 0x4B7


@pytest.mark.anyio
async def test_batch_results_come_back_in_call_order(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [
        {"jsonrpc": "2.0", "id": 8, "result": "b"},
        {"jsonrpc": "2.0", "id": 7, "result": "a"},
        {"jsonrpc": "2.0", "id": 9, "result": "c"},
    ]
    client, fake = client_with(monkeypatch, [replies])
    calls: list[tuple[str, Sequence[Any]]] = [("m1", []), ("m2", []), ("m3", [])]
    assert await client.batch(calls) == ["a", "b", "c"]
    assert fake.batches == 1


@pytest.mark.anyio
async def test_a_transient_error_inside_a_batch_is_retried_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replies = [
        {"jsonrpc": "2.0", "id": 1, "result": "a"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32000, "message": "header not found"}},
    ]
    client, fake = client_with(monkeypatch, [replies, ok("b")])
    assert await client.batch([("m1", []), ("m2", [])]) == ["a", "b"]
    assert fake.requests == ["m2"]


@pytest.mark.anyio
async def test_a_final_error_inside_a_batch_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [
        {"jsonrpc": "2.0", "id": 1, "result": "a"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": 3, "message": "execution reverted"}},
    ]
    client, _ = client_with(monkeypatch, [replies])
    with pytest.raises(RpcResponseError):
        await client.batch([("m1", []), ("m2", [])])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        aiohttp.ServerDisconnectedError(),
        http_error(502),
        # A provider without batch support answers the whole array with one error object.
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch not allowed"}},
    ],
    ids=["disconnected", "502", "batches-refused"],
)
async def test_a_failed_batch_falls_back_to_single_calls(
    monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    client, fake = client_with(monkeypatch, [answer, ok("a"), ok("b")])
    assert await client.batch([("m1", []), ("m2", [])]) == ["a", "b"]
    assert fake.requests == ["m1", "m2"]


def test_errors_share_one_root() -> None:
    for cls in (RpcTransient, RpcUnavailable, RpcResponseError, RangeTooLarge):
        assert issubclass(cls, RpcError)
