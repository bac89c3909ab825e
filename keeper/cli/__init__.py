"""The `keeper` command line: argument parsing and output only; the work is done elsewhere.

One module per command group holds each command's parser, its `cmd_<name>(args) -> exit status`
handler and its output; `common` what they share. This module assembles the parser and runs a
command: a `KeeperError` becomes a one-paragraph message on stderr (with its help line) and its
`exit_code` (1, or 78 for a configuration error); a usage error is argparse's exit status 2.

Building the parser imports nothing heavy: each handler imports its work (web3, anyio, asyncpg,
pydantic) when it runs, so `--help` and usage errors answer at once, and `keeper run` can refuse
a bad configuration, and note a SIGTERM, before the daemon's imports are loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from keeper import __version__, logs, secrets
from keeper.cli import (
    chain,
    config,
    db,
    deploy,
    dev,
    keys,
    plan,
    roles,
    run,
    sandbox,
    status,
    usage,
)
from keeper.cli.common import Formatter, Handler, configure_logging
from keeper.errors import KeeperError


def build_parser() -> argparse.ArgumentParser:
    """The `keeper` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keeper",
        formatter_class=Formatter,
        description=(
            "Keeps on-chain payment streams, escrows and usage billing settled.\n\n"
            "A command that takes --config reads one TOML file (see\n"
            "config/keeper.example.toml); any field can be overridden from the environment as\n"
            "KEEPER_<SECTION>__<FIELD>, e.g. KEEPER_INGEST__POLL_INTERVAL=2.\n"
            "Exit status: 0 success, 1 error (a one-paragraph message on stderr), 2 usage\n"
            "error, 78 configuration error (a bad field, a key that does not load, the wrong\n"
            "chain, a taken health port: systemd does not restart `keeper run` after it).\n\n"
            "Run `keeper <command> --help` for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"keeper {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="lowest level of log lines written to stderr",
    )
    sub = parser.add_subparsers(
        title="commands", dest="command", metavar="<command>", required=True
    )
    # In this order in `keeper --help`, which lists each command once, with its parser's help.
    run.add_parser(sub)
    db.add_parser(sub)
    status.add_parser(sub)
    config.add_parsers(sub)  # check-config, config
    plan.add_parser(sub)
    chain.add_parsers(sub)  # backfill, verify
    usage.add_parser(sub)
    keys.add_parser(sub)
    roles.add_parser(sub)
    deploy.add_parser(sub)
    dev.add_devchain_parser(sub)
    dev.add_demo_parser(sub)
    sandbox.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `keeper` command line; return the exit status.

    Whatever the command prints, and the traceback of a crash, goes through
    `keeper.secrets.scrub`: no secret of the configuration reaches the terminal or the log.
    """
    secrets.install_hooks()
    with secrets.scrubbed_output():
        parser = build_parser()
        args = parser.parse_args(argv)
        configure_logging(args.log_level)
        handler: Handler = args.handler
        try:
            return handler(args)
        except KeeperError as exc:
            _report(args.command, exc)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130


def _report(command: str, exc: KeeperError) -> None:
    """The one-paragraph error on stderr; from a daemon writing JSON lines, also its last line
    (`keeper_failed`), which replaces the paragraph when stderr goes to the journal too: there
    every line is JSON."""
    if logs.json_lines():
        log = structlog.get_logger("keeper")
        log.error("keeper_failed", error=exc.message, help=exc.help, exit_status=exc.exit_code)
        if logs.is_journal(sys.stderr):
            return
    print(f"keeper {command}: error: {secrets.scrub(str(exc))}", file=sys.stderr)
