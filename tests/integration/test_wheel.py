"""The built wheel carries the contract artifacts and SQL files and reads them when installed.

`abis/` and `sql/` sit at the top of the source tree and are mapped into the package as
`keeper.abis` and `keeper.sql` at build time. These tests build the wheel from a copy of the
tree, install it into a fresh virtualenv outside the tree and read the files from there, so a
mapping that only works in an editable install fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from keeper import resources

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# Not part of what a wheel is built from; copying them would only slow the build down or,
# for a stale *.egg-info, change what setuptools puts into the wheel.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".keeper",
)

# Run inside the installed venv from a directory outside the source tree; prints JSON.
_PROBE = """
import json, sys, sysconfig
from importlib import resources as ir
import keeper
from keeper import resources

art = resources.load_artifact("StreamManager")
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "sys_path": sys.path,
    "keeper_file": keeper.__file__,
    "resources_file": resources.__file__,
    "abis_dir": str(ir.files("keeper.abis")),
    "migrations_dir": str(ir.files("keeper.sql.migrations")),
    "artifact_name": art.name,
    "abi_len": len(art.abi),
    "bytecode": art.bytecode[:10],
    "migrations": [[name, len(sql)] for name, sql in resources.migration_files()],
}))
"""


@dataclass(frozen=True)
class InstalledWheel:
    """A wheel built from the source tree and installed into its own virtualenv."""

    wheel: Path
    python: Path
    workdir: Path


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """The environment minus anything that could point Python back at the source tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # no cwd or script directory at the front of sys.path
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the tree, so the build writes nothing into the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_COPIED)
    dist = base / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", dist, src],
        cwd=base,
        env=_clean_env(),
    )
    wheels = sorted(dist.glob("keeper-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed_wheel(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """The wheel installed (without dependencies: the resource loader needs only the stdlib)."""
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], cwd=base, env=env)
    python = _venv_python(venv)
    _run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", built_wheel],
        cwd=base,
        env=env,
    )
    workdir = base / "elsewhere"
    workdir.mkdir()
    return InstalledWheel(wheel=built_wheel, python=python, workdir=workdir)


def _is_within(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def test_wheel_contains_artifacts_and_sql(built_wheel: Path) -> None:
    """Every ABI and SQL file of the tree is in the wheel, under `keeper/`, and nothing else
    lands at the top level (a stray `abis/` or `sql/` package would shadow nothing but would
    mean the mapping is wrong)."""
    with zipfile.ZipFile(built_wheel) as zf:
        names = set(zf.namelist())

    abis = {n for n in names if n.startswith("keeper/abis/") and n.endswith(".json")}
    migrations = {n for n in names if n.startswith("keeper/sql/migrations/") and n.endswith(".sql")}
    assert abis, f"no keeper/abis/*.json in the wheel: {sorted(names)}"
    assert migrations, f"no keeper/sql/migrations/*.sql in the wheel: {sorted(names)}"

    for contract in resources.CONTRACT_NAMES:
        assert f"keeper/abis/{contract}.json" in names
    for path in (ROOT / "abis").glob("*.json"):
        assert f"keeper/abis/{path.name}" in names
    for path in (ROOT / "sql").rglob("*.sql"):
        assert f"keeper/sql/{path.relative_to(ROOT / 'sql').as_posix()}" in names
    assert "keeper/py.typed" in names

    top_level = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == {"keeper"}, sorted(top_level)
    assert len(dist_info) == 1


def test_wheel_declares_console_script(built_wheel: Path) -> None:
    """`keeper` is installed as a command."""
    with zipfile.ZipFile(built_wheel) as zf:
        (entry_points,) = (n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "keeper = keeper.cli:main" in text


def test_installed_wheel_reads_resources_outside_source_tree(
    installed_wheel: InstalledWheel,
) -> None:
    """The installed package loads an ABI and the migrations from its own site-packages."""
    assert not _is_within(installed_wheel.workdir, ROOT)
    out = _run(
        [installed_wheel.python, "-c", _PROBE],
        cwd=installed_wheel.workdir,
        env=_clean_env(),
    )
    probe = json.loads(out)

    purelib = Path(probe["purelib"])
    assert not _is_within(purelib, ROOT)
    assert not any(p and _is_within(Path(p), ROOT) for p in probe["sys_path"]), probe["sys_path"]
    for key in ("keeper_file", "resources_file", "abis_dir", "migrations_dir"):
        assert _is_within(Path(probe[key]), purelib), f"{key}={probe[key]} not in {purelib}"
        assert not _is_within(Path(probe[key]), ROOT), f"{key}={probe[key]} is in the tree"

    assert probe["artifact_name"] == "StreamManager"
    assert probe["abi_len"] > 0
    assert probe["bytecode"].startswith("0x60"), probe["bytecode"]

    migrations = probe["migrations"]
    assert migrations, "no migrations found through the installed package"
    assert all(name.endswith(".sql") and size > 0 for name, size in migrations), migrations
    shipped = sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
    assert [name for name, _ in migrations] == shipped
