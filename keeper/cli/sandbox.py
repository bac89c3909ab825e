"""`keeper dev open-stream|open-escrow`: a stream or an escrow on a dev chain, to try things."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import CONFIG_HELP, Formatter, add_config, add_group, number

DEV_ACCOUNTS = 10  # anvil's default number of dev accounts
UNIT = 10**6  # one whole token of the dev chain's 6-decimal test token


def _account(text: str) -> int:
    return number(
        text,
        int,
        "an account index",
        lambda v: 0 <= v < DEV_ACCOUNTS,
        f"must be an anvil dev account, 0 to {DEV_ACCOUNTS - 1}",
    )


def _amount(text: str) -> int:
    return number(text, int, "a whole number", lambda v: v > 0, "must be positive")


def _price(text: str) -> int:
    return number(text, int, "a whole number", lambda v: v >= 0, "must not be negative")


def _deployment(args: argparse.Namespace) -> tuple[str, Any]:
    from keeper.config_load import load_config

    config = load_config(args.config)
    return config.chain.primary_url, config.deployment()


def cmd_open_stream(args: argparse.Namespace) -> int:
    """Open a stream between two dev accounts; print its id."""
    from keeper.dev.sandbox import open_stream

    rpc_url, deployment = _deployment(args)
    opened = open_stream(
        rpc_url,
        deployment,
        payer=args.payer,
        payee=args.payee,
        rate=args.rate,
        deposit=args.deposit,
        usage_price=args.usage_price,
    )
    print(
        f"opened stream {opened.id}: payer {opened.payer} (account {args.payer}), payee "
        f"{opened.payee} (account {args.payee}), {args.rate} base units/s, deposit "
        f"{args.deposit}, usage price {args.usage_price}"
    )
    return 0


def cmd_open_escrow(args: argparse.Namespace) -> int:
    """Create an escrow between two dev accounts; print its id and expiry."""
    from keeper.dev.sandbox import open_escrow

    rpc_url, deployment = _deployment(args)
    opened = open_escrow(
        rpc_url,
        deployment,
        payer=args.payer,
        payee=args.payee,
        amount=args.amount,
        timeout=args.timeout,
    )
    print(
        f"opened escrow {opened.id}: payer {opened.payer} (account {args.payer}), payee "
        f"{opened.payee} (account {args.payee}), amount {args.amount}, expires at chain time "
        f"{opened.expires_at}"
    )
    return 0


def _accounts(parser: argparse.ArgumentParser) -> None:
    add_config(parser, CONFIG_HELP + "; its chain must be a `keeper devchain` chain")
    parser.add_argument(
        "--payer", type=_account, default=3, metavar="N", help="the payer: anvil dev account N"
    )
    parser.add_argument(
        "--payee", type=_account, default=6, metavar="N", help="the payee: anvil dev account N"
    )


def add_parser(sub: Any) -> None:
    """`keeper dev open-stream|open-escrow --config FILE [options]`."""
    dev_sub = add_group(
        sub,
        "dev",
        "on a dev chain: open a stream or an escrow to try the keeper",
        "Give a keeper on a `keeper devchain` chain something to do: anvil's dev accounts\n"
        "open a stream or an escrow. The payer is minted the test tokens it needs by the\n"
        "token's owner (dev account 0) and approves the contract first. Amounts are in the\n"
        f"token's base units ({UNIT:,} = 1 tUSD). Refused on any other chain.",
    )
    stream = dev_sub.add_parser(
        "open-stream",
        formatter_class=Formatter,
        help="a dev account opens a stream to another",
        description=(
            "Dev account --payer opens a stream to dev account --payee (openStream) and the\n"
            "stream's id is printed. The keeper settles it once it has accrued\n"
            "plan.settle_min_amount, after plan.settle_max_interval, or before its deposit\n"
            "runs out; with --usage-price, usage rows naming it are billed at that price."
        ),
    )
    _accounts(stream)
    stream.add_argument(
        "--rate", type=_amount, default=1_000, metavar="R", help="base units per second"
    )
    stream.add_argument(
        "--deposit", type=_amount, default=100 * UNIT, metavar="D", help="base units deposited"
    )
    stream.add_argument(
        "--usage-price",
        type=_price,
        default=0,
        metavar="P",
        help="the stream's own price per usage unit (0: none)",
    )
    stream.set_defaults(handler=cmd_open_stream)

    escrow = dev_sub.add_parser(
        "open-escrow",
        formatter_class=Formatter,
        help="a dev account puts tokens in escrow for another",
        description=(
            "Dev account --payer deposits --amount in EscrowVault and puts it in escrow for\n"
            "dev account --payee for --timeout seconds (createEscrow); the escrow's id and\n"
            "expiry are printed. Unless released, the keeper refunds it once it expired."
        ),
    )
    _accounts(escrow)
    escrow.add_argument(
        "--amount", type=_amount, default=10 * UNIT, metavar="A", help="base units in escrow"
    )
    escrow.add_argument(
        "--timeout", type=_amount, default=60, metavar="S", help="seconds until it expires"
    )
    escrow.set_defaults(handler=cmd_open_escrow)
