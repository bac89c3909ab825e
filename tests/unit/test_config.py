"""Configuration: the example loads, mistakes name their field, secrets stay hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeper.config import ConfigError, load_config
from keeper.planner import PlanSettings

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
[chain]
rpc_url = "https://rpc.example/v2/SECRETKEY"
deployment_file = "deployment.json"
[database]
url = "postgresql://keeper:hunter2@db/keeper"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def test_the_example_configuration_loads() -> None:
    config = load_config(ROOT / "config" / "keeper.example.toml")
    assert config.ingest.poll_interval == 1.0
    assert config.tx.settings().confirmations == 3
    # The example's [plan] values are the defaults, field by field.
    assert config.plan.settings() == PlanSettings()
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


def test_a_bad_plan_value_names_its_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[plan]\nsettle_max_interval = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "plan.settle_max_interval" in str(err.value) and "greater than 0" in str(err.value)


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
