"""SIGTERM during start-up ends `keeper run` cleanly (exit 0), not by the signal's default action.

The signal is sent right after the daemon logs its first migration (so well before its main
loops run): from the moment the `run` command has started, a stop request is
honoured. (A signal that arrives while the interpreter itself is still starting cannot be handled
by any Python program.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keeper.dev.anvil import Anvil
from keeper.ops.deploy import deploy_all
from tests.support.chain import DEV_KEY0


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.5])
def test_sigterm_during_start_up_exits_zero(
    delay: float, anvil_factory: Callable[..., Anvil], empty_database_url: str, tmp_path: Path
) -> None:
    node = anvil_factory()
    deploy_all(node.url, DEV_KEY0).write(tmp_path / "deployment.json")
    config = tmp_path / "keeper.toml"
    config.write_text(
        f'[chain]\nrpc_url = "{node.url}"\ndeployment_file = "deployment.json"\n'
        f'[database]\nurl = "{empty_database_url}"\n[log]\nformat = "json"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeper", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    # The health port comes up first; then the first migration is being applied.
    first = proc.stdout.readline()
    while b"migration_applied" not in first:
        line = proc.stdout.readline()
        assert line, first
        first += line
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, (first + rest).decode()[-2000:]
