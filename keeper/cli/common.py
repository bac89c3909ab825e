"""What the command modules share: the help formatter, option types and the database URL.

Option types register a secret before anything could print it, and import what they check
against inside the function: building the parser must stay cheap (see `keeper.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from keeper import logs, secrets
from keeper.errors import KeeperError

DATABASE_URL_ENV = "KEEPER_DATABASE_URL"
CONFIG_HELP = "the keeper's TOML configuration"

Handler = Callable[[argparse.Namespace], int]
Number = TypeVar("Number", int, float)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks; show the options' defaults where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def number(
    text: str, parse: Callable[[str], Number], what: str, ok: Callable[[Number], bool], rule: str
) -> Number:
    """`parse(text)` if it reads as `what` and passes `ok`, else an argparse error."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(rule)
    return value


def chain_id(text: str) -> int:
    """A `--chain-id` value: a positive 64-bit integer."""
    return number(
        text, int, "a chain id", lambda v: 0 < v < 2**63, "must be a positive 64-bit integer"
    )


def rpc_url(text: str) -> str:
    """An `--rpc-url` value, registered as a secret before it is checked."""
    from keeper.urls import RPC_SCHEMES, url_problem

    secrets.register_url(text)  # before anything could print it
    problem = url_problem(text, RPC_SCHEMES)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not an RPC URL: {problem}")
    return text


def database_url_option(text: str) -> str:
    """A `--database-url` value, registered as a secret before it is checked."""
    from keeper.urls import database_url_problem

    secrets.register_dsn(text)  # before anything could print it
    problem = database_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not a database URL: {problem}")
    return text


def add_database_url(target: Any) -> None:
    """The `--database-url` option of the commands that fall back to $KEEPER_DATABASE_URL."""
    target.add_argument(
        "--database-url",
        type=database_url_option,
        metavar="DSN",
        help="PostgreSQL URL (postgresql://user:password@host:port/db); "
        f"default: ${DATABASE_URL_ENV}",
    )


def add_config(
    parser: argparse.ArgumentParser,
    text: str = f"{CONFIG_HELP} (KEEPER_<SECTION>__<FIELD> variables override it)",
) -> None:
    """The required `--config FILE` option, with `text` as its help."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE", help=text)


def add_json(parser: argparse.ArgumentParser, text: str = "print one JSON object instead") -> None:
    """The `--json` option: the result as JSON instead of text."""
    parser.add_argument("--json", action="store_true", help=text)


def add_group(sub: Any, name: str, summary: str, about: str, subcommands: str) -> Any:
    """A command made of subcommands, such as `keeper config`: the subparsers to add them to."""
    group = sub.add_parser(
        name,
        formatter_class=Formatter,
        help=summary,
        description=(
            f"{about}\n\nSubcommands:\n{subcommands}\n\n"
            f"Run `keeper {name} <subcommand> --help` for its options."
        ),
    )
    return group.add_subparsers(dest=f"{name}_command", metavar="<subcommand>", required=True)


def database_url(args: argparse.Namespace) -> str:
    """--database-url, else $KEEPER_DATABASE_URL: registered as a secret, and checked."""
    from keeper.urls import database_url_problem

    origin = "--database-url" if args.database_url else DATABASE_URL_ENV
    dsn: str | None = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not dsn:
        raise KeeperError(
            "no database URL",
            help="pass --database-url postgresql://user:password@host/db "
            f"or set {DATABASE_URL_ENV}",
        )
    secrets.register_dsn(dsn)
    problem = database_url_problem(dsn)
    if problem is not None:
        raise KeeperError(
            f"{origin}: not a database URL: {problem}",
            help="give a postgresql://user:password@host:port/dbname URL, with special "
            "characters of the user name and password percent-encoded",
        )
    return dsn


def configure_logging(level: str) -> None:
    """Log lines to stderr at `level` and above, scrubbed of secrets."""
    # stderr, so that a command's stdout carries only its result; the daemon sets up its own
    # logging (JSON under systemd) when it starts.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            logs.scrubbed(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
