"""Start and stop a local anvil node from the project's npm install.

anvil ships as a real binary inside the npm package `@foundry-rs/anvil-<platform>`; we look
for it under the project's `node_modules/`, then `KEEPER_ANVIL_BIN`, then `PATH`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from keeper.chain.keys import PrivateKey
from keeper.errors import KeeperError

# anvil's well-known development mnemonic: accounts 0..9 are funded with 10,000 ETH each.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_CHAIN_ID = 31337


class AnvilNotFound(KeeperError):
    """The anvil binary was not found: run `npm ci` in the project (or set KEEPER_ANVIL_BIN)."""


class AnvilStartFailed(KeeperError):
    """anvil did not start answering JSON-RPC in time."""


def _platform_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    system = platform.system().lower()
    return f"anvil-{system}-{arch}"


def project_root() -> Path:
    """The source checkout this module lives in (used to find `node_modules/`)."""
    return Path(__file__).resolve().parents[2]  # keeper/dev/anvil.py -> the checkout


def find_anvil(search_from: Path | None = None) -> Path:
    """Locate the anvil binary, or raise `AnvilNotFound`."""
    env = os.environ.get("KEEPER_ANVIL_BIN")
    if env:
        return Path(env)
    roots = [p for p in (search_from, Path.cwd(), project_root()) if p is not None]
    for root in roots:
        candidate = root / "node_modules" / "@foundry-rs" / _platform_package() / "bin" / "anvil"
        if candidate.is_file():
            return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilNotFound()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rpc(url: str, method: str, params: list[object] | None = None, timeout: float = 10.0) -> object:
    """A minimal synchronous JSON-RPC call (fixtures and the dev chain use it, not the daemon)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(  # noqa: S310 - url is our own local node
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        reply = json.loads(resp.read())
    if "error" in reply:
        raise KeeperError(f"{method} failed: {reply['error']}")
    return reply["result"]


@dataclass
class Anvil:
    """A running anvil process."""

    process: subprocess.Popen[bytes]
    port: int
    host: str = "127.0.0.1"
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Websocket JSON-RPC endpoint (anvil serves both on one port)."""
        return f"ws://{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit promptly)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_anvil(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    block_time: float | None = None,
    chain_id: int = DEV_CHAIN_ID,
    accounts: int = 10,
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    startup_timeout: float = 20.0,
) -> Anvil:
    """Start anvil and wait until it answers `eth_chainId`."""
    binary = find_anvil()
    port = port or free_port()
    args = [
        str(binary),
        "--host",
        host,
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--accounts",
        str(accounts),
        "--mnemonic",
        DEV_MNEMONIC,
        "--gas-limit",
        "60000000",
        "--code-size-limit",
        "49152",
    ]
    if block_time is not None:
        args += ["--block-time", str(block_time)]
    args += extra_args or []
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    node = Anvil(process=proc, port=port, host=host, args=args)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AnvilStartFailed(f"anvil exited with status {proc.returncode} (args: {args})")
        with contextlib.suppress(OSError, KeeperError):
            if int(str(rpc(node.url, "eth_chainId", timeout=1.0)), 16) == chain_id:
                return node
        time.sleep(0.05)
    node.stop()
    raise AnvilStartFailed(f"anvil did not answer on {node.url} within {startup_timeout}s")


@contextlib.contextmanager
def running_anvil(**kwargs: object) -> Iterator[Anvil]:
    """Context manager around `start_anvil` that always stops the node."""
    node = start_anvil(**kwargs)  # type: ignore[arg-type]
    try:
        yield node
    finally:
        node.stop()


def dev_key(index: int = 0) -> PrivateKey:
    """Account `index` of anvil's public development mnemonic (dev chains only)."""
    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return PrivateKey(bytes(account.key))
