"""`keeper run`: the daemon."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from keeper import logs
from keeper.cli.common import CONFIG_HELP, Formatter, add_config


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    # Until the daemon's own signal receiver is in place (after the imports), a SIGTERM is only
    # noted, and the daemon stops as soon as it starts: never killed by the default action.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    from keeper.config_load import load_config

    config = load_config(args.config)  # first: a bad file is refused before web3 is loaded
    import anyio

    from keeper.service import daemon

    logs.configure(
        args.log_level if args.log_level != "info" else config.log.level, config.log.format
    )
    status: int = anyio.run(daemon.run, config, stop.is_set)
    return status


def add_parser(sub: Any) -> None:
    """`keeper run --config FILE`."""
    run = sub.add_parser(
        "run",
        formatter_class=Formatter,
        help="run the daemon",
        description=(
            "Run the keeper daemon with the given configuration: listen on the health port,\n"
            "apply migrations, then follow the chain's logs into the database (backfill from\n"
            "the deployment block, then the head, handling reorgs) until SIGTERM or SIGINT\n"
            "(exit 0). Exit 3: the chain reorganised below the finalized block; 78: a\n"
            "configuration error (a bad field or key, the wrong chain, a taken health port);\n"
            "1: another error (e.g. the database out of reach).\n\n"
            "Its log is JSON lines on stdout when stdout is not a terminal, each line behind\n"
            "its syslog priority (<3>, <6>, ...) when stdout is the journal ($JOURNAL_STREAM)."
        ),
    )
    add_config(run, CONFIG_HELP)
    run.set_defaults(handler=cmd_run)
