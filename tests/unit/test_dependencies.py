"""The declared dependencies match the code, and the pins match the declarations.

Every third-party module that keeper/ (or tests/) imports must come from a distribution that
pyproject.toml declares, not one that happens to arrive through another's dependencies; every
declared range has an upper bound; constraints.txt pins every distribution that installing the
project with its extras brings in, at a version the declared range allows. package-lock.json
locks package.json's packages and every platform's optional packages, which `npm ci` requires.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = frozenset({"keeper", "tests"})

# Modules keeper/ imports only on a path that needs an extra, and says so when it is missing:
# the embedded database of `keeper demo` (keeper.dev.demo_postgres) comes with `keeper[dev]`.
FROM_EXTRA = {"pgserver": "dev"}


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Top-level names of absolute imports under root that are neither stdlib nor first-party,
    each with the files importing it (wherever the import sits: module level or in a function)."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(path.relative_to(root.parent)))
    return found


def project() -> dict[str, object]:
    """The [project] table of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, object] = tomllib.load(f)["project"]
    return table


def declared(group: str | None = None) -> list[Requirement]:
    """The requirements of [project] dependencies (group None) or of one optional extra."""
    table = project()
    if group is None:
        lines = table["dependencies"]
    else:
        extras = table["optional-dependencies"]
        assert isinstance(extras, dict)
        lines = extras[group]
    assert isinstance(lines, list)
    return [Requirement(line) for line in lines]


def extras() -> list[str]:
    """The names of the project's optional extras."""
    table = project()["optional-dependencies"]
    assert isinstance(table, dict)
    return sorted(table)


def every_declared() -> list[Requirement]:
    """The requirements of the dependencies and of every extra."""
    return declared() + [req for group in extras() for req in declared(group)]


def names(requirements: Iterable[Requirement]) -> set[NormalizedName]:
    """The normalized distribution names of requirements."""
    return {canonicalize_name(req.name) for req in requirements}


def distributions_of(module: str) -> set[NormalizedName]:
    """The installed distributions that provide a top-level module (empty when none does)."""
    provided = importlib.metadata.packages_distributions().get(module, [])
    return {canonicalize_name(dist) for dist in provided}


def undeclared(imports: dict[str, set[str]], allowed: set[NormalizedName]) -> list[str]:
    """One line per imported module that no allowed distribution provides."""
    problems = []
    for module, files in sorted(imports.items()):
        dists = distributions_of(module)
        if not dists & allowed:
            where = ", ".join(sorted(files)[:3]) + (", ..." if len(files) > 3 else "")
            source = ", ".join(sorted(dists)) or "no installed distribution"
            problems.append(f"{module} (from {source}) imported by {where}")
    return problems


def constraint_pins() -> dict[NormalizedName, Version]:
    """constraints.txt as name -> pinned version; every line must be an exact pin."""
    pins: dict[NormalizedName, Version] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"constraints.txt line {number}: {raw!r} is not an exact pin (name==version)"
        )
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt line {number}: {req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def closure(roots: Iterable[Requirement]) -> Iterator[NormalizedName]:
    """Every distribution that installing roots brings in here: roots and their requirements,
    transitively, with markers (platform, Python version, extras asked for) evaluated."""
    seen: set[tuple[NormalizedName, str]] = set()
    queue = [(req, "") for req in roots]
    while queue:
        req, extra = queue.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        wanted = ["", *sorted(req.extras)]
        if all((name, e) in seen for e in wanted):
            continue
        yield name
        for e in wanted:
            if (name, e) in seen:
                continue
            seen.add((name, e))
            requires = importlib.metadata.requires(name) or []
            queue.extend((Requirement(line), e) for line in requires)


def test_keeper_imports_only_its_declared_dependencies() -> None:
    imports = third_party_imports(ROOT / "keeper")
    assert {"web3", "eth_utils", "eth_keys", "aiohttp"} <= imports.keys()
    core = names(declared())
    problems = undeclared({m: f for m, f in imports.items() if m not in FROM_EXTRA}, core)
    for module, group in FROM_EXTRA.items():
        assert module in imports, f"{module} is no longer imported: drop it from FROM_EXTRA"
        problems += undeclared({module: imports[module]}, names(declared(group)))
    assert not problems, "not declared in pyproject.toml [project] dependencies:\n" + "\n".join(
        problems
    )


def test_tests_import_only_declared_distributions() -> None:
    imports = third_party_imports(ROOT / "tests")
    problems = undeclared(imports, names(every_declared()))
    assert not problems, "not declared in pyproject.toml (dependencies or an extra):\n" + "\n".join(
        problems
    )


def test_the_walk_finds_every_kind_of_third_party_import(tmp_path: Path) -> None:
    # The two checks above are only as good as the walk: an import inside a function, a
    # submodule import and a from-import count; stdlib, relative and first-party ones do not.
    (tmp_path / "m.py").write_text(
        "import os.path\n"
        "import eth_utils.curried\n"
        "from keeper.config import KeeperConfig\n"
        "from . import sibling\n"
        "def f():\n"
        "    from hexbytes import HexBytes\n"
    )
    imports = third_party_imports(tmp_path)
    assert imports == {
        "eth_utils": {f"{tmp_path.name}/m.py"},
        "hexbytes": {f"{tmp_path.name}/m.py"},
    }
    # hexbytes arrives with web3 but is not one of keeper's declared dependencies.
    assert undeclared(imports, names(declared())) == [
        f"hexbytes (from hexbytes) imported by {tmp_path.name}/m.py"
    ]


@pytest.mark.parametrize("req", every_declared(), ids=str)
def test_every_declared_range_has_an_upper_bound(req: Requirement) -> None:
    assert any(spec.operator in {"<", "<=", "==", "~="} for spec in req.specifier), (
        f"{req} has no upper bound"
    )


def test_constraints_pin_every_declared_distribution_within_its_range() -> None:
    pins = constraint_pins()
    problems = []
    for req in every_declared():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}=={pin} is outside the declared {req}")
    assert not problems, "constraints.txt (refresh it with `make constraints`):\n" + "\n".join(
        problems
    )


def test_constraints_pin_everything_the_project_installs() -> None:
    pins = constraint_pins()
    missing = sorted(set(closure(every_declared())) - pins.keys())
    assert not missing, (
        "constraints.txt lacks distributions the project installs (refresh it with "
        f"`make constraints`): {', '.join(missing)}"
    )


def test_the_installed_versions_are_the_pinned_ones() -> None:
    # `make` reinstalls when constraints.txt changes; a test run on other versions than the
    # pinned ones would vouch for a combination no install of this commit gets.
    pins = constraint_pins()
    different = []
    for name in sorted(set(closure(every_declared()))):
        installed = Version(importlib.metadata.version(name))
        if name in pins and installed != pins[name]:
            different.append(f"{name} {installed} installed, {pins[name]} pinned")
    assert not different, "run `make .venv` to install the pinned versions:\n" + "\n".join(
        different
    )


def _resolves_from(path: str, name: str, packages: dict[str, dict[str, object]]) -> bool:
    """Whether node's lookup from the package at path (its own node_modules, then each
    enclosing one up to the root's) finds name among the lockfile's packages."""
    while True:
        prefix = f"{path}/" if path else ""
        if f"{prefix}node_modules/{name}" in packages:
            return True
        if not path:
            return False
        path = path.rpartition("/node_modules/")[0]


def test_the_npm_lockfile_locks_every_platform() -> None:
    # `npm ci` refuses a lockfile that lacks an optional dependency of a locked package, even
    # one for another platform (anvil ships its binary as one optional package per platform).
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    packages: dict[str, dict[str, object]] = lock["packages"]
    assert packages[""]["devDependencies"] == package["devDependencies"]
    missing = []
    for path, entry in packages.items():
        optional = entry.get("optionalDependencies") or {}
        assert isinstance(optional, dict)
        missing += [
            f"{path} -> {name}" for name in optional if not _resolves_from(path, name, packages)
        ]
    assert "node_modules/@foundry-rs/anvil-win32-amd64" in packages
    assert not missing, "package-lock.json lacks optional packages (`npm install "
    "--package-lock-only` adds them):\n" + "\n".join(missing)
