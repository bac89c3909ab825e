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
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from keeper import logs, secrets
from keeper.errors import KeeperError

if TYPE_CHECKING:
    from keeper.chain.keys import PrivateKey

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


def add_group(sub: Any, name: str, summary: str, about: str) -> Any:
    """A command made of subcommands, such as `keeper config`: the subparsers to add them to.

    Its --help lists each subcommand once, with the help its parser gives."""
    group = sub.add_parser(
        name,
        formatter_class=Formatter,
        help=summary,
        description=f"{about}\n\nRun `keeper {name} <subcommand> --help` for its options.",
    )
    return group.add_subparsers(
        title="subcommands", dest=f"{name}_command", metavar="<subcommand>", required=True
    )


def add_database_target(parser: argparse.ArgumentParser, config_help: str) -> None:
    """`--config FILE | --database-url DSN` (else $KEEPER_DATABASE_URL): where a database-only
    command finds its database; read back with `target_database_url`."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    add_database_url(target)


def target_database_url(args: argparse.Namespace) -> str:
    """The database of `add_database_target`'s options: the configuration's database.url
    (KEEPER_DATABASE__URL overriding it), else --database-url, else $KEEPER_DATABASE_URL."""
    if args.config is None:
        return database_url(args)
    from keeper.config_load import load_config

    return load_config(args.config).database.url.get_secret_value()


def add_key_options(parser: argparse.ArgumentParser, whose: str) -> None:
    """Exactly one of --key-file, --key-env or --keystore (with --password-file): the private
    key of `whose` (e.g. "the deployer"), read back with `load_key`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding {whose}'s private key as hex (0x optional)",
    )
    source.add_argument(
        "--key-env",
        metavar="VAR",
        help=f"name of the environment variable holding {whose}'s private key as hex",
    )
    source.add_argument(
        "--keystore",
        type=Path,
        metavar="FILE",
        help=f"{whose}'s encrypted keystore JSON file (V3, as `keeper keys new`, geth or cast "
        "write it); needs --password-file",
    )
    parser.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file holding the keystore's password"
    )


def load_key(args: argparse.Namespace) -> PrivateKey:
    """The key `add_key_options` names, registered as a secret before anything could print it."""
    from keeper.chain import keys

    if args.keystore is not None and args.password_file is None:
        raise KeeperError("--keystore needs --password-file", help="put the password in a file")
    if args.password_file is not None and args.keystore is None:
        raise KeeperError("--password-file only goes with --keystore")
    if args.password_file is not None:
        secrets.register_file(args.password_file)
    if args.key_file is not None:
        key = keys.load_key_file(args.key_file)
    elif args.key_env is not None:
        key = keys.load_key_env(args.key_env)
    else:
        key = keys.load_keystore(args.keystore, args.password_file)
    secrets.register_key(key.reveal_hex())
    return key


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
    """Log lines to stderr at `level` and above, scrubbed of secrets: readable text, or JSON
    lines with journald's priority when stderr is the journal (`keeper migrate` in its unit)."""
    # stderr, so that a command's stdout carries only its result; the daemon sets up its own
    # logging (JSON under systemd) when it starts.
    journal = logs.is_journal(sys.stderr)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if journal
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    render = logs.prioritised(logs.scrubbed(renderer)) if journal else logs.scrubbed(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
