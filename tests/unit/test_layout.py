"""The package layout: one folder per stage, no module importing a later stage, none over 500
lines.

The data flow is chain -> ingest -> Postgres -> plan -> tx -> chain. A module may import its own
stage and the stages before it, never one after: the base modules at the top of `keeper/`
(errors, configuration, logs, metrics, secrets) come first, the command line last.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "keeper"

# Stages in the order data flows through them; a module may import only its own or earlier ones.
STAGES = (
    "base",  # keeper/*.py: errors, resources, urls, secrets, logs, metrics, config, kinds, loops
    "db",
    "chain",
    "ingest",
    "plan",
    "tx",
    "service",
    "ops",
    "dev",
    "cli",
)
# The base modules that reach into a stage: `config` builds the chain client and the signers'
# key sources and reads the deployment file (lazily, inside its methods); `loops` names the
# transient errors of db and chain. Every component takes its configuration section as it is.
BASE_EXCEPTIONS = {
    ("keeper.config", "chain"),
    ("keeper.loops", "db"),
    ("keeper.loops", "chain"),
}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    if module == "keeper.__main__":
        return "cli"  # `python -m keeper` is the command line
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in STAGES:
        return parts[1]
    return "base"


def _imports(path: Path) -> set[str]:
    """Every keeper module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("keeper")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keeper"):
            found.add(node.module)
            # `from keeper import db` imports the module keeper.db
            found |= {f"{node.module}.{a.name}" for a in node.names if node.module == "keeper"}
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_stage_folder_or_the_base() -> None:
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        assert len(rel.parts) == 1 or rel.parts[0] in STAGES, rel


def test_no_module_imports_a_later_stage() -> None:
    upward = set()
    for path in _modules():
        module = _module_name(path)
        stage = _stage(module)
        for imported in _imports(path):
            other = _stage(imported)
            if STAGES.index(other) > STAGES.index(stage):
                upward.add((module, imported, other))
    unexpected = {u for u in upward if (u[0], u[2]) not in BASE_EXCEPTIONS}
    assert not unexpected, sorted(unexpected)
    # The exceptions are still needed (a stale one would hide a new upward import).
    assert {(u[0], u[2]) for u in upward} == BASE_EXCEPTIONS


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
