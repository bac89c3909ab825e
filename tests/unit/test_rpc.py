"""keeper.chain.rpc without a network: error classification and the one retry layer.

The messages are the ones real providers send (copied from their answers), so the classifier is
held to what the keeper will meet in production: Alchemy, Infura, QuickNode, geth-family nodes
(op-geth, bsc), reth, erigon forks, and the plain "no hint" kind.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

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
from keeper.chain.transport import HttpTransport, ProviderFault

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


class FakeTransport(HttpTransport):
    """Stands in for a provider's HTTP transport: answers from a script, one entry per
    request (the answers' ids are fitted to the request's; an exception entry is raised)."""

    def __init__(self, script: Sequence[Any], url: str = URL_WITH_KEY) -> None:
        super().__init__(url, timeout=1.0)
        self.script = list(script)
        self.requests: list[str] = []
        self.batches = 0

    async def post(self, payload: Any, method: str) -> Any:
        if isinstance(payload, list):
            self.batches += 1
        else:
            self.requests.append(payload["method"])
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return fit_ids(copy.deepcopy(item), payload)


def fit_ids(answer: Any, payload: Any) -> Any:
    """`answer` with the ids of `payload`'s calls: a scripted batch's replies, ranked by their
    scripted ids, answer the calls in order (so a script can give them out of order)."""
    if isinstance(payload, dict) and isinstance(answer, dict):
        answer["id"] = payload["id"]
    elif isinstance(payload, list) and isinstance(answer, list):
        ranked = sorted(answer, key=lambda r: r["id"])
        for call, reply in zip(payload, ranked, strict=False):
            reply["id"] = call["id"]
    return answer


def client_with(
    monkeypatch: pytest.MonkeyPatch, script: Sequence[Any], attempts: int = 4
) -> tuple[ChainClient, FakeTransport]:
    client = ChainClient(URL_WITH_KEY, attempts=attempts, max_backoff=0.001)
    fake = FakeTransport(script)
    client.pool.providers[0].transport = fake
    return client, fake


def ok(result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}


def fault(kind: str, retry_after: float | None = None) -> ProviderFault:
    """What the transport raises when the provider fails (see test_transport for the HTTP
    side: which statuses and bodies make which kind)."""
    return ProviderFault(
        f"eth_chainId: {kind} from https://eth-mainnet.example.com",
        method="eth_chainId",
        kind=kind,
        retry_after=retry_after,
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        fault("transport"),
        fault("timeout"),
        fault("http_502"),
        fault("http_429"),
        fault("bad_body"),
        fault("bad_reply"),
        error(-32000, "header not found"),
        error(429, "Too Many Requests"),
    ],
    ids=["reset", "timeout", "502", "429", "html", "not-jsonrpc", "lagging", "rate-limited"],
)
async def test_transient_failures_are_retried(
    monkeypatch: pytest.MonkeyPatch, failure: Any
) -> None:
    client, fake = client_with(monkeypatch, [failure, failure, ok("0x7a69")])
    assert await client.chain_id() == 31337
    assert fake.requests == ["eth_chainId"] * 3


@pytest.mark.anyio
async def test_retries_stop_with_rpc_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    client, fake = client_with(monkeypatch, [fault("transport")] * 4, attempts=4)
    with pytest.raises(RpcUnavailable) as raised:
        await client.chain_id()
    assert len(fake.requests) == 4
    assert "after 4 attempts" in str(raised.value)
    assert raised.value.method == "eth_chainId"
    assert isinstance(raised.value.__cause__, RpcTransient)


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
async def test_a_refused_batch_falls_back_to_single_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # A provider without batch support answers the whole array with one error object.
    refused = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no batch"}}
    client, fake = client_with(monkeypatch, [refused, ok("a"), ok("b")])
    assert await client.batch([("m1", []), ("m2", [])]) == ["a", "b"]
    assert fake.requests == ["m1", "m2"]


@pytest.mark.anyio
async def test_a_failed_batch_is_sent_again_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [
        {"jsonrpc": "2.0", "id": 1, "result": "a"},
        {"jsonrpc": "2.0", "id": 2, "result": "b"},
    ]
    client, fake = client_with(monkeypatch, [fault("http_502"), replies])
    assert await client.batch([("m1", []), ("m2", [])]) == ["a", "b"]
    assert fake.batches == 2 and fake.requests == []


def test_errors_share_one_root() -> None:
    for cls in (RpcTransient, RpcUnavailable, RpcResponseError, RangeTooLarge):
        assert issubclass(cls, RpcError)


# --------------------------------------------------------------------------- several providers

OTHER_URL = "https://other.example.net:8443/key/0therS3cret"


def two_providers(
    first: Sequence[Any], second: Sequence[Any], attempts: int = 4
) -> tuple[ChainClient, FakeTransport, FakeTransport]:
    client = ChainClient([URL_WITH_KEY, OTHER_URL], attempts=attempts, max_backoff=5.0)
    a, b = FakeTransport(first), FakeTransport(second, OTHER_URL)
    client.pool.providers[0].transport, client.pool.providers[1].transport = a, b
    return client, a, b


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure", [fault("http_502"), fault("bad_body"), error(-32000, "header not found")]
)
async def test_a_failed_request_goes_to_the_next_provider_at_once(failure: Any) -> None:
    client, a, b = two_providers([failure], [ok("0x7a69")])
    with anyio.fail_after(2):  # no backoff: another provider was there to ask (max_backoff 5 s)
        assert await client.chain_id() == 31337
    assert a.requests == ["eth_chainId"] and b.requests == ["eth_chainId"]
    snapshot = {line["provider"]: line for line in client.snapshot()}
    assert snapshot["https://eth-mainnet.example.com"]["healthy"] is False
    assert snapshot["https://other.example.net:8443"]["selected"] is True
    # Reads stay with the provider that answered while it stays healthy.
    b.script.append(ok("0x1"))
    assert await client.request("eth_blockNumber") == "0x1"
    assert a.requests == ["eth_chainId"]


@pytest.mark.anyio
async def test_a_rate_limited_provider_is_kept_out_for_its_retry_after() -> None:
    client, a, _ = two_providers([fault("http_429", retry_after=30.0)], [ok("0x1"), ok("0x2")])
    assert await client.request("eth_blockNumber") == "0x1"
    first = client.pool.providers[0]
    assert first.demoted_until - client.pool.clock() > 25
    assert await client.request("eth_blockNumber") == "0x2"
    assert a.requests == ["eth_blockNumber"]


@pytest.mark.anyio
async def test_every_provider_failing_is_an_outage_naming_them_without_keys() -> None:
    client, _, _ = two_providers([fault("transport")] * 2, [fault("http_503")] * 2, attempts=4)
    client.max_backoff = 0.001
    with pytest.raises(RpcUnavailable) as raised:
        await client.chain_id()
    text = f"{raised.value} {raised.value.help} {client!r}"
    assert "eth-mainnet.example.com" in text and "other.example.net" in text
    assert SECRET not in text and "0therS3cret" not in text


@pytest.mark.anyio
async def test_a_send_is_broadcast_to_every_healthy_provider() -> None:
    client, a, b = two_providers(
        [error(-32000, "already known")], [{"jsonrpc": "2.0", "id": 1, "result": "0xabc"}]
    )
    answers = dict(await client.broadcast("eth_sendRawTransaction", ["0x02"]))
    assert a.requests == b.requests == ["eth_sendRawTransaction"]
    assert answers["https://other.example.net:8443"] == "0xabc"
    assert isinstance(answers["https://eth-mainnet.example.com"], RpcResponseError)


def test_finality_is_what_every_healthy_provider_has_reached() -> None:
    client = ChainClient([URL_WITH_KEY, OTHER_URL])
    pool = client.pool
    pool.saw_head(pool.providers[0], 1000, finalized_tag=990)
    pool.saw_head(pool.providers[1], 998, finalized_tag=900)
    assert client.cap_finalized(936, 64) == 900  # the second has finalized only 900
    pool.saw_head(pool.providers[1], 980, finalized_tag=900)  # lags 20 blocks: not healthy
    assert client.cap_finalized(936, 64) == 936
    assert ChainClient(URL_WITH_KEY).cap_finalized(936, 64) == 936
