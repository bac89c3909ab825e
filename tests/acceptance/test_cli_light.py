"""Commands that only read the database, or only the configuration, answer without loading
web3 or eth_account (a second and more of imports): `keeper status` is what an operator types at
3 a.m. Each command runs for real, against a migrated PostgreSQL, in a fresh interpreter that
then lists the chain libraries it loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHAIN_LIBRARIES = ("web3", "eth_account")

# `python -c PROBE LIBRARIES ARGV...` runs `keeper ARGV...` in this interpreter, then prints its
# exit status and which of the comma-separated LIBRARIES were imported on the way.
PROBE = """
import contextlib, io, json, sys
from keeper.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(sys.argv[2:])
    except SystemExit as exc:
        status = exc.code
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))
print(json.dumps({"status": status, "loaded": loaded}))
"""


def probe(*argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(CHAIN_LIBRARIES), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    """A configuration for chain 31337 over the test database (no node is needed)."""
    zero = "0x" + "11" * 20
    addresses = ("token", "stream_manager", "escrow_vault", "deployer", "oracle", "fee_recipient")
    deployment = {"chain_id": 31337, "deployment_block": 1, "fee_bps": 250}
    deployment.update(dict.fromkeys(addresses, zero))  # type: ignore[arg-type]
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    path = tmp_path / "keeper.toml"
    path.write_text(
        '[chain]\nrpc_url = "http://127.0.0.1:9"\ndeployment_file = "deployment.json"\n'
        f'[database]\nurl = "{database_url}"\n'
    )
    (tmp_path / "usage.csv").write_text("stream_id,units,producer_key\n1,5,k1\n")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--config", "{config}"],
        ["status", "--database-url", "{database_url}", "--chain-id", "31337"],
        ["migrate", "--config", "{config}"],
        ["config", "show", "--config", "{config}"],
        ["usage", "import", "{usage}", "--config", "{config}"],
        ["--help"],
    ],
    ids=lambda argv: " ".join(a for a in argv if not a.startswith("{")),
)
def test_database_only_commands_load_no_chain_library(
    argv: list[str], config: Path, database_url: str
) -> None:
    values = {"config": config, "database_url": database_url, "usage": config.parent / "usage.csv"}
    answer = probe(*(a.format(**values) for a in argv))
    assert answer == {"status": 0, "loaded": []}


def test_the_probe_sees_a_chain_library_when_one_is_loaded(tmp_path: Path) -> None:
    """`keys new` needs eth_account: the probe must report it (else it proves nothing)."""
    answer = probe("keys", "new", str(tmp_path / "k.json"))
    assert answer == {"status": 0, "loaded": ["eth_account"]}
