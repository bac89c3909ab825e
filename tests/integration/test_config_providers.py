"""Several RPC providers (`chain.rpc_urls`) against real anvil nodes: `keeper check-config` names
a provider serving another chain, a start excludes it and goes on with the others, an
unreachable provider is reported without stopping a start, and no provider serving the chain
stops it as one wrong RPC does.

Needs the multi-provider `ChainClient` (`labels`, `each`, `exclude`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from keeper import secrets
from keeper.chain.deployment import Deployment
from keeper.chain.preflight import Check, check_all, check_chain
from keeper.config import ConfigError, KeeperConfig
from keeper.config_load import load_config
from keeper.dev.anvil import Anvil, dev_key, free_port
from keeper.ops.deploy import deploy_all

pytestmark = pytest.mark.anyio

OTHER_CHAIN = 999
API_KEY = "pr0vider-k3y"  # in each URL's query string, as hosted RPCs put it


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Deployment:
    """The contracts on the session's anvil node (chain 31337)."""
    return deploy_all(anvil.url, dev_key(0).reveal_hex())


@pytest.fixture
def other(anvil_factory: Callable[..., Anvil]) -> Anvil:
    """An anvil node of another chain."""
    return anvil_factory(chain_id=OTHER_CHAIN)


def keyed(url: str) -> str:
    return f"{url}/?apikey={API_KEY}"


def label(url: str) -> str:
    """A provider's label: its URL as scheme://host:port."""
    return url.split("/?")[0]


def write_config(
    tmp_path: Path, deployed: Deployment, database_url: str, urls: list[str], extra: str = ""
) -> Path:
    (tmp_path / "deployment.json").write_text(deployed.to_json())
    path = tmp_path / "keeper.toml"
    path.write_text(
        f"""[chain]
rpc_urls = {json.dumps(urls)}
deployment_file = "deployment.json"
rpc_timeout = 5.0
rpc_attempts = 1
{extra}
[database]
url = "{database_url}"

[health]
enabled = false
""",
        encoding="utf-8",
    )
    return path


async def chain_check(path: Path) -> Check:
    results = await check_all(path, lambda _: None)
    (check,) = [c for c in results if c.name == "chain"]
    return check


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Loading a configuration registers its secrets process-wide: forget them after."""
    yield
    secrets.clear()


async def test_check_config_names_the_provider_serving_another_chain(
    tmp_path: Path, anvil: Anvil, other: Anvil, deployed: Deployment, database_url: str
) -> None:
    urls = [keyed(anvil.url), keyed(other.url)]
    check = await chain_check(write_config(tmp_path, deployed, database_url, urls))
    assert not check.ok
    assert check.detail.startswith(
        f"chain.rpc_urls: the RPC at {label(other.url)} reports chain {OTHER_CHAIN}, expected 31337"
    ), check.detail
    assert label(anvil.url) not in check.detail  # the good provider is not blamed
    assert API_KEY not in check.detail


async def test_check_config_names_every_provider_serving_the_chain(
    tmp_path: Path, anvil: Anvil, deployed: Deployment, database_url: str
) -> None:
    # One node under two names: two providers, both serving the deployment.
    port = anvil.url.rsplit(":", 1)[1]
    urls = [keyed(anvil.url), keyed(f"http://localhost:{port}")]
    check = await chain_check(write_config(tmp_path, deployed, database_url, urls))
    assert check.ok, check.detail
    assert check.detail.startswith(
        f"2 RPC providers serve chain 31337 ({label(anvil.url)}, http://localhost:{port}) (head "
    ), check.detail
    assert API_KEY not in check.detail


async def test_check_config_fails_on_an_unreachable_provider(
    tmp_path: Path, anvil: Anvil, deployed: Deployment, database_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    urls = [keyed(anvil.url), keyed(dead)]
    check = await chain_check(write_config(tmp_path, deployed, database_url, urls))
    assert not check.ok
    assert f"chain.rpc_urls: the RPC at {dead} cannot be reached" in check.detail, check.detail
    assert API_KEY not in check.detail


def config_of(path: Path) -> tuple[KeeperConfig, Deployment]:
    config = load_config(path)
    return config, config.deployment()


async def test_a_start_excludes_a_provider_serving_another_chain(
    tmp_path: Path, anvil: Anvil, other: Anvil, deployed: Deployment, database_url: str
) -> None:
    # The wrong provider first: kept, it would be the one asked.
    urls = [keyed(other.url), keyed(anvil.url)]
    config, deployment = config_of(write_config(tmp_path, deployed, database_url, urls))
    client = config.chain.client()
    try:
        with capture_logs() as logs:
            facts = await check_chain(config, deployment, client)
        assert facts.chain_id == 31337 and facts.providers == (label(anvil.url),)
        excluded = [e for e in logs if e["event"] == "rpc_provider_excluded"]
        assert len(excluded) == 1 and excluded[0]["log_level"] == "error"
        assert excluded[0]["provider"] == label(other.url)
        assert (excluded[0]["chain_id"], excluded[0]["expected"]) == (OTHER_CHAIN, 31337)
        assert API_KEY not in repr(logs)
        for _ in range(3):
            assert await client.chain_id() == 31337  # the other chain's node is not asked
    finally:
        await client.close()


async def test_a_start_goes_on_without_an_unreachable_provider(
    tmp_path: Path, anvil: Anvil, deployed: Deployment, database_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # The unreachable provider second: this is about the check, not about failing over.
    urls = [keyed(anvil.url), keyed(dead)]
    config, deployment = config_of(write_config(tmp_path, deployed, database_url, urls))
    client = config.chain.client()
    try:
        with capture_logs() as logs:
            facts = await check_chain(config, deployment, client)
        assert facts.providers == (label(anvil.url),)
        unreachable = [e for e in logs if e["event"] == "rpc_provider_unreachable"]
        assert [(e["provider"], e["log_level"]) for e in unreachable] == [(dead, "warning")]
        assert not [e for e in logs if e["event"] == "rpc_provider_excluded"]
        assert API_KEY not in repr(logs)
    finally:
        await client.close()


async def test_no_provider_serving_the_chain_stops_a_start(
    tmp_path: Path, other: Anvil, deployed: Deployment, database_url: str
) -> None:
    port = other.url.rsplit(":", 1)[1]
    urls = [keyed(other.url), keyed(f"http://localhost:{port}")]
    config, deployment = config_of(write_config(tmp_path, deployed, database_url, urls))
    client = config.chain.client()
    try:
        with pytest.raises(ConfigError) as err:
            await check_chain(config, deployment, client)
    finally:
        await client.close()
    message = str(err.value)
    assert message.startswith(f"chain.rpc_urls: the RPC at {label(other.url)} reports chain 999")
    assert f"http://localhost:{port} reports chain 999, expected 31337" in message
    assert API_KEY not in message
