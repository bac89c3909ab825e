"""Access to the data shipped inside the package: contract artifacts and SQL files.

`abis/` and `sql/` live at the top of the source tree and are mapped into the wheel as
`keeper.abis` and `keeper.sql`, so they are always read through `importlib.resources`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

CONTRACT_NAMES = ("TestToken", "StreamManager", "EscrowVault")


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its ABI, creation and runtime bytecode, and build metadata."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler: dict[str, Any]
    sources_sha256: str


def load_artifact(name: str) -> Artifact:
    """Load `abis/<name>.json` from the installed package."""
    text = resources.files("keeper.abis").joinpath(f"{name}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return Artifact(
        name=data["contractName"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        compiler=data["compiler"],
        sources_sha256=data["sourcesSha256"],
    )


def read_sql(name: str) -> str:
    """Read a SQL file shipped under `sql/` (e.g. `queries.sql`)."""
    return resources.files("keeper.sql").joinpath(name).read_text(encoding="utf-8")


def migration_files() -> list[tuple[str, str]]:
    """All migrations as (file name, SQL text), in the order they must be applied."""
    root = resources.files("keeper.sql.migrations")
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".sql"))
    return [(n, root.joinpath(n).read_text(encoding="utf-8")) for n in names]
