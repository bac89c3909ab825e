"""`keeper devchain` and `keeper demo`: a local chain, and a local keeper with a workload."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from keeper import secrets
from keeper.cli.common import Formatter, database_url_option, number, rpc_url


def _port(text: str) -> int:
    return number(
        text, int, "a port number", lambda v: 0 <= v <= 65535, "must be between 0 and 65535"
    )


def _seconds(text: str) -> float:
    return number(text, float, "a number of seconds", lambda v: v >= 0, "must not be negative")


def _chain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=_port, default=8545, metavar="N", help="anvil's port (0: any free port)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address anvil listens on")
    parser.add_argument(
        "--block-time",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds between blocks once set up (0: a block per transaction)",
    )


def cmd_devchain(args: argparse.Namespace) -> int:
    """Run anvil with the contracts deployed until interrupted."""
    from keeper.dev.devchain import run_devchain

    return run_devchain(host=args.host, port=args.port, block_time=args.block_time, out=args.out)


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up a local chain, database and workload, and run the keeper on them."""
    from keeper.dev.demo import DemoOptions, run_demo

    secrets.register_dsn(args.database_url)
    secrets.register_url(args.rpc_url)
    return run_demo(
        DemoOptions(
            port=args.port,
            host=args.host,
            block_time=args.block_time,
            database_url=args.database_url,
            rpc_url=args.rpc_url,
            data_dir=args.data_dir,
            wait=not args.no_wait,
            health_port=args.health_port,
            duration=args.duration,
        )
    )


def add_devchain_parser(sub: Any) -> None:
    """`keeper devchain [--port N] [--host H] [--block-time S] [--out FILE]`."""
    devchain = sub.add_parser(
        "devchain",
        formatter_class=Formatter,
        help="run a local anvil chain with the contracts deployed",
        description=(
            "Start anvil from the project's node_modules, deploy the contracts with anvil's\n"
            "dev account 0 (oracle: account 1, fee recipient: account 2), write the\n"
            "deployment file, print the RPC URL, the addresses and how to configure a\n"
            "keeper for it, and run until Ctrl-C or SIGTERM (then stop anvil, exit 0).\n"
            "The deployment file is written last, once the chain is ready."
        ),
    )
    _chain_options(devchain)
    devchain.add_argument(
        "--out",
        type=Path,
        default=Path(".keeper/devchain/deployment.json"),
        metavar="FILE",
        help="deployment file to write (anvil's log goes next to it)",
    )
    devchain.set_defaults(handler=cmd_devchain)


def add_demo_parser(sub: Any) -> None:
    """`keeper demo [options]`."""
    demo = sub.add_parser(
        "demo",
        formatter_class=Formatter,
        help="local chain + database + example workload, to try things out",
        description=(
            "Start anvil and an embedded PostgreSQL (pgserver, from `pip install 'keeper[dev]'`)\n"
            "in the data directory, migrate, deploy, record the deployment in the database,\n"
            "then create a workload with anvil's dev accounts: streams at several rates (one\n"
            "about to deplete), usage prices, escrows (one about to expire, one released), a\n"
            "usage report batch and a settlement batch. Print what was done and how to\n"
            "connect, then run the keeper daemon (`keeper run`, configuration and log in the\n"
            "data directory) while payers keep opening streams and escrows and usage rows keep\n"
            "arriving, and print a line of what the keeper did every 5 s, until Ctrl-C or\n"
            "SIGTERM: then the keeper, the workload, anvil and the database stop, in that\n"
            "order, and the exit status is 0 (1 if the keeper died on its own).\n"
            "The embedded database is recreated on every run."
        ),
    )
    _chain_options(demo)
    demo.add_argument(
        "--database-url",
        type=database_url_option,
        metavar="DSN",
        help="use this PostgreSQL instead of the embedded one (it is migrated, not emptied)",
    )
    demo.add_argument(
        "--rpc-url",
        type=rpc_url,
        metavar="URL",
        help="use this running anvil node (with anvil's default dev accounts) instead of "
        "starting one; --port, --host and --block-time are then ignored",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".keeper/demo"),
        metavar="DIR",
        help="where the embedded PostgreSQL, anvil's log and the deployment file live",
    )
    demo.add_argument(
        "--no-wait",
        action="store_true",
        help="set everything up, print it, stop it all and exit (for scripts and tests)",
    )
    demo.add_argument(
        "--health-port",
        type=_port,
        default=9464,
        metavar="N",
        help="the keeper's health port; when taken, any free port (0: any free port)",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        metavar="S",
        help="stop after running this many seconds, as on Ctrl-C (default: until Ctrl-C)",
    )
    demo.set_defaults(handler=cmd_demo)
