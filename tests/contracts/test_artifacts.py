"""The committed artifacts in abis/ match the Solidity sources and the pinned compiler."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from keeper.resources import CONTRACT_NAMES, load_artifact

ROOT = Path(__file__).resolve().parents[2]


def _source_path(name: str) -> Path:
    own = ROOT / name
    return own if own.exists() else ROOT / "node_modules" / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_hashes_match_the_sources(name: str) -> None:
    data = json.loads((ROOT / "abis" / f"{name}.json").read_text())
    sources: dict[str, str] = data["sources"]
    stale = [src for src, digest in sources.items() if _sha256(_source_path(src)) != digest]
    assert not stale, f"abis/{name}.json is stale for {stale}: run `make contracts`"
    combined = "".join(f"{src}:{digest}\n" for src, digest in sorted(sources.items()))
    assert hashlib.sha256(combined.encode()).hexdigest() == data["sourcesSha256"]
    assert f"contracts/{name}.sol" in sources


def test_every_contract_source_is_compiled() -> None:
    compiled = set(json.loads((ROOT / "abis" / "StreamManager.json").read_text())["sources"])
    own = {f"contracts/{p.name}" for p in (ROOT / "contracts").glob("*.sol")}
    assert own <= compiled, f"not in the artifacts: {sorted(own - compiled)}"


def test_compiler_is_the_pinned_one() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["solc"]
    for name in CONTRACT_NAMES:
        version = load_artifact(name).compiler["version"]
        assert version.startswith(pinned + "+"), f"{name} built with {version}, pinned {pinned}"


def test_recompiling_gives_the_committed_artifacts(tmp_path: Path) -> None:
    subprocess.run(
        ["node", str(ROOT / "contracts" / "compile.js"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in CONTRACT_NAMES:
        fresh = json.loads((tmp_path / f"{name}.json").read_text())
        committed = json.loads((ROOT / "abis" / f"{name}.json").read_text())
        assert fresh == committed, f"abis/{name}.json differs from a fresh build: make contracts"
