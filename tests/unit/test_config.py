"""Configuration: the example loads, mistakes name their field, secrets stay hidden."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address
from pydantic import BaseModel

from keeper import secrets
from keeper.chain.signers import KeySource, check_signers
from keeper.config import (
    ChainConfig,
    ConfigError,
    DaemonConfig,
    DatabaseConfig,
    HealthConfig,
    IngestConfig,
    KeeperConfig,
    LogConfig,
    PlanConfig,
    RetentionConfig,
    SignerConfig,
    TxConfig,
)
from keeper.config_load import env_overrides, load_config
from keeper.config_text import effective, to_toml

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
[chain]
rpc_url = "https://rpc.example/v2/SECRETKEY"
deployment_file = "deployment.json"
[database]
url = "postgresql://keeper:hunter2@db/keeper"
"""


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Loading a configuration registers its secrets process-wide: forget them after each
    test, so they are not scrubbed from the output of tests that run later."""
    yield
    secrets.clear()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def test_the_example_configuration_loads() -> None:
    config = load_config(ROOT / "config" / "keeper.example.toml")
    assert config.ingest.poll_interval == 1.0
    assert config.tx.confirmations == 3
    # The example's [plan] values are the defaults, field by field.
    assert config.plan == PlanConfig()
    assert config.signers == []
    # Relative paths are relative to the file.
    assert config.chain.deployment_file.is_absolute()


def test_unknown_keys_are_refused_with_their_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[ingest]\npoll_intervall = 2\n")
    with pytest.raises(ConfigError, match=r"ingest\.poll_intervall"):
        load_config(path)


def test_bad_values_name_field_value_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[ingest]\npoll_interval = -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "ingest.poll_interval" in text and "-1" in text and "greater than 0" in text


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("plan", "unknown_stream_grace", "inf"),
        ("ingest", "poll_interval", "nan"),
        ("daemon", "shutdown_grace", "inf"),
    ],
)
def test_infinity_and_nan_are_refused(tmp_path: Path, section: str, field: str, value: str) -> None:
    """`unknown_stream_grace = inf` used to pass and then stop the start with an OverflowError."""
    path = write(tmp_path, MINIMAL + f"[{section}]\n{field} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{section}.{field}" in str(err.value) and "finite" in str(err.value)


def test_a_bad_plan_value_names_its_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[plan]\nsettle_max_interval = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "plan.settle_max_interval" in str(err.value) and "greater than 0" in str(err.value)


@pytest.mark.parametrize("value", ["0", "2", "4"])
def test_pass_connections_is_one_or_three(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, MINIMAL + f"[plan]\npass_connections = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"plan.pass_connections: Input should be 1 or 3 (got {value})" in str(err.value)
    for good in (1, 3):
        path = write(tmp_path, MINIMAL + f"[plan]\npass_connections = {good}\n")
        assert load_config(path).plan.pass_connections == good


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("keep_days", "29", "must be at least 30 (days): keeper.settlement_totals counts"),
        ("keep_days", "-1", "must be at least 30"),
        ("keep_days", "1.5", "valid integer"),
        ("mode", '"purge"', "should match pattern '^(archive|delete)$'"),
        ("batch_rows", "0", "greater than or equal to 1"),
        ("batch_rows", "100001", "less than or equal to 100000"),
        ("interval", "0", "greater than 0"),
        ("batch_pause", "-0.5", "greater than or equal to 0"),
        ("enabled", '"sometimes"', "valid boolean"),
        ("keep_dayz", "90", "unknown key"),
    ],
)
def test_a_bad_retention_value_names_its_field(
    tmp_path: Path, field: str, value: str, problem: str
) -> None:
    path = write(tmp_path, MINIMAL + f"[retention]\n{field} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"retention.{field}: " in message and problem in message, message


def test_retention_settings_load_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert RetentionConfig() == RetentionConfig(
        enabled=True, keep_days=90, mode="archive", batch_rows=1_000, interval=3_600.0
    )
    text = MINIMAL + '[retention]\nkeep_days = 30\nmode = "delete"\nbatch_rows = 3\n'
    monkeypatch.setenv("KEEPER_RETENTION__ENABLED", "false")
    config = load_config(write(tmp_path, text))
    assert config.retention == RetentionConfig(
        enabled=False, keep_days=30, mode="delete", batch_rows=3
    )


def test_missing_rpc_url_and_secrets_never_shown(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('rpc_url = "https://rpc.example/v2/SECRETKEY"\n', ""))
    with pytest.raises(ConfigError, match=r"chain\.rpc_url"):
        load_config(path)
    bad = MINIMAL.replace("[database]", "[database]\npool_min = 0")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    assert "hunter2" not in str(err.value) and "SECRETKEY" not in str(err.value)
    config = load_config(write(tmp_path, MINIMAL))
    assert "SECRETKEY" not in repr(config) and "hunter2" not in repr(config)


def test_a_signer_needs_exactly_one_source(tmp_path: Path) -> None:
    both = MINIMAL + '[[signers]]\ncredential = "a"\nkeystore = "k.json"\npassword_file = "p"\n'
    with pytest.raises(ConfigError, match=r"signers\.0"):
        load_config(write(tmp_path, both))
    no_password = MINIMAL + '[[signers]]\nkeystore = "k.json"\n'
    with pytest.raises(ConfigError, match="password_file"):
        load_config(write(tmp_path, no_password))
    ok = load_config(write(tmp_path, MINIMAL + '[[signers]]\ncredential = "lane1"\n'))
    assert ok.signers[0].source().credential == "lane1"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_INGEST__POLL_INTERVAL", "0.5")
    config = load_config(write(tmp_path, MINIMAL + "[ingest]\npoll_interval = 3\n"))
    assert config.ingest.poll_interval == 0.5


# --------------------------------------------------------------------------- the example file

SECTIONS: dict[str, type[BaseModel]] = {
    "ingest": IngestConfig,
    "tx": TxConfig,
    "plan": PlanConfig,
    "log": LogConfig,
    "health": HealthConfig,
    "daemon": DaemonConfig,
    "retention": RetentionConfig,
}


def test_the_example_holds_the_defaults_of_every_section(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.upper().startswith("KEEPER_"):
            monkeypatch.delenv(name)  # e.g. the test session's KEEPER_HEALTH__PORT=0
    config = load_config(ROOT / "config" / "keeper.example.toml")
    for name, model in SECTIONS.items():
        assert getattr(config, name) == model(), name
    # [chain] and [database]: the required fields have examples, the rest their defaults
    # (rpc_url or rpc_urls must be set: the example sets rpc_url).
    chain_defaults = {
        k: f.default
        for k, f in ChainConfig.model_fields.items()
        if not f.is_required() and k != "rpc_url"
    }
    assert {k: getattr(config.chain, k) for k in chain_defaults} == chain_defaults
    database_defaults = {
        k: f.default for k, f in DatabaseConfig.model_fields.items() if not f.is_required()
    }
    assert {k: getattr(config.database, k) for k in database_defaults} == database_defaults


def _example_keys() -> dict[str, set[str]]:
    """The keys the example sets or shows commented out (`# key = ...`), per section."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in (ROOT / "config" / "keeper.example.toml").read_text().splitlines():
        text = line.lstrip("# ").strip()
        header = re.fullmatch(r"\[\[?([a-z_]+)\]\]?", text)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"([a-z_]+) = ", text)
        if key and section:
            found.setdefault(section, set()).add(key.group(1))
    return found


def test_the_example_documents_every_field() -> None:
    keys = _example_keys()
    models: dict[str, type[BaseModel]] = {
        **SECTIONS,
        "chain": ChainConfig,
        "database": DatabaseConfig,
        "signers": SignerConfig,
    }
    for name, model in models.items():
        missing = set(model.model_fields) - keys.get(name, set())
        assert not missing, f"[{name}] fields missing from the example: {sorted(missing)}"
        unknown = keys.get(name, set()) - set(model.model_fields)
        assert not unknown, f"[{name}] keys in the example that are not fields: {sorted(unknown)}"
    assert set(keys) == set(models)


# --------------------------------------------------------------------------- error messages


def test_a_missing_field_is_named_without_echoing_its_section(tmp_path: Path) -> None:
    # The section's other values (here the RPC URL with its API key) must not be shown.
    text = MINIMAL.replace('deployment_file = "deployment.json"\n', "")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "chain.deployment_file: required but not set" in message
    assert "KEEPER_CHAIN__DEPLOYMENT_FILE" in message
    assert "SECRETKEY" not in message
    with pytest.raises(ConfigError, match=r"database: required but not set") as err:
        load_config(write(tmp_path, MINIMAL.split("[database]")[0]))
    assert "SECRETKEY" not in str(err.value)


def test_unknown_keys_get_a_suggestion_and_their_value_is_not_shown(tmp_path: Path) -> None:
    text = MINIMAL + '[ingest]\npoll_intervall = 2\n[[signers]]\ncredentail = "x"\n'
    text = text.replace("[chain]\n", '[chain]\nrpc_ulr = "https://rpc.example/v2/OTHERKEY"\n')
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "ingest.poll_intervall: unknown key" in message
    assert "did you mean 'poll_interval'?" in message
    assert "did you mean 'rpc_url'?" in message
    assert "signers.0.credentail: unknown key" in message
    assert "OTHERKEY" not in message


def test_an_environment_override_is_named_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_TX__CONFIRMATIONS", "0")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL))
    message = str(err.value)
    assert "tx.confirmations" in message
    assert "greater than or equal to 1" in message
    assert "(got '0' from KEEPER_TX__CONFIRMATIONS)" in message


def test_a_secret_value_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_DATABASE__URL", "")
    bad = MINIMAL.replace('rpc_url = "https://rpc.example/v2/SECRETKEY"', "rpc_url = 12")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    assert "chain.rpc_url" in str(err.value)
    assert "<secret>" in str(err.value)


def test_relative_paths_are_absolute_even_from_a_relative_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("keeper.toml"))
    assert config.chain.deployment_file == tmp_path / "deployment.json"


# --------------------------------------------------------------------------- URLs and secrets


@pytest.mark.parametrize(
    ("field", "line", "problem"),
    [
        # `wss//` (a missing colon) passed `check-config` before.
        ("chain.ws_url", 'ws_url = "wss//ws.example/v2/WSKEY1"', "does not start with ws://"),
        ("chain.ws_url", 'ws_url = "https://ws.example/v2/WSKEY1"', "scheme is not ws or wss"),
        ("chain.rpc_url", 'rpc_url = "ws://rpc.example/v2/WSKEY1"', "scheme is not http"),
        ("chain.rpc_url", 'rpc_url = "https://rpc.example:99999/WSKEY1"', "port is not a number"),
        ("chain.rpc_url", 'rpc_url = "rpc.example/v2/WSKEY1"', "does not start with http://"),
        ("database.url", 'url = "keeper:WSKEY1@db:5432/keeper"', "does not start with postgres"),
        ("database.url", 'url = "postgresql://k:WSKEY1/x@db/k"', "percent-encoded (%2F"),
        ("database.url", "url = \"host=db password='WSKEY1 x'\"", "key=value connection string"),
    ],
)
def test_urls_are_checked_and_never_echoed(
    tmp_path: Path, field: str, line: str, problem: str
) -> None:
    text = MINIMAL.replace('rpc_url = "https://rpc.example/v2/SECRETKEY"', "")
    text = text.replace('url = "postgresql://keeper:hunter2@db/keeper"', "")
    text = text.replace("[chain]", '[chain]\nrpc_url = "https://rpc.example/v2/SECRETKEY"')
    text = text.replace("[database]", '[database]\nurl = "postgresql://keeper:hunter2@db/keeper"')
    section = "[chain]" if field.startswith("chain") else "[database]"
    key = line.split(" = ")[0]
    kept = [x for x in text.splitlines() if not x.startswith(f"{key} = ")]
    text = "\n".join(kept).replace(section, f"{section}\n{line}")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert f"{field}: " in message and problem in message, message
    assert "(got <secret>)" in message
    assert "WSKEY1" not in message and "Value error" not in message
    assert "WSKEY1" in "".join(secrets.registered())  # registered although refused


def test_good_url_forms_load(tmp_path: Path) -> None:
    text = MINIMAL.replace("https://rpc.example/v2/SECRETKEY", "http://[::1]:8545")
    text = text.replace("postgresql://keeper:hunter2@db/keeper", "postgres://k:p%2F%23@db/k")
    text = text.replace("[database]", 'ws_url = "wss://u:p@ws.example:443/v2/K?a=b"\n[database]')
    config = load_config(write(tmp_path, text))
    assert effective(config)["database"]["url"] == "postgres://k:***@db/k (masked)"
    assert effective(config)["chain"]["ws_url"] == "wss://ws.example:443 (masked)"


def test_a_shown_configuration_shows_again_the_same_and_registers_nothing(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    shown = tmp_path / "shown.toml"
    shown.write_text(to_toml(effective(config)))
    secrets.clear()
    again = load_config(shown)
    assert effective(again)["chain"] == effective(config)["chain"]
    assert effective(again)["database"] == effective(config)["database"]
    assert secrets.registered() == frozenset()  # a masked value holds no secret


def test_loading_registers_every_secret_the_configuration_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key = "0x" + "5eed" * 16
    (credentials / "lane1").write_text(key + "\n")
    (credentials / "lane2").write_text('{"crypto": {}}')
    (credentials / "lane2.password").write_text("CredPass55\n")
    (tmp_path / "ks.password").write_text("KeystorePass55\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv(
        "KEEPER_CHAIN__WS_URL", "wss://wsuser:WsPass55@ws.example/ws/WsPath55?k=WsQ55"
    )
    text = MINIMAL.replace(
        "https://rpc.example/v2/SECRETKEY",
        "https://ruser:RpcPass55@rpc.example/v2/RpcPath55?apikey=RpcQ55",
    )
    text += '[[signers]]\ncredential = "lane1"\n[[signers]]\ncredential = "lane2"\n'
    text += '[[signers]]\nkeystore = "ks.json"\npassword_file = "ks.password"\n'
    load_config(write(tmp_path, text))
    registered = secrets.registered()
    for value in (
        "hunter2",
        "RpcPass55",
        "/v2/RpcPath55",
        "RpcQ55",
        "WsPass55",
        "/ws/WsPath55",
        "WsQ55",
        "CredPass55",
        "KeystorePass55",
        key[2:],
    ):
        assert value in registered, value
    assert "rpc.example" not in registered and "keeper" not in registered


# --------------------------------------------------------------------------- the deployment file


def deployment_data() -> dict[str, Any]:
    address = "0x" + "ab" * 20
    return {
        "chain_id": 31337,
        "deployment_block": 1,
        "token": address,
        "stream_manager": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "escrow_vault": address,
        "deployer": address,
        "oracle": address,
        "fee_recipient": address,
        "fee_bps": 250,
    }


def config_for(tmp_path: Path, data: dict[str, Any], extra: str = "") -> KeeperConfig:
    (tmp_path / "deployment.json").write_text(json.dumps(data))
    return load_config(write(tmp_path, MINIMAL.replace("[chain]\n", f"[chain]\n{extra}")))


def test_deployment_addresses_any_case_with_a_valid_checksum(tmp_path: Path) -> None:
    data = deployment_data()
    data["escrow_vault"] = data["escrow_vault"].upper().replace("0X", "0x")
    d = config_for(tmp_path, data).deployment()
    assert d.stream_manager == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert d.token == to_checksum_address("0x" + "ab" * 20)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "stream_manager",
            "0x5fbDB2315678afecb367f032d93F642f64180aa3",
            "invalid EIP-55 checksum (expected the checksummed address",
        ),
        ("token", "0x1234", "is not an address (expected 0x and 40 hex digits)"),
        ("oracle", 42, "42 is not an address"),
        ("chain_id", 0, "chain_id: 0 is out of range (expected at least 1)"),
        ("fee_bps", 1001, "fee_bps: 1001 is out of range (expected between 0 and 1000)"),
        ("deployment_block", "x", "deployment_block: 'x' is not an integer"),
        ("format", 2, "format: 2 is not a format this keeper reads"),
    ],
)
def test_bad_deployment_values_name_the_field_value_and_expectation(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    data = deployment_data()
    data[key] = value
    with pytest.raises(ConfigError) as err:
        config_for(tmp_path, data).deployment()
    message = str(err.value)
    assert message.startswith(f"chain.deployment_file: deployment file {tmp_path}")
    assert f"{key}: " in message and expected in message


def test_a_deployment_key_missing_or_not_json(tmp_path: Path) -> None:
    data = deployment_data()
    del data["escrow_vault"]
    with pytest.raises(ConfigError, match="escrow_vault is missing"):
        config_for(tmp_path, data).deployment()
    config = config_for(tmp_path, deployment_data())
    (tmp_path / "deployment.json").write_text("{")
    with pytest.raises(ConfigError, match=r"chain\.deployment_file: deployment file .* not JSON"):
        config.deployment()
    (tmp_path / "deployment.json").unlink()
    with pytest.raises(ConfigError, match="No such file or directory") as err:
        config.deployment()
    assert err.value.help is not None and "keeper deploy" in err.value.help


def test_chain_id_must_match_the_deployment_file(tmp_path: Path) -> None:
    config = config_for(tmp_path, deployment_data(), extra="chain_id = 1\n")
    with pytest.raises(ConfigError) as err:
        config.deployment()
    message = str(err.value)
    assert message.startswith("chain.chain_id: 1 does not match chain.deployment_file")
    assert "which is for chain 31337" in message


# --------------------------------------------------------------------------- signer keys


def test_signer_problems_name_their_field_and_all_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    sources = [
        KeySource(keystore=tmp_path / "dir", password_file=tmp_path / "p"),
        KeySource(keystore=tmp_path / "missing.json", password_file=tmp_path / "p"),
        KeySource(credential="lane"),
    ]
    signers, problems = check_signers(sources, environ={})
    assert signers == []
    messages = [str(p) for p in problems]
    assert messages[0].startswith(f"signers.0.keystore: cannot read keystore file {tmp_path}/dir")
    assert "Is a directory (expected a file the keeper's user can read)" in messages[0]
    assert messages[1].startswith("signers.1.keystore: keystore file")
    assert "does not exist" in messages[1]
    assert messages[2].startswith("signers.2.credential: credential 'lane'")


# --------------------------------------------------------------------------- config show


def test_effective_configuration_masks_secrets_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_TX__TIP_WEI", "7")
    text = MINIMAL.replace("[database]", 'ws_url = "wss://ws.example/v2/WSKEY"\n[database]')
    config = load_config(write(tmp_path, text))
    data = effective(config)
    assert data["chain"]["rpc_url"] == "https://rpc.example (masked)"
    assert data["chain"]["ws_url"] == "wss://ws.example (masked)"
    assert data["database"]["url"] == "postgresql://keeper:***@db/keeper (masked)"
    shown = to_toml(data, overridden=env_overrides(), header="a header\n\nline")
    for secret in ("SECRETKEY", "WSKEY", "hunter2"):
        assert secret not in shown and secret not in json.dumps(data)
    assert "tip_wei = 7  # from KEEPER_TX__TIP_WEI" in shown
    assert "# budget_per_hour_wei: unset" in shown
    assert shown.startswith("# a header\n#\n# line\n")
    again = tmp_path / "again.toml"
    again.write_text(shown)
    monkeypatch.delenv("KEEPER_TX__TIP_WEI")
    reloaded = load_config(again)
    assert reloaded.tx.tip_wei == 7
    for name in (*SECTIONS, "signers"):
        assert getattr(reloaded, name) == getattr(config, name), name
    assert reloaded.chain.deployment_file == config.chain.deployment_file
    assert tomllib.loads(shown)["chain"]["rpc_url"].endswith("(masked)")


# --------------------------------------------------------------------------- several providers

TWO_URLS = '["https://a.example/v2/KEYA1", "https://b.example:8443/KEYB2?k=QBQB2"]'


def providers(urls: str = TWO_URLS) -> str:
    """MINIMAL with `rpc_urls` instead of `rpc_url`."""
    return MINIMAL.replace('rpc_url = "https://rpc.example/v2/SECRETKEY"', f"rpc_urls = {urls}")


def test_rpc_urls_give_the_urls_in_order_and_register_each(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, providers()))
    assert config.chain.rpc_url is None
    assert config.chain.urls == [
        "https://a.example/v2/KEYA1",
        "https://b.example:8443/KEYB2?k=QBQB2",
    ]
    assert config.chain.primary_url == "https://a.example/v2/KEYA1"
    assert config.chain.rpc_field == "chain.rpc_urls"
    assert (config.chain.rpc_max_lag_blocks, config.chain.rpc_probe_interval) == (5, 10.0)
    registered = secrets.registered()
    for value in ("/v2/KEYA1", "/KEYB2", "QBQB2"):
        assert value in registered, value
    assert "KEYA1" not in repr(config) and "KEYB2" not in repr(config)


def test_a_single_rpc_url_is_one_provider(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.chain.urls == ["https://rpc.example/v2/SECRETKEY"]
    assert config.chain.primary_url == "https://rpc.example/v2/SECRETKEY"
    assert config.chain.rpc_field == "chain.rpc_url"


@pytest.mark.parametrize(
    ("text", "which"),
    [
        (
            MINIMAL.replace('rpc_url = "https://rpc.example/v2/SECRETKEY"\n', ""),
            "chain.rpc_url: required but not set, nor chain.rpc_urls; set one of them (in "
            "[chain] of the file, or as KEEPER_CHAIN__RPC_URL or KEEPER_CHAIN__RPC_URLS)",
        ),
        (
            providers().replace("[chain]", '[chain]\nrpc_url = "https://c.example/KEYC3"'),
            "chain.rpc_url and chain.rpc_urls: both are set; set exactly one of them",
        ),
    ],
)
def test_exactly_one_of_rpc_url_and_rpc_urls(tmp_path: Path, text: str, which: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert f"\n  {which}" in message, message
    for secret in ("KEYA1", "KEYB2", "KEYC3", "hunter2"):
        assert secret not in message


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ('["https://a.example/KEYA1", "https://a.example/KEYA1"]', "entries 0 and 1 are the same"),
        ("[]", "at least 1 item"),
        ("[" + ", ".join(f'"https://n{i}.example/KEYA1"' for i in range(9)) + "]", "at most 8"),
    ],
)
def test_rpc_urls_are_distinct_and_one_to_eight(tmp_path: Path, urls: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, providers(urls)))
    message = str(err.value)
    assert "chain.rpc_urls: " in message and problem in message, message
    assert "KEYA1" not in message and "(got <secret>)" in message


def test_eight_rpc_urls_load(tmp_path: Path) -> None:
    urls = "[" + ", ".join(f'"http://127.0.0.1:{8545 + i}"' for i in range(8)) + "]"
    assert len(load_config(write(tmp_path, providers(urls))).chain.urls) == 8


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('"ws://b.example/v2/BADKEY9"', "scheme is not http"),
        ('"b.example/v2/BADKEY9"', "does not start with http://"),
        ("7", "Input should be a valid string"),
    ],
)
def test_a_bad_entry_of_rpc_urls_is_named_by_its_index(
    tmp_path: Path, entry: str, problem: str
) -> None:
    urls = f'["https://a.example/v2/KEYA1", {entry}]'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, providers(urls)))
    message = str(err.value)
    assert "chain.rpc_urls[1]: " in message and problem in message, message
    assert "(got <secret>)" in message
    assert "BADKEY9" not in message and "KEYA1" not in message
    if "BADKEY9" in entry:
        assert "BADKEY9" in "".join(secrets.registered())  # registered although refused


def test_rpc_urls_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KEEPER_CHAIN__RPC_URLS", '["http://127.0.0.1:8545/ENVKEY1", "http://127.0.0.1:9545"]'
    )
    monkeypatch.setenv("KEEPER_CHAIN__RPC_MAX_LAG_BLOCKS", "9")
    monkeypatch.setenv("KEEPER_CHAIN__RPC_PROBE_INTERVAL", "2.5")
    # The environment's list replaces the file's.
    config = load_config(write(tmp_path, providers('["https://a.example/v2/KEYA1"]')))
    assert config.chain.urls == ["http://127.0.0.1:8545/ENVKEY1", "http://127.0.0.1:9545"]
    assert (config.chain.rpc_max_lag_blocks, config.chain.rpc_probe_interval) == (9, 2.5)
    assert "/ENVKEY1" in secrets.registered()
    # An entry refused from the environment is named with the variable, and registered.
    monkeypatch.setenv("KEEPER_CHAIN__RPC_URLS", '["http://127.0.0.1:8545", "ftp://x/ENVKEY2"]')
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, providers('["https://a.example/v2/KEYA1"]')))
    message = str(err.value)
    assert "chain.rpc_urls[1]: " in message and "from KEEPER_CHAIN__RPC_URLS" in message
    assert "ENVKEY2" not in message and "/ENVKEY2" in secrets.registered()


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("rpc_max_lag_blocks", "-1", "greater than or equal to 0"),
        ("rpc_probe_interval", "0", "greater than 0"),
    ],
)
def test_provider_settings_are_checked(
    tmp_path: Path, field: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, providers().replace("[chain]", f"[chain]\n{field} = {value}")))
    assert f"chain.{field}: " in str(err.value) and problem in str(err.value)


def test_config_show_masks_each_provider_and_loads_again(tmp_path: Path) -> None:
    # Two keys of one host mask alike: the shown file still loads (placeholders to fill in).
    urls = '["https://a.example/v2/KEYA1", "https://a.example/v2/KEYA2", "http://b.example:81/K3"]'
    config = load_config(write(tmp_path, providers(urls)))
    data = effective(config)
    assert data["chain"]["rpc_urls"] == [
        "https://a.example (masked)",
        "https://a.example (masked)",
        "http://b.example:81 (masked)",
    ]
    shown = to_toml(data)
    assert 'rpc_urls = ["https://a.example (masked)", ' in shown and "# rpc_url: unset" in shown
    for secret in ("KEYA1", "KEYA2", "/K3"):
        assert secret not in shown and secret not in json.dumps(data)
    again = tmp_path / "again.toml"
    again.write_text(shown)
    secrets.clear()
    reloaded = load_config(again)
    assert effective(reloaded)["chain"] == data["chain"]
    assert secrets.registered() == frozenset()  # a masked value holds no secret
