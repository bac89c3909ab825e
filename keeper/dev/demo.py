"""`keeper demo`: a local chain and database with a small workload to look at.

Starts anvil (see `keeper.dev.devchain`) and, unless a database URL is given, an embedded
PostgreSQL (pgserver) under the data directory (`keeper.dev.demo_postgres`); migrates the
database, deploys the contracts, records the deployment in `chains`/`deployments`, then has
anvil's dev accounts publish a price list of endpoints, open streams on it and with their own
usage prices, create escrows, report usage per endpoint through the oracle and settle a batch
(`keeper.dev.demo_workload`). It prints what it did and how to connect
(`keeper.dev.demo_report`), then runs the keeper daemon on all of it with a workload that keeps
coming (`keeper.dev.demo_run`), printing a line of what the keeper did every few seconds, until
SIGINT/SIGTERM (or `--duration`); `--no-wait` stops after the set-up instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio

from keeper.dev.anvil import Anvil
from keeper.dev.demo_chain import DemoChain
from keeper.dev.demo_keeper import DEFAULT_HEALTH_PORT, KeeperFiles, health_port, prepare_keeper
from keeper.dev.demo_live import LiveStream
from keeper.dev.demo_postgres import (
    EmbeddedPostgres,
    prepare_database,
    psql_command,
    start_embedded_postgres,
)
from keeper.dev.demo_report import connect_text, format_units, keeper_text, workload_text
from keeper.dev.demo_run import LiveDemo, supervise
from keeper.dev.demo_workload import LIST_PAYEE, PAYEES, PAYERS, Workload, create_workload
from keeper.dev.devchain import (
    DEFAULT_BLOCK_TIME,
    DEFAULT_PORT,
    StopRequested,
    connection_text,
    deploy_dev,
    hold_stop_signals,
    set_interval_mining,
    start_dev_anvil,
    stop_on_signals,
)

DEFAULT_DATA_DIR = Path(".keeper/demo")
CHAIN_NAME = "anvil-demo"


@dataclass
class DemoOptions:
    """What `keeper demo` was asked to do."""

    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    block_time: float = DEFAULT_BLOCK_TIME
    database_url: str | None = None
    rpc_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    wait: bool = True
    health_port: int = DEFAULT_HEALTH_PORT  # taken: any free port; 0: any free port
    duration: float | None = None  # stop after this many seconds of running, as on Ctrl-C


def run_demo(options: DemoOptions, stdout: TextIO | None = None) -> int:
    """`keeper demo`: set everything up, print it, then run the keeper on it until
    SIGINT/SIGTERM or `duration` (or stop at once: `wait=False`).

    Returns the exit status: 0 when done (`wait=False`) or stopped by a signal or the duration;
    1 when the keeper daemon (or anvil) died while the demo ran.
    """
    out = stdout or sys.stdout

    def say(*parts: str) -> None:
        print(*parts, file=out, flush=True)

    data_dir = options.data_dir.resolve()
    deployment_file = data_dir / "deployment.json"
    status = 0
    with stop_on_signals():
        node: Anvil | None = None
        pg: EmbeddedPostgres | None = None
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            deployment_file.unlink(missing_ok=True)
            if options.database_url:
                dsn = options.database_url
            else:
                say(f"starting the embedded PostgreSQL in {data_dir / 'pgdata'}")
                pg = start_embedded_postgres(data_dir)
                dsn = pg.dsn
            if options.rpc_url:
                rpc_url = options.rpc_url
            else:
                node = start_dev_anvil(
                    host=options.host, port=options.port, log_path=data_dir / "anvil.log"
                )
                rpc_url = node.url
            say(f"chain: {rpc_url}; deploying the contracts")
            deployment = deploy_dev(rpc_url)
            deployment.write(deployment_file)
            applied = anyio.run(prepare_database, dsn, deployment, CHAIN_NAME)
            say(f"database migrated ({', '.join(applied) or 'already up to date'})")
            say("deployment recorded in the chains and deployments tables")
            work = create_workload(rpc_url, deployment)
            files: KeeperFiles | None = None
            if options.wait:
                port = health_port("127.0.0.1", options.health_port)
                files = prepare_keeper(
                    data_dir, rpc_url=rpc_url, dsn=dsn, chain_name=CHAIN_NAME, port=port
                )
                DemoChain.connect(rpc_url, deployment).grant_oracle_role(
                    [a for _, a in files.signers]
                )
            if node is not None and options.wait:
                set_interval_mining(rpc_url, options.block_time)
            say()
            say(connection_text(rpc_url, deployment, deployment_file))
            say()
            say(workload_text(work, deployment))
            say()
            say(connect_text(dsn, pg, data_dir))
            if files is not None:
                say()
                say(keeper_text(files, psql_command(dsn, pg)))
                say("\nPress Ctrl-C to stop the keeper, the workload, anvil and the database.\n")
                status = supervise(
                    LiveDemo(
                        files=files,
                        rpc_url=rpc_url,
                        dsn=dsn,
                        deployment=deployment,
                        node=node,
                        streams=_billable_streams(work),
                        amount=lambda v: (
                            f"{format_units(v, work.decimals, min_decimals=2)} {work.symbol}"
                        ),
                        say=say,
                        payers=PAYERS,
                        payees=PAYEES,
                        price_lists={LIST_PAYEE: tuple(work.endpoints)},
                        duration=options.duration,
                    )
                )
        except StopRequested:
            say("stopping the demo")
        finally:
            hold_stop_signals()
            if node is not None:
                node.stop()
                if options.wait:
                    say("anvil stopped")
            if pg is not None:
                pg.stop()
                if options.wait:
                    say("the embedded PostgreSQL stopped")
    return status


def _billable_streams(work: Workload) -> list[LiveStream]:
    """The set-up's streams that the live workload reports usage for."""
    return [
        LiveStream(s.id, s.plan.usage_price, tuple(work.endpoints) if s.plan.price_list else ())
        for s in work.streams
        if s.plan.usage_price or s.plan.price_list
    ]
