"""No secret of the configuration is ever printed, whatever goes wrong.

Every secret field holds a canary: the database password, the RPC and websocket URLs' user,
password, path and query, a keystore's password file, and a hex key given as a systemd
credential. Each scenario below breaks one thing (or nothing), runs every command it concerns
as the installed console script with debug logging, and collects all they print (stdout,
stderr, and the health port's /healthz, /readyz, /status and /metrics while `keeper run`
serves them). No canary may appear in any of it.

The scenarios are the ways secrets used to print: a database URL without its scheme, a
password with an unescaped '/', '#' and '?', an RPC URL with a port out of range, a provider
whose error messages repeat the request path and query, a key=value DSN whose quoted password
holds a space, and a crash (a malformed RPC answer the keeper does not expect, quoting the
API key in its traceback); and a working keeper on a real chain (anvil behind a proxy that
takes any path) with a real PostgreSQL role whose password is the canary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from eth_account import Account

from keeper import db as keeper_db
from keeper.chain.deployment import Deployment
from keeper.dev.anvil import Anvil, dev_key, free_port
from keeper.ops.deploy import deploy_all
from tests.support.daemon import KEEPER
from tests.support.rpc_proxy import RpcProxy

DB_PASSWORD = "CnryDbPass71"
RPC_USER, RPC_PASSWORD = "CnryRpcUser72", "CnryRpcPass73"
RPC_PATH, RPC_QUERY = "CnryRpcPath74", "CnryRpcQuery75"
WS_USER, WS_PASSWORD = "CnryWsUser76", "CnryWsPass77"
WS_PATH, WS_QUERY = "CnryWsPath78", "CnryWsQuery79"
KEYSTORE_PASSWORD = "CnryKeystorePw80"
CANARIES = (
    DB_PASSWORD,
    RPC_USER,
    RPC_PASSWORD,
    RPC_PATH,
    RPC_QUERY,
    WS_USER,
    WS_PASSWORD,
    WS_PATH,
    WS_QUERY,
    KEYSTORE_PASSWORD,
)
ROLE = f"keeper_canary_{os.getpid()}"
RUN_DEADLINE = 45.0  # seconds a `keeper run` may take before it is stopped


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Deployment:
    """The contracts on the session's anvil node."""
    return deploy_all(anvil.url, dev_key(0).reveal_hex())


async def _admin(url: str, *statements: str) -> None:
    conn = await keeper_db.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def canary_role(database_server_url: str) -> Iterator[str]:
    """A login role whose password is the database canary (the test server may trust local
    connections whatever the password: that only spares a wrong one, and this one is right)."""
    # Identifiers and the password are this file's constants; nothing comes from input.
    create = f"CREATE ROLE {ROLE} LOGIN PASSWORD '{DB_PASSWORD}'"
    anyio.run(_admin, database_server_url, f"DROP ROLE IF EXISTS {ROLE}", create)
    try:
        yield ROLE
    finally:
        anyio.run(_admin, database_server_url, f"DROP ROLE IF EXISTS {ROLE}")


async def _grant(url: str, role: str) -> None:
    conn = await keeper_db.connect(url)
    try:
        schemas = await conn.fetch(
            "SELECT quote_ident(nspname) AS name FROM pg_namespace "
            "WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'"
        )
        for row in schemas:
            name = row["name"]  # quoted by the server
            for statement in (
                f"GRANT ALL ON SCHEMA {name} TO {role}",
                f"GRANT ALL ON ALL TABLES IN SCHEMA {name} TO {role}",
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {name} TO {role}",
                f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {name} TO {role}",
            ):
                await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def role_database_url(database_url: str, canary_role: str) -> str:
    """A fresh migrated database, reached as the canary role with its password."""
    anyio.run(_grant, database_url, canary_role)
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{canary_role}:{DB_PASSWORD}@{host}"))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a keeper that exits mid-request leaves a broken pipe: expected here


class RpcStub:
    """A JSON-RPC endpoint on 127.0.0.1 that misbehaves on purpose.

    "error": every call is answered with an error whose message repeats the request path and
    query, as some providers do, after `delay` seconds (so a `keeper run` serves its health
    port for a moment before it gives up). "crash": eth_chainId and eth_getBlockByNumber answer
    numbers that are not hex but the API key, which the keeper's int() refuses, quoting it.
    """

    def __init__(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls = body if isinstance(body, list) else [body]
                time.sleep(stub.delay)
                replies = [stub.answer(call, self.path) for call in calls]
                data = json.dumps(replies if isinstance(body, list) else replies[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, call: dict[str, Any], path: str) -> dict[str, Any]:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call.get("id")}
        method = call.get("method")
        if self.mode == "crash" and method == "eth_chainId":
            reply["result"] = f"0x{RPC_QUERY}"
        elif self.mode == "crash" and method == "eth_getBlockByNumber":
            reply["result"] = {
                "number": f"0x{RPC_PATH}",
                "hash": "0x" + "11" * 32,
                "parentHash": "0x" + "22" * 32,
                "timestamp": "0x1",
            }
        else:
            reply["error"] = {"code": -32600, "message": f"bad request to {path}"}
        return reply

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- scenarios


def rpc_url(port: int) -> str:
    return f"http://{RPC_USER}:{RPC_PASSWORD}@127.0.0.1:{port}/v3/{RPC_PATH}?apikey={RPC_QUERY}"


def ws_url(port: int) -> str:
    return f"ws://{WS_USER}:{WS_PASSWORD}@127.0.0.1:{port}/ws/{WS_PATH}?key={WS_QUERY}"


def unreachable_database() -> str:
    return f"postgresql://{ROLE}:{DB_PASSWORD}@127.0.0.1:{free_port()}/keeper"


@dataclass
class Scenario:
    """One configuration and the commands to run on it."""

    rpc_url: str | list[str]  # a list: several providers (`rpc_urls`)
    database_url: str
    commands: list[str]
    run_until: Callable[[dict[str, str]], bool] | None = None  # stop `run` once true
    expect: dict[str, str] = field(default_factory=dict)  # command -> text it must print


CONFIG_COMMANDS = ["check-config", "config show", "status", "migrate", "usage import", "run"]
# The commands that read the chain too (a provider's answers reach their output).
CHAIN_COMMANDS = ["plan", "backfill", "verify"]


@dataclass
class Outputs:
    """Everything the commands of a scenario printed, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, where: str, text: str) -> None:
        with self.lock:
            self.texts[where] = self.texts.get(where, "") + text

    def leaks(self, secrets: list[str]) -> list[str]:
        found = []
        for where, text in self.texts.items():
            for line in text.splitlines():
                hits = [s for s in secrets if s.lower() in line.lower()]
                if hits:
                    found.append(f"{where}: {hits} in {line[:400]!r}")
        return found


class Setup:
    """The files of a configuration with a canary in every secret field."""

    def __init__(self, root: Path, deployment: Deployment, anvil: Anvil) -> None:
        self.root = root
        self.anvil = anvil
        self.health_port = free_port()
        deployment.write(root / "deployment.json")
        keystore_key, credential_key = Account.create(), Account.create()
        keystore = Account.encrypt(keystore_key.key, KEYSTORE_PASSWORD, kdf="pbkdf2", iterations=1)
        (root / "signer.json").write_text(json.dumps(keystore))
        (root / "signer.password").write_text(KEYSTORE_PASSWORD + "\n")
        self.credentials = root / "credentials"
        self.credentials.mkdir()
        (self.credentials / "lane").write_text(credential_key.key.hex() + "\n")
        # The private keys, whole and by halves (a key cut in a message is still a leak).
        keys = [k.key.hex().removeprefix("0x") for k in (keystore_key, credential_key)]
        self.secret_keys = [piece for k in keys for piece in (k, k[:32], k[32:])]
        (root / "usage.csv").write_text("stream_id,units,producer_key\n1,100,req-1\n")

    def write(self, scenario: Scenario) -> Path:
        text = f"""
[chain]
{"rpc_urls" if isinstance(scenario.rpc_url, list) else "rpc_url"} = {json.dumps(scenario.rpc_url)}
ws_url = {json.dumps(ws_url(self.anvil.port))}
deployment_file = "deployment.json"
rpc_timeout = 3.0
rpc_attempts = 1

[database]
url = {json.dumps(scenario.database_url)}
pool_max = 4

[ingest]
poll_interval = 0.2

[plan]
# The fresh signers hold no ORACLE_ROLE: usage billing off on purpose, so check-config passes.
usage = false

[health]
port = {self.health_port}

[log]
level = "debug"
format = "json"

[[signers]]
keystore = "signer.json"
password_file = "signer.password"

[[signers]]
credential = "lane"
"""
        path = self.root / "keeper.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KEEPER_HEALTH__PORT": str(self.health_port),  # the test session sets it to 0
            "CREDENTIALS_DIRECTORY": str(self.credentials),
            "PYTHONUNBUFFERED": "1",
        }


def command_line(command: str, config: Path, scenario: Scenario, root: Path) -> list[str]:
    base = [*KEEPER, "--log-level", "debug"]
    if command == "usage import":
        return [*base, "usage", "import", str(root / "usage.csv"), "--database-url",
                scenario.database_url]  # fmt: skip
    return [*base, *command.split(), "--config", str(config)]


def run_command(command: str, setup: Setup, config: Path, scenario: Scenario, out: Outputs) -> None:
    result = subprocess.run(
        command_line(command, config, scenario, setup.root),
        capture_output=True,
        text=True,
        env=setup.env(),
        timeout=120,
        check=False,
    )
    out.add(f"{command} (stdout)", result.stdout)
    out.add(f"{command} (stderr)", result.stderr + f"\n[exit status {result.returncode}]\n")


def fetch(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as exc:  # 503: still an answer to check
        return str(exc.read().decode())
    except OSError:
        return None


def run_daemon(setup: Setup, config: Path, scenario: Scenario, out: Outputs) -> None:
    """`keeper run` until it exits, `scenario.run_until` holds, or the deadline; its health
    port polled meanwhile; then SIGTERM."""
    stdout, stderr = setup.root / "run.stdout", setup.root / "run.stderr"
    with stdout.open("wb") as o, stderr.open("wb") as e:
        proc = subprocess.Popen(
            command_line("run", config, scenario, setup.root), stdout=o, stderr=e, env=setup.env()
        )
    served: dict[str, str] = {}
    deadline = time.monotonic() + RUN_DEADLINE
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            # /readyz last: its RPC probe may wait on a slow stub while the daemon exits.
            for path in ("/status", "/metrics", "/healthz", "/readyz"):
                body = fetch(setup.health_port, path)
                if body is not None:
                    served[path] = body
                    out.add(f"run health {path}", body)
            logs = stdout.read_text(errors="replace") + stderr.read_text(errors="replace")
            if scenario.run_until is not None and scenario.run_until({**served, "log": logs}):
                break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.add("run (stdout)", stdout.read_text(errors="replace"))
    out.add("run (stderr)", stderr.read_text(errors="replace") + f"\n[exit {proc.returncode}]\n")


def check(setup: Setup, scenario: Scenario) -> Outputs:
    config = setup.write(scenario)
    out = Outputs()

    def one(command: str) -> None:
        if command == "run":
            run_daemon(setup, config, scenario, out)
        else:
            run_command(command, setup, config, scenario, out)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, scenario.commands))
    secrets = [*CANARIES, *setup.secret_keys]
    leaks = out.leaks(secrets)
    assert not leaks, "secrets printed:\n" + "\n".join(leaks)
    for command, expected in scenario.expect.items():
        printed = "".join(t for w, t in out.texts.items() if w.startswith(command))
        everything = "\n".join(f"--- {w}\n{t[-1500:]}" for w, t in out.texts.items())
        assert expected in printed, f"{command}: {expected!r} not printed; all:\n{everything}"
    return out


@pytest.fixture
def setup(tmp_path: Path, deployed: Deployment, anvil: Anvil) -> Setup:
    return Setup(tmp_path, deployed, anvil)


def test_a_database_url_without_its_scheme(setup: Setup) -> None:
    database = f"{ROLE}:{DB_PASSWORD}@127.0.0.1:{free_port()}/keeper"
    scenario = Scenario(
        rpc_url(setup.anvil.port),
        database,
        CONFIG_COMMANDS,
        expect={"check-config": "database.url: it does not start with postgresql://"},
    )
    check(setup, scenario)


def test_a_password_with_unescaped_slash_hash_and_question_mark(setup: Setup) -> None:
    database = f"postgresql://{ROLE}:{DB_PASSWORD}/x#y?z@127.0.0.1:5432/keeper"
    scenario = Scenario(
        rpc_url(setup.anvil.port),
        database,
        [*CONFIG_COMMANDS, "config show --json"],
        expect={"run": "database.url: it has an '@' after the host", "usage import": "%2F"},
    )
    check(setup, scenario)


def test_a_key_value_dsn_with_a_quoted_password_holding_a_space(setup: Setup) -> None:
    database = f"host=127.0.0.1 port=5432 user={ROLE} password='a {DB_PASSWORD} b' dbname=k"
    scenario = Scenario(
        rpc_url(setup.anvil.port),
        database,
        CONFIG_COMMANDS,
        expect={"status": "key=value connection string is not supported"},
    )
    check(setup, scenario)


def test_an_rpc_url_with_a_port_out_of_range(setup: Setup) -> None:
    scenario = Scenario(
        rpc_url(99999),
        unreachable_database(),
        ["check-config", "config show", "run"],
        expect={"config show": "chain.rpc_url: its port is not a number from 1 to 65535"},
    )
    check(setup, scenario)


def test_a_provider_whose_errors_repeat_the_path_and_query(
    setup: Setup, role_database_url: str
) -> None:
    stub = RpcStub("error", delay=2.0)
    try:
        scenario = Scenario(
            rpc_url(stub.port),
            role_database_url,
            ["check-config", "run", *CHAIN_COMMANDS],
            # Stopped once /status has answered (a keeper that retries the error waits on).
            run_until=lambda served: "/status" in served,
            expect={
                "check-config": "bad request to ***",
                "run health /status": '"process"',
                # The chain commands ran into the provider's error, and printed it scrubbed.
                **dict.fromkeys(CHAIN_COMMANDS, "bad request to ***"),
            },
        )
        check(setup, scenario)
    finally:
        stub.close()


def test_a_crash_with_the_api_key_in_its_traceback(setup: Setup, role_database_url: str) -> None:
    stub = RpcStub("crash")
    try:
        scenario = Scenario(
            rpc_url(stub.port),
            role_database_url,
            ["check-config", "run", *CHAIN_COMMANDS],
            # Once the error is out (a keeper that would retry it rather than crash waits on).
            run_until=lambda served: "invalid literal" in served["log"],
            expect={
                "check-config (stderr)": "invalid literal for int() with base 16: '0x***'",
                "run": "invalid literal for int() with base 16: '0x***'",
            },
        )
        out = check(setup, scenario)
        assert "Traceback" in out.texts["check-config (stderr)"]
    finally:
        stub.close()


def test_a_working_keeper_prints_no_secret(
    setup: Setup, role_database_url: str, anvil: Anvil
) -> None:
    def leading(served: dict[str, str]) -> bool:
        # Leading, and a little longer: the websocket's first attempt, debug lines.
        return '"role": "leader"' in served.get("/status", "") and "ws_" in served["log"]

    with RpcProxy(anvil.url) as proxy:
        scenario = Scenario(
            rpc_url(proxy.port),
            role_database_url,
            [*CONFIG_COMMANDS, *CHAIN_COMMANDS, "config show --json", "status --json"],
            run_until=leading,
            expect={
                "check-config (stdout)": "all 6 checks passed",
                "run (stdout)": "keeper_started",
                "run health /metrics": "keeper_leader 1.0",
                "usage import (stdout)": "rows queued for validation        1",
                "config show (stdout)": "http://127.0.0.1:",
            },
        )
        check(setup, scenario)


def test_two_providers_one_failing_print_no_secret(
    setup: Setup, role_database_url: str, anvil: Anvil
) -> None:
    """Two providers with canaries in their URLs, the first answering every call with an error
    that repeats its path and query: the keeper runs on the other, and neither the provider
    lines (`/status`, `keeper status`), the per-provider metrics nor the errors show a secret."""
    stub = RpcStub("error")

    def leading(served: dict[str, str]) -> bool:
        return '"role": "leader"' in served.get("/status", "") and "rpc_provider" in served["log"]

    try:
        with RpcProxy(anvil.url) as proxy:
            scenario = Scenario(
                [rpc_url(stub.port), rpc_url(proxy.port)],
                role_database_url,
                ["check-config", "run", "status", "verify", "config show"],
                run_until=leading,
                expect={
                    "run (stdout)": "keeper_started",
                    "run health /status": '"providers"',
                    "run health /metrics": "keeper_rpc_provider_selected",
                    "status (stdout)": f"http://127.0.0.1:{stub.port}",
                    "check-config": "bad request to ***",
                    "config show (stdout)": f"http://127.0.0.1:{proxy.port} (masked)",
                },
            )
            check(setup, scenario)
    finally:
        stub.close()
