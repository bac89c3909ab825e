"""The shipped systemd units: `systemd-analyze verify` and `security`, their contract with the
daemon, and the daemon's code under the W^X rule the unit imposes.

There is no systemd PID 1 on a test machine, so the units are checked offline. `verify` insists
that ExecStart='s program exists; the shipped units name /opt/keeper/bin/keeper, where the README
installs it. Each test therefore renders the shipped file into a temporary directory with only
that path replaced by this environment's `keeper` script (the rendering is asserted to change
nothing else) and verifies the template's instance `keeper@test.service` from there: the unit
text under test is the shipped one. `verify` reports an unknown key or a bad value as a warning
and still exits 0, so a clean run also means nothing on stderr (a control test proves that such a
mistake is caught).

The tests skip only when `systemd-analyze` cannot run here: missing (install Debian's `systemd`
package; `.ci/run` does) or older than 250 (no `security --offline`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keeper.config import DaemonConfig
from keeper.dev.anvil import Anvil
from keeper.errors import EX_CONFIG
from keeper.ingest.indexer import EXIT_FATAL_REORG

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
INSTALLED_KEEPER = "/opt/keeper/bin/keeper"
TEMPLATES = ("keeper@.service", "keeper-migrate@.service")
MAX_EXPOSURE = 2.0
# What `keeper run` may take after SIGTERM: [daemon] shutdown_grace, then up to 5 s to close the
# pool, the RPC session and the leader connection (keeper.service.daemon.run).
CLOSE_SECONDS = 5.0


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"systemd (\d+)", out)
    if match is None or int(match.group(1)) < 250:
        pytest.skip(f"systemd-analyze {out.split()[1:2]} has no `security --offline` (needs 250)")
    return path


def _keeper_script() -> str:
    found = shutil.which("keeper") or str(Path(sys.executable).with_name("keeper"))
    assert os.access(found, os.X_OK), "the keeper console script is not installed"
    return found


def _render(template: str, directory: Path, *, edit: tuple[str, str] | None = None) -> str:
    """Write the shipped `template` into `directory` with ExecStart='s program replaced by this
    environment's keeper; return the instance name to check (`keeper@test.service`)."""
    text = (UNITS / template).read_text()
    rendered = text.replace(INSTALLED_KEEPER, _keeper_script())
    changed = [
        (a, b) for a, b in zip(text.splitlines(), rendered.splitlines(), strict=True) if a != b
    ]
    assert changed and all(a.startswith("ExecStart=") for a, _ in changed), changed
    if edit is not None:
        assert edit[0] in rendered
        rendered = rendered.replace(*edit)
    (directory / template).write_text(rendered)
    return template.replace("@.", "@test.")


def _settings(template: str) -> dict[str, dict[str, list[str]]]:
    """Section → key → its values in file order (SystemCallFilter= comes twice)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (UNITS / template).read_text().splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def _verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_verify(template: str, tmp_path: Path) -> None:
    analyze = _analyze()
    # keeper@ names keeper-migrate@ in Wants=/After=: verify loads both from the directory.
    instances = {name: _render(name, tmp_path) for name in TEMPLATES}
    result = _verify(analyze, tmp_path / instances[template])
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
        (("ProtectHome=yes", "ProtectHome=sometimes"), "Failed to parse"),
        (("RestrictNamespaces=yes", "RestrictNamespaces=yes\n[Servce]"), "Unknown section"),
    ],
)
def test_verify_reports_mistakes(edit: tuple[str, str], complaint: str, tmp_path: Path) -> None:
    # The control for test_verify: these mistakes exit 0 too, with only a warning on stderr.
    analyze = _analyze()
    _render("keeper-migrate@.service", tmp_path)
    result = _verify(analyze, tmp_path / _render("keeper@.service", tmp_path, edit=edit))
    assert complaint in result.stderr


def test_verify_reports_a_missing_program(tmp_path: Path) -> None:
    # Why the units are rendered: the shipped path does not exist on a test machine.
    analyze = _analyze()
    unit = tmp_path / "keeper@test.service"
    unit.write_text((UNITS / "keeper@.service").read_text().replace(INSTALLED_KEEPER, "/nope/k"))
    result = _verify(analyze, unit)
    assert result.returncode != 0
    assert "/nope/k is not executable" in result.stderr


@pytest.mark.parametrize("template", TEMPLATES)
def test_security_exposure(template: str, tmp_path: Path) -> None:
    analyze = _analyze()
    unit = tmp_path / _render(template, tmp_path)
    # --threshold is on the 0..100 scale of the score's tenths: 20 is an exposure of 2.0.
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager",
         f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"{unit.name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_keeper_unit_matches_the_daemon() -> None:
    """The settings the daemon and the README rely on."""
    sections = _settings("keeper@.service")
    unit, service = sections["Unit"], sections["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED_KEEPER} run --config /etc/keeper/%i.toml"]
    assert service["User"] == service["Group"] == ["keeper"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["5"]
    no_restart = service["RestartPreventExitStatus"][0].split()
    assert str(EXIT_FATAL_REORG) in no_restart
    assert "1" not in no_restart  # a leader that lost its lock exits 1 to come back as standby
    assert str(EX_CONFIG) in no_restart  # a configuration error: restarting fails the same way
    # Lines start with their priority under journald (keeper.logs), which takes it off.
    assert service["SyslogLevelPrefix"] == ["yes"]
    assert service["WatchdogSec"] == ["30"]
    assert service["MemoryMax"] == ["512M"]
    grace = DaemonConfig.model_fields["shutdown_grace"].default
    assert float(service["TimeoutStopSec"][0]) > grace + CLOSE_SECONDS
    assert service["LoadCredential"] == ["keys:/etc/keeper/keys/%i"]
    assert "keeper-migrate@%i.service" in unit["Wants"][0].split()
    assert "keeper-migrate@%i.service" in unit["After"][0].split()
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["MemoryDenyWriteExecute"] == ["yes"]
    assert "IPAddressDeny" not in service  # the RPC and the database may be anywhere
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_migrate_unit_matches_the_cli() -> None:
    service = _settings("keeper-migrate@.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == [f"{INSTALLED_KEEPER} migrate --config /etc/keeper/%i.toml"]
    assert service["User"] == service["Group"] == ["keeper"]
    assert "LoadCredential" not in service
    keeper = _settings("keeper@.service")["Service"]
    hardening = list(keeper)[list(keeper).index("UMask") :]
    assert {k: service.get(k) for k in hardening} == {k: keeper[k] for k in hardening}


def test_readme_installs_where_the_units_look() -> None:
    """The README's install steps put the program, the units, the configuration and the keys
    where the units expect them, and name the credentials the way LoadCredential= does."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Installing with systemd") :]
    assert INSTALLED_KEEPER == "/opt/keeper/bin/keeper"
    for step in (
        "/usr/bin/python3 -m venv /opt/keeper\n/opt/keeper/bin/pip install -c constraints.txt .",
        "useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin keeper",
        "install -m 0644 systemd/keeper@.service systemd/keeper-migrate@.service "
        "/etc/systemd/system/",
        "/etc/keeper/mainnet.toml",
        "install -m 0600 signer1.hex /etc/keeper/keys/mainnet/signer1",
        'credential = "keys_signer1"',  # LoadCredential=keys:<directory> names it keys_<file>
        "systemctl enable --now keeper@mainnet",
    ):
        assert step in section, step


# The child of test_daemon_code_runs_without_writable_executable_memory (argv: a database URL
# and an RPC URL). It installs a seccomp filter that refuses what systemd's
# MemoryDenyWriteExecute= refuses (mmap with PROT_WRITE and PROT_EXEC together, mprotect and
# pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC: all EPERM), shows that the filter bites,
# then imports every keeper module and runs the native code the daemon relies on: migrations
# and a view through asyncpg, the RPC client (aiohttp, yarl, multidict), keystore scrypt and
# keccak (pycryptodome's C code, loaded with ctypes) and transaction signing.
_WX_CHILD = r"""
import ctypes, errno, mmap, platform, struct, sys

AUDIT_ARCH, NR_MMAP, NR_MPROTECT, NR_PKEY_MPROTECT, NR_SHMAT = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}[platform.machine()]
LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ...
ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
ARG2 = 32  # offset of seccomp_data.args[2] (its low 32 bits: little-endian)
WX, SHM_EXEC = mmap.PROT_WRITE | mmap.PROT_EXEC, 0o100000
# (label, code, jump-if-true label, jump-if-false label, k); no label: the next instruction
source = [
    (None, LD, None, None, 4),  # seccomp_data.arch
    (None, JEQ, None, "allow", AUDIT_ARCH),
    (None, LD, None, None, 0),  # seccomp_data.nr
    (None, JEQ, "mmap", None, NR_MMAP),
    (None, JEQ, "mprotect", None, NR_MPROTECT),
    (None, JEQ, "mprotect", None, NR_PKEY_MPROTECT),
    (None, JEQ, "shmat", "allow", NR_SHMAT),
    ("mmap", LD, None, None, ARG2),
    (None, AND, None, None, WX),
    (None, JEQ, "deny", "allow", WX),
    ("mprotect", LD, None, None, ARG2),
    (None, JSET, "deny", "allow", mmap.PROT_EXEC),
    ("shmat", LD, None, None, ARG2),
    (None, JSET, "deny", "allow", SHM_EXEC),
    ("allow", RET, None, None, ALLOW),
    ("deny", RET, None, None, DENY),
]
at = {label: i for i, (label, *_) in enumerate(source) if label}
jump = lambda i, label: 0 if label is None else at[label] - i - 1
code = b"".join(
    struct.pack("HBBI", op, jump(i, jt), jump(i, jf), k)
    for i, (_, op, jt, jf, k) in enumerate(source)
)
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
buffer = ctypes.create_string_buffer(code)
program = Program(len(source), ctypes.addressof(buffer))
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, ctypes.get_errno()
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0

# The filter bites: no writable and executable mapping, no page made executable.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | WX)
    sys.exit("a writable executable mapping was allowed")
except PermissionError:
    pass
page = mmap.mmap(-1, 4096)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(address, 4096, mmap.PROT_READ | mmap.PROT_EXEC) == -1
assert ctypes.get_errno() == errno.EPERM

import asyncio, importlib, pkgutil
import keeper
modules = [m.name for m in pkgutil.walk_packages(keeper.__path__, "keeper.")]
for name in modules:
    if not name.endswith("__main__"):
        importlib.import_module(name)

from eth_account import Account
account = Account.create()
keystore = Account.encrypt(account.key, "pw", kdf="scrypt", iterations=2**10)
assert Account.decrypt(keystore, "pw") == account.key
signed = account.sign_transaction({
    "to": account.address, "value": 0, "gas": 21000, "nonce": 0, "chainId": 1,
    "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 1,
})

async def main(dsn, rpc_url):
    import asyncpg
    from keeper.db.migrations import migrate
    from keeper.chain.rpc import ChainClient
    applied = await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetch("SELECT * FROM keeper.indexer_status")
    finally:
        await conn.close()
    client = ChainClient(rpc_url)
    try:
        head = await client.head()
    finally:
        await client.close()
    return len(applied), head.number

migrations, head = asyncio.run(main(sys.argv[1], sys.argv[2]))
print(f"ok: {len(modules)} modules, {migrations} migrations, head {head}")
"""


def test_daemon_code_runs_without_writable_executable_memory(
    empty_database_url: str, anvil: Anvil
) -> None:
    """MemoryDenyWriteExecute=yes holds for the daemon's code: CPython generates no machine code,
    and no extension module the daemon loads wants an executable stack or writable code."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip(f"the seccomp filter is written for Linux x86_64/aarch64, not {os.uname()}")
    result = subprocess.run(
        [sys.executable, "-c", _WX_CHILD, empty_database_url, anvil.url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]  # after the migrations' log lines
    assert last.startswith("ok:"), result.stdout
    print(last)
