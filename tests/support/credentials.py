"""Signer keys for `keeper run` subprocesses, as systemd hands them over: one hex key file per
`[[signers]] credential = "signer-<i>"` in `$CREDENTIALS_DIRECTORY`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from keeper.dev.anvil import dev_key


def install_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, indexes: Iterable[int]
) -> Path:
    """Write anvil dev keys `indexes` as `signer-<i>` and point CREDENTIALS_DIRECTORY there."""
    creds = tmp_path / "creds"
    creds.mkdir()
    for i in indexes:
        (creds / f"signer-{i}").write_text(dev_key(i).reveal_hex() + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    return creds
