"""The `keeper` command line: argument parsing and output only; the work is done elsewhere.

Each subcommand is a `cmd_<name>(args) -> exit status` function. A `KeeperError` becomes a
one-paragraph message on stderr (with its help line) and exit status 1; a usage error is
argparse's exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from keeper import __version__, logs, secrets
from keeper.errors import KeeperError

DATABASE_URL_ENV = "KEEPER_DATABASE_URL"
MAX_FEE_BPS = 1000  # StreamManager.MAX_FEE_BPS: checked here so a bad value fails before gas

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- argument types


def _address(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not is_address(text):
        raise argparse.ArgumentTypeError(f"not an Ethereum address: {text!r}")
    return str(to_checksum_address(text))


def _fee_bps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_FEE_BPS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_FEE_BPS} basis points")
    return value


def _notice_period(text: str) -> int:
    from keeper.chain.deployment import MAX_NOTICE_PERIOD

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value <= MAX_NOTICE_PERIOD:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_NOTICE_PERIOD} seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def _chain_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a chain id: {text!r}") from None
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError("must be a positive 64-bit integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _rpc_url(text: str) -> str:
    from keeper.urls import RPC_SCHEMES, url_problem

    secrets.register_url(text)  # before anything could print it
    problem = url_problem(text, RPC_SCHEMES)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not an RPC URL: {problem}")
    return text


def _database_url_option(text: str) -> str:
    from keeper.urls import database_url_problem

    secrets.register_dsn(text)  # before anything could print it
    problem = database_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not a database URL: {problem}")
    return text


# --------------------------------------------------------------------------- commands


def cmd_deploy(args: argparse.Namespace) -> int:
    """Deploy the contracts with an operator's key and write the deployment file."""
    from keeper.chain import keys
    from keeper.chain.deployment import DeployError, deploy_all
    from keeper.dev.devchain import connection_text
    from keeper.urls import redact_url

    if args.keystore is not None and args.password_file is None:
        raise KeeperError("--keystore needs --password-file", help="put the password in a file")
    if args.password_file is not None and args.keystore is None:
        raise KeeperError("--password-file only goes with --keystore")
    secrets.register_url(args.rpc_url)
    if args.password_file is not None:
        secrets.register_file(args.password_file)
    if args.key_file is not None:
        key = keys.load_key_file(args.key_file)
    elif args.key_env is not None:
        key = keys.load_key_env(args.key_env)
    else:
        key = keys.load_keystore(args.keystore, args.password_file)
    secrets.register_key(key.reveal_hex())
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


def cmd_devchain(args: argparse.Namespace) -> int:
    """Run anvil with the contracts deployed until interrupted."""
    from keeper.dev.devchain import run_devchain

    return run_devchain(host=args.host, port=args.port, block_time=args.block_time, out=args.out)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations."""
    import anyio

    from keeper.db import redact_dsn
    from keeper.db.migrations import migrate

    if args.config is not None:
        from keeper.config import load_config

        dsn = load_config(args.config).database.url.get_secret_value()
    else:
        dsn = _database_url(args)
    applied = anyio.run(migrate, dsn)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"{redact_dsn(dsn)} is up to date")
    return 0


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


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    # Until the daemon's own signal receiver is in place (after the imports), a SIGTERM is only
    # noted, and the daemon stops as soon as it starts: never killed by the default action.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    from keeper.config import load_config

    config = load_config(args.config)  # first: a bad file is refused before web3 is loaded
    import anyio

    from keeper.service import daemon

    logs.configure(
        args.log_level if args.log_level != "info" else config.log.level, config.log.format
    )
    status: int = anyio.run(daemon.run, config, stop.is_set)
    return status


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what the next planning pass would send, without sending or planning anything."""
    import json

    import anyio

    from keeper.config import load_config

    config = load_config(args.config)
    result = anyio.run(_dry_plan, config)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    base_fee = result["base_fee"]
    print(
        f"chain {result['chain_id']}: indexed block {result['indexed_block']}, head "
        f"{result['head_block']}, base fee {base_fee if base_fee is not None else '-'} wei"
    )
    due = result["due"]
    print(
        f"due: {due.get('settle', 0)} streams to settle, {due.get('refund', 0)} escrows to "
        f"refund, {due.get('usage', 0)} usage reports to record"
    )
    if result["held_by_base_fee"]:
        print(f"held back by the base-fee ceiling: {result['held_by_base_fee']} items")
    if not result["batches"]:
        print("nothing to send")
    for b in result["batches"]:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(b["reason_counts"].items()))
        gas = b["simulated_gas"]
        shown = f"gas {gas:,}" if gas is not None else f"reverts: {b['simulation_error']}"
        urgent = "urgent " if b["urgent"] else ""
        print(f"{b['kind']:<7} {urgent}{len(b['items'])} items  {shown}  ({reasons})  {b['key']}")
        if b["kind"] == "usage":
            print(f"        stream:seq: {' '.join(f'{i}:{q}' for i, _, q, *_ in b['items'])}")
        else:
            print(f"        ids: {' '.join(map(str, b['items']))}")
    return 0


async def _dry_plan(config: Any) -> dict[str, Any]:
    from keeper import db
    from keeper.plan.planner import Planner, dry_run

    deployment = config.deployment()
    planner = Planner(
        deployment.chain_id,
        stream_manager=deployment.stream_manager,
        escrow_vault=deployment.escrow_vault,
        settings=config.plan.settings(),
    )
    conn = await db.connect(config.database.url.get_secret_value())
    client = config.chain.client()
    try:
        return await dry_run(planner, conn, client, deployment.deployer, deployment.oracle)
    finally:
        await client.close()
        await conn.close()


def cmd_usage_import(args: argparse.Namespace) -> int:
    """Queue the rows of a usage file in `usage_inbox` for the keeper to validate."""
    import json

    import anyio

    from keeper.ops import usage_import

    dsn = _database_url(args)
    fmt = usage_import.file_format(args.file, args.format)
    source = args.source or usage_import.source_name(args.file)
    with usage_import.open_file(args.file) as stream:
        # The CSV header is checked here, before the database is touched.
        reader = usage_import.UsageReader(stream, fmt, source=source, chain_id=args.chain_id)
        progress = usage_import.Progress.on_terminal(
            sys.stderr, total_bytes=usage_import.file_size(stream)
        )
        summary = anyio.run(lambda: usage_import.import_to_database(dsn, reader, progress=progress))
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print one chain's status from the database (read-only: safe next to a running keeper)."""
    import json

    import anyio

    chain_id: int | None = args.chain_id
    if args.config is not None:
        from keeper.config import load_config

        config = load_config(args.config)
        dsn = config.database.url.get_secret_value()
        if chain_id is None:
            chain_id = config.chain.chain_id or config.deployment().chain_id
    else:
        dsn = _database_url(args)

    async def run() -> dict[str, Any]:
        from keeper import db
        from keeper.service.status import collect_status

        conn = await db.connect(dsn)
        try:
            return await collect_status(conn, chain_id)
        finally:
            await conn.close()

    status = anyio.run(run)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from keeper.service.status import render_status

        print(render_status(status), end="")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Check a configuration, one line per check; exit 0 only when every check passes."""
    import anyio

    from keeper.chain import preflight

    def show(check: preflight.Check) -> None:
        text = check.detail.replace("\n", "\n" + " " * 20)
        line = f"{'ok' if check.ok else 'FAIL':<5} {check.name:<13} {text}"
        print(line, file=sys.stdout if check.ok else sys.stderr, flush=True)

    results = anyio.run(preflight.check_all, args.config, show)
    failed = [c for c in results if not c.ok]
    if failed:
        print(
            f"keeper check-config: {len(failed)} problem{'s' if len(failed) > 1 else ''} "
            f"in {args.config}; `keeper run` would not start with it",
            file=sys.stderr,
        )
        return 1
    print(f"{args.config}: all {len(results)} checks passed")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective configuration (file, environment, defaults), secrets masked."""
    import json

    from keeper.config import effective, env_overrides, load_config, to_toml

    data = effective(load_config(args.config))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    header = (
        f"The effective configuration of {args.config}: the file, KEEPER_ environment\n"
        "overrides (marked) and defaults. Secrets are masked: this text loads as a\n"
        "configuration, but its URLs must be filled in again to be used."
    )
    print(to_toml(data, overridden=env_overrides(), header=header), end="")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Index a range of finalized blocks into the database, with a progress line."""
    import anyio

    from keeper.config import load_config
    from keeper.ingest.backfill import BackfillResult, ProgressLine, run_backfill

    config = load_config(args.config)
    deployment = config.deployment()
    if sys.stderr.isatty() and args.log_level == "info":
        # On a terminal the progress line stands for the indexer's own progress log lines.
        _configure_logging("warning")
    progress = ProgressLine.on(sys.stderr, interval=config.ingest.progress_interval)

    async def run() -> BackfillResult:
        return await run_backfill(
            config, deployment, start=args.from_block, end=args.to_block, progress=progress
        )

    try:
        result = anyio.run(run)
    finally:
        progress.close()
    if result.checked is not None:
        first, last = result.checked
        if result.differences:
            print(f"blocks {first}..{last}: the database differs from the chain's logs")
            for table, (mine, theirs) in sorted(result.differences.items()):
                print(f"  {table}: {mine} events in the database, {theirs} on the chain")
            raise KeeperError(
                f"the index of blocks {first}..{last} does not match the chain; nothing was "
                "written",
                help="`keeper verify` compares the projections with the contracts; an index "
                "that differs from the chain is rebuilt by indexing into an empty database",
            )
        print(
            f"blocks {first}..{last} were indexed already: {result.checked_events:,} events "
            "re-read from the node, the same number of each kind as in the database"
        )
    if result.written is not None:
        first, last = result.written
        rate = (last - first + 1) / result.seconds if result.seconds > 0 else 0.0
        print(
            f"indexed blocks {first}..{last}: {result.events:,} events in "
            f"{result.seconds:.1f} s ({rate:,.0f} blocks/s); the index ends at block {last} "
            f"(finalized: {result.finalized})"
        )
    elif result.checked is None:
        print(
            f"nothing to do: the index ends at block {result.indexed_before}, the finalized "
            f"block is {result.finalized}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare the index with the contracts at the indexed block; exit 1 on any difference."""
    import json

    import anyio

    from keeper.config import load_config
    from keeper.ops.verify import Report

    config = load_config(args.config)
    deployment = config.deployment()

    async def run() -> Report:
        from keeper import db
        from keeper.chain import preflight
        from keeper.ops.verify import verify

        client = config.chain.client()
        try:
            await preflight.check_chain(config, deployment, client)
            conn = await db.connect(config.database.url.get_secret_value())
            try:
                return await verify(conn, client, deployment, block=args.block)
            finally:
                await conn.close()
        finally:
            await client.close()

    report = anyio.run(run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    for difference in report.differences:
        print(difference.text())
    outcome = (
        "the database matches the contracts"
        if report.ok
        else f"{len(report.differences)} difference{'s' if len(report.differences) > 1 else ''}"
    )
    print(
        f"chain {report.chain_id} at block {report.block} ({report.block_hash}): "
        f"{report.streams:,} streams, {report.escrows:,} escrows, {report.accounts:,} accounts "
        f"and the contract parameters compared: {outcome}"
    )
    return 0 if report.ok else 1


def _database_url(args: argparse.Namespace) -> str:
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


# --------------------------------------------------------------------------- the parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks; show the options' defaults where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The `keeper` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keeper",
        formatter_class=_Formatter,
        description=(
            "Keeps on-chain payment streams, escrows and usage billing settled.\n\n"
            "Commands:\n"
            "  run           the daemon: index the chain and keep the contracts settled\n"
            "  migrate       apply the database migrations\n"
            "  status        one screen: blocks, lag, pending work, signers, reorgs, errors\n"
            "  check-config  check a configuration: file, deployment, keys, database, chain\n"
            "  config        `config show`: the effective configuration, secrets masked\n"
            "  plan          dry run: what the next planning pass would send, and why\n"
            "  backfill      index a range of finalized blocks (progress bar), then exit\n"
            "  verify        compare the index with the contracts (eth_call at one block)\n"
            "  usage         usage rows: `usage import FILE` queues a file of them\n"
            "  deploy        deploy the contracts to a chain and write a deployment file\n"
            "  devchain      run a local anvil chain with the contracts deployed\n"
            "  demo          local chain + database + example workload, to try things out\n\n"
            "A command that takes --config reads one TOML file (see\n"
            "config/keeper.example.toml); any field can be overridden from the environment as\n"
            "KEEPER_<SECTION>__<FIELD>, e.g. KEEPER_INGEST__POLL_INTERVAL=2.\n"
            "Exit status: 0 success, 1 error (a one-paragraph message on stderr), 2 usage\n"
            "error.\n\n"
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
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    run = sub.add_parser(
        "run",
        formatter_class=_Formatter,
        help="run the daemon",
        description=(
            "Run the keeper daemon with the given configuration: apply migrations, then follow\n"
            "the chain's logs into the database (backfill from the deployment block, then the\n"
            "head, handling reorgs) until SIGTERM or SIGINT (exit 0). Exit 3: the chain\n"
            "reorganised below the finalized block; 1: configuration or start-up error."
        ),
    )
    run.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the keeper's TOML configuration"
    )
    run.set_defaults(handler=cmd_run)

    plan = sub.add_parser(
        "plan",
        formatter_class=_Formatter,
        help="dry run: the batches the next planning pass would send",
        description=(
            "Read the indexed state and print the batches the next planning pass would send:\n"
            "each item with the reason it is due (depleting, min_amount, max_interval,\n"
            "expired) and the gas eth_estimateGas gives for each batch. Nothing is planned,\n"
            "signed or sent, and the database is left as it was."
        ),
    )
    plan.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the keeper's TOML configuration"
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object instead")
    plan.set_defaults(handler=cmd_plan)

    deploy = sub.add_parser(
        "deploy",
        formatter_class=_Formatter,
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
        "--rpc-url", type=_rpc_url, required=True, metavar="URL", help="JSON-RPC endpoint"
    )
    source = deploy.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="file holding the deployer's private key as hex (0x optional)",
    )
    source.add_argument(
        "--key-env",
        metavar="VAR",
        help="name of the environment variable holding the private key as hex",
    )
    source.add_argument(
        "--keystore",
        type=Path,
        metavar="FILE",
        help="encrypted keystore JSON file (V3, as geth or cast write); needs --password-file",
    )
    deploy.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file holding the keystore's password"
    )
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

    devchain = sub.add_parser(
        "devchain",
        formatter_class=_Formatter,
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

    migrate = sub.add_parser(
        "migrate",
        formatter_class=_Formatter,
        help="apply the database migrations",
        description=(
            "Apply the migrations this keeper ships that the database lacks, each in its own\n"
            "transaction, and print their names. Safe to run while other keepers start: a\n"
            "lock serialises concurrent runs. The database is the one of --config FILE\n"
            "(database.url, or KEEPER_DATABASE__URL), else --database-url, else\n"
            f"${DATABASE_URL_ENV}."
        ),
    )
    target = migrate.add_mutually_exclusive_group()
    target.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the keeper's TOML configuration: migrate the database of its database.url",
    )
    target.add_argument(
        "--database-url",
        type=_database_url_option,
        metavar="DSN",
        help="PostgreSQL URL (postgresql://user:password@host:port/db); "
        f"default: ${DATABASE_URL_ENV}",
    )
    migrate.set_defaults(handler=cmd_migrate)

    demo = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
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
        type=_database_url_option,
        metavar="DSN",
        help="use this PostgreSQL instead of the embedded one (it is migrated, not emptied)",
    )
    demo.add_argument(
        "--rpc-url",
        type=_rpc_url,
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

    _usage_parser(sub)
    _operator_parsers(sub)
    return parser


def _block(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a block number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the keeper's TOML configuration (KEEPER_<SECTION>__<FIELD> variables override it)",
    )


def _operator_parsers(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        formatter_class=_Formatter,
        help="one screen: blocks, lag, pending work, signers, last reorg, last error",
        description=(
            "Print one chain's state on one screen, from the database alone: the leader,\n"
            "the chain's head, indexed and finalized blocks and the lag (as the indexer last\n"
            "saw them), pending work per kind (streams due, escrows refundable, usage rows,\n"
            "intents on their way), each signer's balance, next nonce and work in flight,\n"
            "the last 24 hours' settlements, usage reports and refunds, the last reorg and\n"
            "the last error. It only reads, in one read-only snapshot of the operator views,\n"
            "so it is safe while `keeper run` runs, and works as the read-only role\n"
            "keeper_reader. The database is the one of --config FILE, else --database-url,\n"
            f"else ${DATABASE_URL_ENV}."
        ),
    )
    target = status.add_mutually_exclusive_group()
    target.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the keeper's TOML configuration: its database, and its chain (chain.chain_id, "
        "else the deployment file's) unless --chain-id is given",
    )
    target.add_argument(
        "--database-url",
        type=_database_url_option,
        metavar="DSN",
        help="PostgreSQL URL (postgresql://user:password@host:port/db); "
        f"default: ${DATABASE_URL_ENV}",
    )
    status.add_argument(
        "--chain-id",
        type=_chain_id,
        metavar="N",
        help="the chain to show; default: the configuration's, else the database's only "
        "indexed chain (an error when it holds several)",
    )
    status.add_argument(
        "--json", action="store_true", help="print the status as one JSON object instead"
    )
    status.set_defaults(handler=cmd_status)

    check = sub.add_parser(
        "check-config",
        formatter_class=_Formatter,
        help="check a configuration: file, deployment, keys, database and chain",
        description=(
            "Check the configuration FILE the way `keeper run` would use it, and print one\n"
            "line per check: `ok` and what was found (stdout), or `FAIL` and the problem\n"
            "(stderr), each problem naming the field's path, the value found (never a\n"
            "secret) and what is expected. The checks, in order:\n"
            "  configuration  the file parses and every field is valid (environment\n"
            "                 overrides applied; unknown keys refused)\n"
            "  deployment     chain.deployment_file is readable, well-formed, its addresses\n"
            "                 valid (EIP-55 checksums), and for chain.chain_id if that is set\n"
            "  signers        every [[signers]] key loads (keystore + password file, or a\n"
            "                 systemd credential), each a distinct account\n"
            "  database       database.url is reachable; how many migrations are pending\n"
            "  chain          the RPC serves the deployment's chain, and the token,\n"
            "                 StreamManager and EscrowVault have code at the file's addresses\n"
            "It goes on after a failed check where the next one does not depend on it, so\n"
            "every problem shows at once. Nothing is written anywhere. Exit status 0 when all\n"
            "checks pass, 1 otherwise."
        ),
    )
    _config_option(check)
    check.set_defaults(handler=cmd_check_config)

    config = sub.add_parser(
        "config",
        formatter_class=_Formatter,
        help="the effective configuration: `config show`",
        description=(
            "The keeper's configuration.\n\n"
            "Subcommands:\n"
            "  show  print the effective configuration, secrets masked\n\n"
            "Run `keeper config <subcommand> --help` for its options."
        ),
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="<subcommand>", required=True)
    show = config_sub.add_parser(
        "show",
        formatter_class=_Formatter,
        help="print the effective configuration, secrets masked",
        description=(
            "Print the configuration `keeper run --config FILE` would use: the file's values,\n"
            "KEEPER_ environment overrides (each marked with its variable) and the defaults\n"
            "of every field left out, as TOML (or JSON with --json). Relative paths are shown\n"
            "resolved. Secrets are masked: RPC URLs show only scheme://host:port, the\n"
            "database URL its user, host and database name, each followed by `(masked)`.\n"
            "The output loads again as a configuration, with the URLs to be filled in.\n"
            "The deployment file and the keys are not read (see `keeper check-config`)."
        ),
    )
    _config_option(show)
    show.add_argument("--json", action="store_true", help="print one JSON object instead")
    show.set_defaults(handler=cmd_config_show)

    backfill = sub.add_parser(
        "backfill",
        formatter_class=_Formatter,
        help="index a range of finalized blocks (with a progress bar), then exit",
        description=(
            "Index the contracts' events of blocks --from..--to into the database, with the\n"
            "daemon's own backfill (adaptive eth_getLogs ranges, COPY, one transaction per\n"
            "range together with the cursor: an interrupted backfill resumes where it\n"
            "stopped), then exit. The database must be migrated (`keeper migrate`).\n\n"
            "The index stays contiguous and final:\n"
            "  --from  defaults to the block after the indexed one (the deployment block on\n"
            "          an empty database). A higher --from is refused: it would leave a gap.\n"
            "          A lower one re-reads blocks already indexed, from --from up to the\n"
            "          indexed block, and compares the number of events of each kind with\n"
            "          the database, writing nothing for them; on a difference it stops\n"
            "          before writing anything and exits 1.\n"
            "  --to    defaults to the node's finalized block and may not exceed it: blocks\n"
            "          above it may still be reorganised and are indexed by `keeper run`,\n"
            "          which checks their parent hashes. Reaching the finalized block marks\n"
            "          the backfill done (the planners of `keeper run` wait for that).\n"
            "Before writing, the chain is checked as `keeper check-config` does, and the\n"
            "indexed block must still be on the node's chain (else `keeper run` must roll\n"
            "the index back first).\n\n"
            "Safe while `keeper run` runs on the same chain and database: every write claims\n"
            "the cursor, and if the daemon moved it meanwhile, this command stops with an\n"
            "error and nothing of its current range is written (the daemon indexes on).\n\n"
            "Progress goes to stderr: on a terminal one line rewritten in place (blocks\n"
            "done/total, percent, blocks/s, events, ETA; the indexer's info log lines are\n"
            "then hidden, see --log-level), otherwise a plain line every\n"
            "ingest.progress_interval seconds. A summary goes to stdout.\n"
            "Exit status 0 when done (or nothing to do), 1 on an error or a difference."
        ),
    )
    _config_option(backfill)
    backfill.add_argument(
        "--from",
        dest="from_block",
        type=_block,
        metavar="N",
        help="first block; default: the block after the indexed one (see above)",
    )
    backfill.add_argument(
        "--to",
        dest="to_block",
        type=_block,
        metavar="M",
        help="last block, at most the finalized one; default: the finalized block",
    )
    backfill.set_defaults(handler=cmd_backfill)

    verify = sub.add_parser(
        "verify",
        formatter_class=_Formatter,
        help="compare the index with the contracts by eth_call at one block",
        description=(
            "Re-read the contracts' state with eth_call at the indexed block and compare it\n"
            "with the database's projections of that block: every stream (payer, payee,\n"
            "balance, rate, settled_at, usage sequence, price, status), every escrow (payer,\n"
            "payee, amount, expiry, status), what each account can claim from StreamManager\n"
            "(credited) and holds in EscrowVault (available, locked), and the fee, fee\n"
            "recipient and pause flags. Accounts are those the index or the streams and\n"
            "escrows name. The projections are read in one snapshot with the cursor and the\n"
            "calls are pinned to the block's hash (EIP-1898), in JSON-RPC batches, so this\n"
            "is safe and consistent while `keeper run` indexes. The node must still have\n"
            "the state of that block (a pruned node keeps the recent ones only).\n\n"
            "Each difference is printed as `<kind> <id> <field>: database <value>, chain\n"
            "<value>`, then a summary. Exit status 0 when the database matches the\n"
            "contracts, 1 when anything differs (or on an error), 2 on a usage error."
        ),
    )
    _config_option(verify)
    verify.add_argument(
        "--block",
        type=_block,
        metavar="N",
        help="the block to verify at; must be the indexed block, the only one whose state "
        "the database holds (default: the indexed block)",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the report as one JSON object instead"
    )
    verify.set_defaults(handler=cmd_verify)


def _usage_parser(sub: Any) -> None:
    usage = sub.add_parser(
        "usage",
        formatter_class=_Formatter,
        help="usage rows: import a file of them for the keeper to validate",
        description=(
            "Usage rows for the usage oracle.\n\n"
            "Subcommands:\n"
            "  import FILE  queue the rows of a CSV or JSON-lines file for validation\n\n"
            "Run `keeper usage <subcommand> --help` for its options."
        ),
    )
    usage_sub = usage.add_subparsers(dest="usage_command", metavar="<subcommand>", required=True)
    imp = usage_sub.add_parser(
        "import",
        formatter_class=_Formatter,
        help="queue the rows of a CSV or JSON-lines file for validation",
        description=(
            "Queue the usage rows of FILE in the usage_inbox table, where the keeper validates\n"
            "them on its next planning pass. Each value is stored as the text it has in the\n"
            "file: nothing is parsed, rounded or corrected here, and a row the keeper refuses\n"
            "stays visible in keeper.usage_rejected with a reason code and a detail.\n\n"
            "Formats (from FILE's extension, or --format):\n"
            "  csv    (.csv) a header row naming the columns stream_id, units, producer_key\n"
            "         and optionally endpoint (the name the payee published), label,\n"
            "         observed_at, chain_id, in any order; then one row\n"
            "         per line (a quoted field may not hold a line break). An empty field is\n"
            "         stored as NULL. Any other column, and a file without a header row (an\n"
            "         empty one too), is refused before anything is written.\n"
            "  jsonl  (.jsonl, .ndjson) one JSON object per line with those keys. Numbers\n"
            "         keep the text they were written with (1e3 stays 1e3), null and a\n"
            "         missing key are NULL, true/false are stored as text. A key that is\n"
            "         not one of those stops the import.\n"
            "FILE may be - for standard input (then give --format). The file must be UTF-8\n"
            "(a BOM is ignored). Each row's source is <name>:<line number>, e.g. usage.csv:17.\n\n"
            "A line that cannot be read at all (not valid JSON, not an object, the wrong\n"
            "number of CSV fields, not UTF-8, a NUL character) is not dropped: it is stored\n"
            "as a row rejected with reason malformed_line, the problem and the start of the\n"
            "line in its detail. Blank lines are skipped. chain_id is a bigint column: a\n"
            "chain_id that is not a whole number (ASCII digits, an optional sign, only\n"
            "spaces around them; the grammar of stream_id and units too) or is outside\n"
            "bigint's range stops the import; a blank one takes --chain-id.\n\n"
            "The rows are copied 10,000 at a time, all in ONE transaction: if anything fails\n"
            "part-way (a bad chain_id, a row the database refuses, a lost connection,\n"
            "Ctrl-C), nothing at all is imported, and the file can be imported again as a\n"
            "whole. Importing a file twice queues its rows twice; an accepted report's\n"
            "producer_key is unique per chain, so the same usage is never charged twice.\n\n"
            "On a terminal, a progress line on stderr shows rows read and rows per second.\n"
            "At the end, a summary on stdout: rows read, rows queued for validation,\n"
            "malformed lines kept as rejected, blank lines skipped, seconds taken.\n"
            "Exit status 0 when the file was imported (malformed lines included), 1 when\n"
            "nothing was."
        ),
    )
    imp.add_argument(
        "file",
        metavar="FILE",
        help="the usage file (.csv, .jsonl or .ndjson); - reads standard input",
    )
    imp.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        help="the file's format; default: from FILE's extension (needed for -)",
    )
    imp.add_argument(
        "--chain-id",
        type=_chain_id,
        metavar="N",
        help="chain id stored for rows that carry none; default: NULL, which means the chain "
        "of the keeper that validates the row (give it when several chains share a database)",
    )
    imp.add_argument(
        "--source",
        metavar="NAME",
        help="name stored in each row's source, before :<line number>; default: FILE as "
        "given (stdin for -)",
    )
    imp.add_argument(
        "--database-url",
        type=_database_url_option,
        metavar="DSN",
        help="PostgreSQL URL (postgresql://user:password@host:port/db); "
        f"default: ${DATABASE_URL_ENV}",
    )
    imp.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object instead"
    )
    imp.set_defaults(handler=cmd_usage_import)


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


def _configure_logging(level: str) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `keeper` command line; return the exit status.

    Whatever the command prints, and the traceback of a crash, goes through
    `keeper.secrets.scrub`: no secret of the configuration reaches the terminal or the log.
    """
    secrets.install_hooks()
    with secrets.scrubbed_output():
        parser = build_parser()
        args = parser.parse_args(argv)
        _configure_logging(args.log_level)
        handler: Handler = args.handler
        try:
            return handler(args)
        except KeeperError as exc:
            print(f"keeper {args.command}: error: {secrets.scrub(str(exc))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
