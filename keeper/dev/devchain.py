"""A local development chain: anvil from `node_modules`, with the contracts deployed.

`keeper devchain` and `keeper demo` both start here. anvil's well-known development accounts
play fixed roles (`DEV_ROLES`), so a dev configuration can name its signers by account index
instead of by key; keys are derived from anvil's public dev mnemonic and never printed.

anvil starts in automine mode, so the deployment (and the demo's workload) is mined as fast
as it is sent, then switches to interval mining: chain time then moves on by itself, as on a
real chain, and streams keep accruing while nothing is sent.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, free_port, rpc, start_anvil
from keeper.errors import KeeperError
from keeper.ops.deploy import DEFAULT_FEE_BPS, DEFAULT_NOTICE_PERIOD, deploy_all

DEFAULT_PORT = 8545
DEFAULT_BLOCK_TIME = 1.0
DEFAULT_OUT = Path(".keeper/devchain/deployment.json")


@dataclass(frozen=True)
class DevRoles:
    """Which anvil dev account (by index) plays which role on a dev chain."""

    deployer: int = 0
    oracle: int = 1
    fee_recipient: int = 2


DEV_ROLES = DevRoles()


class DevChainError(KeeperError):
    """The development chain could not be started."""


class PortInUse(DevChainError):
    """The requested port is already in use."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived: unwind, clean up, exit 0.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up
    swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into `StopRequested`; ignore repeats while unwinding.

    Without this, SIGTERM would kill the process on the spot and leave anvil (and an embedded
    Postgres) running without their parent. A second signal is ignored so that it cannot
    interrupt the clean-up the first one started.
    """
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in handled}

    def handler(signum: int, frame: FrameType | None) -> None:
        hold_stop_signals()
        raise StopRequested(signum)

    for s in handled:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def hold_stop_signals() -> None:
    """Ignore SIGINT/SIGTERM from now on (until `stop_on_signals` exits): call it first thing
    in clean-up code, which a late signal must not cut short."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing accepts connections on `host:port` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_dev_anvil(*, host: str, port: int, log_path: Path | None = None) -> Anvil:
    """Start anvil in automine mode on `host:port` (0: any free port)."""
    if port == 0:
        port = free_port()
    elif not port_is_free(host, port):
        raise PortInUse(
            f"port {port} on {host} is already in use",
            help="stop whatever listens there (another `keeper devchain`?), "
            "or pass --port N (--port 0 picks a free port)",
        )
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    # A Ctrl-C on the terminal goes to the whole foreground process group, anvil included,
    # which would then die before the processes that use it (the demo's keeper) are stopped.
    # anvil inherits a blocked SIGINT through fork and exec and never unblocks it; its parent
    # stops it with SIGTERM, in its turn.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        node = start_anvil(host=host, port=port, log_path=log_path)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise
    try:
        # A SIGINT that came meanwhile is delivered here (stop_on_signals raises).
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except BaseException:
        node.stop()
        raise
    return node


def deploy_dev(
    rpc_url: str, *, fee_bps: int = DEFAULT_FEE_BPS, notice_period: int = DEFAULT_NOTICE_PERIOD
) -> Deployment:
    """Deploy the contracts with the dev accounts in their `DEV_ROLES`."""
    return deploy_all(
        rpc_url,
        dev_key(DEV_ROLES.deployer).reveal_hex(),
        oracle=dev_key(DEV_ROLES.oracle).address,
        fee_recipient=dev_key(DEV_ROLES.fee_recipient).address,
        fee_bps=fee_bps,
        notice_period=notice_period,
    )


def set_interval_mining(rpc_url: str, block_time: float) -> None:
    """Switch anvil from automine to a block every `block_time` seconds (0: stay automine)."""
    if block_time <= 0:
        return
    # anvil takes whole seconds here; a sub-second block time still means "one per second".
    rpc(rpc_url, "evm_setIntervalMining", [max(1, round(block_time))])


def wait_until_stopped(node: Anvil, poll: float = 0.5) -> None:
    """Block until `StopRequested` arrives; raise `DevChainError` if anvil dies first."""
    while True:
        if node.process.poll() is not None:
            # A Ctrl-C on the terminal reaches anvil (same process group) as well as us, and
            # anvil may win the race: give our own signal handler a moment to run first.
            time.sleep(1.0)
            raise DevChainError(
                f"anvil exited unexpectedly with status {node.process.returncode}",
                help="see the anvil log for why",
            )
        time.sleep(poll)


def connection_text(
    node_url: str, deployment: Deployment, deployment_file: Path, *, dev_accounts: bool = True
) -> str:
    """What an operator needs to point a keeper at this chain, as printable text.

    `dev_accounts` adds which anvil dev account plays each role (dev chains only).
    """
    d = deployment

    def account(index: int) -> str:
        return f"  (account {index})" if dev_accounts else ""

    roles_title = (
        "roles (anvil's dev mnemonic, keeper.dev.anvil.DEV_MNEMONIC; keys are not printed)"
        if dev_accounts
        else "roles"
    )
    return "\n".join(
        [
            f"RPC URL          {node_url}",
            f"chain id         {d.chain_id}",
            f"deployment file  {deployment_file}",
            f"deployment block {d.deployment_block}",
            "",
            "contracts",
            f"  token           {d.token}",
            f"  StreamManager   {d.stream_manager}",
            f"  EscrowVault     {d.escrow_vault}",
            "",
            roles_title,
            f"  admin/deployer  {d.deployer}{account(DEV_ROLES.deployer)}",
            f"  oracle          {d.oracle}{account(DEV_ROLES.oracle)}",
            f"  fee recipient   {d.fee_recipient}{account(DEV_ROLES.fee_recipient)}",
            f"  platform fee    {d.fee_bps} bps",
            f"  notice period   {d.notice_period} s (payer closes and price cuts wait this long)",
            "",
            "Point a keeper configuration at it:",
            "  [chain]",
            f'  rpc_url = "{node_url}"',
            f'  deployment_file = "{deployment_file}"',
        ]
    )


def run_devchain(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    block_time: float = DEFAULT_BLOCK_TIME,
    out: Path = DEFAULT_OUT,
    notice_period: int = DEFAULT_NOTICE_PERIOD,
    stdout: TextIO | None = None,
) -> int:
    """`keeper devchain`: start anvil, deploy, write `out`, serve until SIGINT/SIGTERM.

    Returns the exit status: 0 after a signal stopped it cleanly.
    """
    stdout = stdout or sys.stdout
    out = out.resolve()
    # A file left by an earlier run describes a chain that is gone, and its presence is what
    # tells scripts this one is ready.
    out.unlink(missing_ok=True)
    with stop_on_signals():
        node: Anvil | None = None
        try:
            node = start_dev_anvil(host=host, port=port, log_path=out.parent / "anvil.log")
            deployment = deploy_dev(node.url, notice_period=notice_period)
            set_interval_mining(node.url, block_time)
            mining = f"a block every {block_time:g} s" if block_time > 0 else "automine"
            log_file = out.parent / "anvil.log"
            print(f"dev chain running ({mining}); anvil log: {log_file}", file=stdout)
            print(connection_text(node.url, deployment, out), file=stdout)
            print("\nPress Ctrl-C to stop.", file=stdout, flush=True)
            # Written last: its appearance tells scripts (and tests) the chain is ready.
            deployment.write(out)
            wait_until_stopped(node)
        except StopRequested:
            print("stopping the dev chain", file=stdout, flush=True)
        finally:
            hold_stop_signals()
            if node is not None:
                node.stop()
    return 0
