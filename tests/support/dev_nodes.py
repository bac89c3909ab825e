"""Development nodes for the tests: anvil and Hardhat's node (EDR), behind one small interface.

`DevNode` is what a test may ask of a node whatever its implementation: its URL, mining
(one block, automine, interval mining), snapshots, reorganisations, the next base fee and
balances. `AnvilNode` wraps `keeper.dev.anvil.Anvil`; `HardhatNode` runs `hardhat node` from the
project's `node_modules/` with a configuration written into a temporary directory: chain id
31337 and anvil's dev mnemonic with 20 accounts (so `keeper.chain.keys.dev_key` keys are funded),
automine, a 60,000,000 gas block limit like `start_anvil`'s.

Differences the interface does not hide: Hardhat answers the `finalized` and `safe` tags with
the latest block (anvil: head - 64), caps a transaction's gas at 16,777,216 (EIP-7825, its
default hardfork is Osaka) and words its errors differently.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from keeper.dev.anvil import DEV_CHAIN_ID, DEV_MNEMONIC, Anvil, free_port, project_root, rpc
from keeper.errors import KeeperError

NodeKind = Literal["anvil", "hardhat"]
NODE_KINDS: tuple[NodeKind, ...] = ("anvil", "hardhat")
BLOCK_GAS_LIMIT = 60_000_000  # start_anvil's --gas-limit


class HardhatStartFailed(KeeperError):
    """Hardhat's node did not start answering JSON-RPC in time: is `hardhat` in node_modules
    (`npm ci`)?"""


@dataclass(frozen=True)
class ForkPoint:
    """A block a later `DevNode.reorg_to` replaces everything after (see `DevNode.fork_point`)."""

    block: int
    snapshot: str | None = None


class DevNode(Protocol):
    """What the tests need of a development node, whichever implementation runs it."""

    kind: NodeKind

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint."""

    def stop(self) -> None:
        """Stop the node and everything it started."""

    def head(self) -> int:
        """The latest block number."""

    def mine(self, blocks: int = 1) -> None:
        """Mine `blocks` blocks now (with whatever the mempool holds)."""

    def set_automine(self, on: bool) -> None:
        """Mine a block per transaction (on) or only by interval / `mine` (off)."""

    def set_interval_mining(self, seconds: float) -> None:
        """Mine a block every `seconds` (0: stop interval mining)."""

    def snapshot(self) -> str:
        """Save the chain's state; `revert` goes back to it (once)."""

    def revert(self, snapshot_id: str) -> None:
        """Go back to the state saved by `snapshot` (that snapshot and later ones are used up)."""

    def fork_point(self) -> ForkPoint:
        """Mark the current head as the base of a later reorganisation (`reorg_to`)."""

    def reorg_to(self, point: ForkPoint) -> int:
        """Replace the blocks after `point` by as many new ones, without the transactions they
        held; returns the depth. At most one `reorg_to` per fork point."""

    def increase_time(self, seconds: int) -> None:
        """Move the chain's clock forward: the next block is at least `seconds` later."""

    def set_next_base_fee(self, wei: int) -> None:
        """The base fee per gas of the next block."""

    def set_balance(self, address: str, wei: int) -> None:
        """Set an account's ether balance."""


class _RpcMixin:
    """The parts of `DevNode` both implementations do the same way."""

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint."""
        raise NotImplementedError

    def head(self) -> int:
        return int(str(rpc(self.url, "eth_blockNumber")), 16)

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            rpc(self.url, "evm_mine")

    def set_automine(self, on: bool) -> None:
        rpc(self.url, "evm_setAutomine", [on])

    def increase_time(self, seconds: int) -> None:
        rpc(self.url, "evm_increaseTime", [seconds])

    def snapshot(self) -> str:
        return str(rpc(self.url, "evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        if rpc(self.url, "evm_revert", [snapshot_id]) is not True:
            raise KeeperError(f"evm_revert({snapshot_id}) did not revert")


@dataclass
class AnvilNode(_RpcMixin):
    """An anvil node (`keeper.dev.anvil.Anvil`) as a `DevNode`."""

    anvil: Anvil
    kind: NodeKind = "anvil"

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint."""
        return self.anvil.url

    def stop(self) -> None:
        """Stop the anvil process."""
        self.anvil.stop()

    def set_interval_mining(self, seconds: float) -> None:
        """anvil's evm_setIntervalMining takes whole seconds."""
        rpc(self.url, "evm_setIntervalMining", [round(seconds)])

    def fork_point(self) -> ForkPoint:
        """anvil reorganises by depth: only the block number is needed."""
        return ForkPoint(block=self.head())

    def reorg_to(self, point: ForkPoint) -> int:
        """`anvil_reorg` to the depth from the fork point to the head."""
        depth = self.head() - point.block
        rpc(self.url, "anvil_reorg", [depth, []])
        return depth

    def set_next_base_fee(self, wei: int) -> None:
        """anvil_setNextBlockBaseFeePerGas."""
        rpc(self.url, "anvil_setNextBlockBaseFeePerGas", [hex(wei)])

    def set_balance(self, address: str, wei: int) -> None:
        """anvil_setBalance."""
        rpc(self.url, "anvil_setBalance", [address, hex(wei)])


HARDHAT_CONFIG = """\
// Written by tests/support/dev_nodes.py for one test node.
module.exports = {{
  networks: {{
    hardhat: {{
      chainId: {chain_id},
      accounts: {{ mnemonic: {mnemonic}, count: {accounts} }},
      mining: {{ auto: true, interval: 0 }},
      blockGasLimit: {gas_limit},
    }},
  }},
}};
"""

# Hardhat must neither prompt nor phone home: CI makes it skip telemetry, Sentry, banners and
# version checks (it tests `ci-info`); the XDG directories keep it away from the user's global
# Hardhat configuration (and any telemetry consent saved there).
_QUIET_ENV = {
    "CI": "true",
    "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true",
    "HARDHAT_HIDE_SOLIDITY_SURVEY_MESSAGE": "true",
    "DO_NOT_TRACK": "1",
}


def find_hardhat(search_from: Path | None = None) -> Path:
    """The directory whose `node_modules/` holds hardhat, or raise `HardhatStartFailed`."""
    for root in (search_from, Path.cwd(), project_root()):
        if root is None:
            continue
        if (root / "node_modules" / "hardhat" / "internal" / "cli" / "bootstrap.js").is_file():
            return root
    raise HardhatStartFailed("node_modules/hardhat not found")


@dataclass
class HardhatNode(_RpcMixin):
    """A running `hardhat node` (its own process group, stopped as a whole)."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    host: str = "127.0.0.1"
    kind: NodeKind = "hardhat"
    _cleanup: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate the process group (kill it if it does not exit promptly)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Children left behind by the group leader (if any) go with the group too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for tmp in self._cleanup:
            tmp.cleanup()
        self._cleanup.clear()

    def set_interval_mining(self, seconds: float) -> None:
        """Hardhat's evm_setIntervalMining takes milliseconds."""
        rpc(self.url, "evm_setIntervalMining", [round(seconds * 1000)])

    def fork_point(self) -> ForkPoint:
        """Hardhat has no reorg call: a snapshot now, reverted to by `reorg_to`.

        The snapshot is taken first: with automining, a transaction may be mined between the
        two calls, so the recorded block is at or above the snapshot's, never below.
        """
        snapshot = self.snapshot()
        return ForkPoint(block=self.head(), snapshot=snapshot)

    def reorg_to(self, point: ForkPoint) -> int:
        """Revert to the fork point's snapshot and mine as many blocks as were undone.

        The new blocks have later timestamps than the ones they replace, so other hashes.
        evm_revert also restores the mempool of the snapshot's time: every transaction sent
        after the fork point is gone, mined or pending (`anvil_reorg` keeps pending ones).
        """
        if point.snapshot is None:
            raise KeeperError("not a Hardhat fork point")
        head = self.head()
        self.revert(point.snapshot)
        reverted_to = self.head()
        if reverted_to > point.block:
            raise KeeperError(f"evm_revert went back to block {reverted_to}, above {point.block}")
        depth = head - reverted_to
        self.mine(depth)
        return depth

    def set_next_base_fee(self, wei: int) -> None:
        """hardhat_setNextBlockBaseFeePerGas."""
        rpc(self.url, "hardhat_setNextBlockBaseFeePerGas", [hex(wei)])

    def set_balance(self, address: str, wei: int) -> None:
        """hardhat_setBalance."""
        rpc(self.url, "hardhat_setBalance", [address, hex(wei)])


def start_hardhat(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    chain_id: int = DEV_CHAIN_ID,
    accounts: int = 20,
    log_path: Path | None = None,
    startup_timeout: float = 60.0,
) -> HardhatNode:
    """Start `hardhat node` in a temporary project and wait until it answers `eth_chainId`."""
    npm_root = find_hardhat()
    port = port or free_port()
    tmp = tempfile.TemporaryDirectory(prefix="keeper-hardhat-")
    workdir = Path(tmp.name)
    (workdir / "hardhat.config.js").write_text(
        HARDHAT_CONFIG.format(
            chain_id=chain_id,
            mnemonic=json.dumps(DEV_MNEMONIC),
            accounts=accounts,
            gas_limit=BLOCK_GAS_LIMIT,
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        **_QUIET_ENV,
        "XDG_CONFIG_HOME": str(workdir / "xdg-config"),
        "XDG_CACHE_HOME": str(workdir / "xdg-cache"),
        "XDG_DATA_HOME": str(workdir / "xdg-data"),
    }
    args = [
        "node",
        str(npm_root / "node_modules" / "hardhat" / "internal" / "cli" / "bootstrap.js"),
        "--config",
        str(workdir / "hardhat.config.js"),
        "node",
        "--hostname",
        host,
        "--port",
        str(port),
    ]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        # Run from the npm project (Hardhat refuses to run from outside its installation; the
        # project's root is the configuration's directory), in a session of its own: `stop`
        # kills its whole process group.
        proc = subprocess.Popen(
            args,
            cwd=npm_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    node = HardhatNode(process=proc, port=port, workdir=workdir, host=host, _cleanup=[tmp])
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            node.stop()
            raise HardhatStartFailed(f"hardhat node exited with status {proc.returncode}")
        with contextlib.suppress(OSError, KeeperError):
            if int(str(rpc(node.url, "eth_chainId", timeout=1.0)), 16) == chain_id:
                return node
        time.sleep(0.1)
    node.stop()
    raise HardhatStartFailed(f"hardhat node did not answer on {node.url} within {startup_timeout}s")
