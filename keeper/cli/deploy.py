"""`keeper deploy`: deploy the contracts with an operator's key and write a deployment file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from keeper import secrets
from keeper.cli.common import Formatter, add_key_options, load_key, number, rpc_url
from keeper.errors import KeeperError

MAX_FEE_BPS = 1000  # StreamManager.MAX_FEE_BPS: checked here so a bad value fails before gas


def _address(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not is_address(text):
        raise argparse.ArgumentTypeError(f"not an Ethereum address: {text!r}")
    return str(to_checksum_address(text))


def _fee_bps(text: str) -> int:
    return number(
        text,
        int,
        "an integer",
        lambda v: 0 <= v <= MAX_FEE_BPS,
        f"must be between 0 and {MAX_FEE_BPS} basis points",
    )


def _notice_period(text: str) -> int:
    from keeper.chain.deployment import MAX_NOTICE_PERIOD

    return number(
        text,
        int,
        "a whole number of seconds",
        lambda v: 0 <= v <= MAX_NOTICE_PERIOD,
        f"must be between 0 and {MAX_NOTICE_PERIOD} seconds",
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    """Deploy the contracts with an operator's key and write the deployment file."""
    from keeper.dev.devchain import connection_text
    from keeper.ops.deploy import DeployError, deploy_all
    from keeper.urls import redact_url

    secrets.register_url(args.rpc_url)
    key = load_key(args)
    shown = redact_url(args.rpc_url)
    print(f"deploying to {shown} as {key.address}", file=sys.stderr, flush=True)
    try:
        deployment = deploy_all(
            args.rpc_url,
            key.reveal_hex(),
            oracle=args.oracle,
            fee_recipient=args.fee_recipient,
            fee_bps=args.fee_bps,
            notice_period=args.notice_period,
            token_address=args.token,
        )
    except KeeperError:
        raise
    except Exception as exc:
        # Node errors (insufficient funds, reverts) as a message, not a traceback. They hold
        # transaction fields at most: the key itself never leaves this process.
        raise DeployError(f"deploying to {shown} failed: {exc}") from exc
    out: Path = args.out.resolve()
    deployment.write(out)
    print(connection_text(args.rpc_url, deployment, out, dev_accounts=False))
    return 0


def add_parser(sub: Any) -> None:
    """`keeper deploy --rpc-url URL (--key-file | --key-env | --keystore) --out FILE`."""
    deploy = sub.add_parser(
        "deploy",
        formatter_class=Formatter,
        help="deploy the contracts and write a deployment file",
        description=(
            "Deploy TestToken (unless --token is given), StreamManager and EscrowVault with\n"
            "one key, grant the oracle its role, and write the deployment file the keeper's\n"
            "configuration points at. The deployer becomes admin and pauser. The key is\n"
            "read from exactly one of --key-file, --key-env or --keystore and is never\n"
            "printed."
        ),
    )
    deploy.add_argument(
        "--rpc-url", type=rpc_url, required=True, metavar="URL", help="JSON-RPC endpoint"
    )
    add_key_options(deploy, "the deployer")
    deploy.add_argument(
        "--oracle",
        type=_address,
        metavar="ADDR",
        help="account granted ORACLE_ROLE (may report usage); default: the deployer",
    )
    deploy.add_argument(
        "--fee-recipient",
        type=_address,
        metavar="ADDR",
        help="account credited the platform fee; default: the deployer",
    )
    deploy.add_argument(
        "--fee-bps",
        type=_fee_bps,
        default=250,
        metavar="N",
        help=f"platform fee in basis points (0-{MAX_FEE_BPS})",
    )
    deploy.add_argument(
        "--notice-period",
        type=_notice_period,
        default=600,
        metavar="SECONDS",
        help=(
            "how long a payer's close or price decrease and a payee's price change wait\n"
            "before they take effect; usage served before must be reported within it"
        ),
    )
    deploy.add_argument(
        "--token",
        type=_address,
        metavar="ADDR",
        help="existing ERC-20 token to use; default: deploy a TestToken (6 decimals)",
    )
    deploy.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="deployment file to write"
    )
    deploy.set_defaults(handler=cmd_deploy)
