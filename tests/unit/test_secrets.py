"""Secrets never print: masking that cannot fail (keeper.urls), the registry and `scrub`
(keeper.secrets), and each place output goes through it (log renderer, CLI error paragraph,
tracebacks, the health port's bodies). The whole keeper, command by command, is held to it by
tests/acceptance/test_secret_canaries.py."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from keeper import cli, logs, secrets
from keeper.cli import config as config_command
from keeper.db import redact_dsn
from keeper.metrics import redact_url
from keeper.service.health import Response, encode_response, json_response
from keeper.urls import (
    RPC_SCHEMES,
    WS_SCHEMES,
    database_url_problem,
    split_url,
    url_problem,
)

CANARY = "Canary7Secret"


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    """Each test starts with no secret registered, and leaves none behind."""
    secrets.clear()
    yield
    secrets.clear()


# --------------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://rpc.example/v3/{CANARY}", "https://rpc.example"),
        (f"https://rpc.example:8545/?apikey={CANARY}", "https://rpc.example:8545"),
        (f"https://user:{CANARY}@rpc.example/x", "https://rpc.example"),
        # An out-of-range port: urlsplit's .port raised, and the traceback showed the URL.
        (f"https://rpc.example:99999/v3/{CANARY}?apikey={CANARY}", "https://rpc.example:99999"),
        (f"https://[::1]:8545/v3/{CANARY}", "https://[::1]:8545"),
        (f"https://[::1/v3/{CANARY}", "https://<host>"),
        (f"https://rpc.example:{CANARY}/x", "https://rpc.example:<port>"),
        (f"https://u:{CANARY}/x@rpc.example/x", "https://<host not shown"),
        (f"wss//rpc.example/{CANARY}", "<URL without a scheme>"),
        (f"{CANARY}", "<URL without a scheme>"),
        ("", "<URL without a scheme>"),
        (f"https://{CANARY}\x00\n@h", "https://"),
    ],
)
def test_redact_url_shows_scheme_host_port_and_never_fails(url: str, shown: str) -> None:
    redacted = redact_url(url)
    assert redacted.startswith(shown)
    assert CANARY not in redacted


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"postgresql://keeper:{CANARY}@db/keeper", "postgresql://keeper:***@db/keeper"),
        (f"postgres://keeper:{CANARY}@[::1]:5432/k", "postgres://keeper:***@[::1]:5432/k"),
        # Without a scheme, the DSN was printed whole.
        (f"sx_role:{CANARY}@127.0.0.1:5432/db", "<database URL without a scheme>"),
        # An unescaped '/', '#' or '?' in the password: printed whole.
        (f"postgresql://sx:{CANARY}/a#b?c@127.0.0.1:5432/db", "postgresql://<not shown"),
        (f"postgresql://sx:{CANARY}#x@127.0.0.1/db", "postgresql://<not shown"),
        (f"postgresql://sx:{CANARY}?x@127.0.0.1/db", "postgresql://<not shown"),
        # A quoted key=value password with a space: masked only up to the space.
        (f"host=db user=sx password='a {CANARY} b' dbname=k", "host=db user=sx password=*** "),
        (f"host=db password={CANARY}", "host=db password=***"),
        (
            f"postgresql://u@h/k?sslmode=require&password={CANARY}",
            "postgresql://u@h/k?sslmode=require&password=***",
        ),
        (f"postgresql://u:{CANARY}@h:{CANARY}/k", "postgresql://u:***@h:<port>/k"),
    ],
)
def test_redact_dsn_masks_the_password_whatever_the_form(dsn: str, shown: str) -> None:
    redacted = redact_dsn(dsn)
    assert redacted.startswith(shown), redacted
    assert CANARY not in redacted


# --------------------------------------------------------------------------- url_problem


@pytest.mark.parametrize(
    ("url", "schemes", "problem"),
    [
        ("wss//rpc.example/v2/KEY", WS_SCHEMES, "does not start with ws:// or wss://"),
        ("https://rpc.example/v2/KEY", WS_SCHEMES, "scheme is not ws or wss"),
        ("ws://rpc.example", RPC_SCHEMES, "scheme is not http or https"),
        ("http://rpc.example:99999/", RPC_SCHEMES, "port is not a number from 1 to 65535"),
        ("http://rpc.example:0/", RPC_SCHEMES, "port is not a number from 1 to 65535"),
        ("http:///v2/KEY", RPC_SCHEMES, "has no host"),
        ("http://a b/", RPC_SCHEMES, "whitespace"),
        ("http://u:p/q@rpc.example/", RPC_SCHEMES, "percent-encoded"),
        ("http://rpc.example,other/", RPC_SCHEMES, "several hosts"),
    ],
)
def test_url_problems_are_named_without_the_url(
    url: str, schemes: tuple[str, ...], problem: str
) -> None:
    found = url_problem(url, schemes)
    assert found is not None and problem in found
    assert "KEY" not in found and "rpc.example" not in found


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8545", "https://u:p%2F@rpc.example:443/v2/K?a=b#f", "http://[::1]:8545/"],
)
def test_good_rpc_urls_pass(url: str) -> None:
    assert url_problem(url, RPC_SCHEMES) is None


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("postgresql://keeper:pw@db:5432/keeper", None),
        ("postgres://keeper@[::1]/keeper?sslmode=require", None),
        ("postgresql://postgres:@/postgres?host=/tmp/socket", None),  # pgserver's form
        ("postgresql://k@h1:5432,h2:5433/keeper", None),
        ("postgresql://k:p%2F%23%3F@db/keeper", None),
        ("sx_role:PW@127.0.0.1:5432/db", "does not start with postgresql:// or postgres://"),
        ("host=db password='a b'", "key=value connection string is not supported"),
        ("postgresql://sx:PW/a@127.0.0.1/db", "must have them percent-encoded"),
        ("postgresql://sx:PW@127.0.0.1:543x/db", "port is not a number"),
        ("mysql://db/keeper", "scheme is not postgresql or postgres"),
    ],
)
def test_database_urls(dsn: str, problem: str | None) -> None:
    found = database_url_problem(dsn)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "PW" not in found


def test_split_url_never_raises_on_any_text() -> None:
    for text in ["", "://", "a://", "a://@", "a://[", "a://]:", "a://h:/", "x" * 10_000, "\x00://"]:
        split_url(text)
        redact_url(text)
        redact_dsn(text)
        url_problem(text, RPC_SCHEMES)


# --------------------------------------------------------------------------- the registry


def test_scrub_replaces_registered_values_longest_first() -> None:
    secrets.register("abcd", "abcdefgh", "xy", None, "")
    assert secrets.scrub("1 abcdefgh 2 abcd 3 xy") == "1 *** 2 *** 3 xy"
    assert "xy" not in secrets.registered()  # too short to be worth scrubbing


def test_scrub_catches_the_encoded_forms_of_a_secret() -> None:
    secrets.register('pa"ss/wo\\rd')
    assert secrets.scrub(json.dumps({"e": 'x pa"ss/wo\\rd y'})) == '{"e": "x *** y"}'
    assert secrets.scrub(repr('pa"ss/wo\\rd')) == "'***'"
    assert secrets.scrub("pa%22ss%2Fwo%5Crd") == "***"


def test_every_piece_of_an_rpc_url_is_registered() -> None:
    secrets.register_url("https://projuser:PassWord9@rpc.example/v3/PathKey12345?apikey=QueryKey9")
    for text in (
        "projuser:PassWord9",
        "PassWord9",
        "projuser",
        "/v3/PathKey12345?apikey=QueryKey9",
        "invalid key PathKey12345",
        "apikey=QueryKey9",
        "QueryKey9",
    ):
        assert "Key9" not in secrets.scrub(text) and "PassWord9" not in secrets.scrub(text)
    assert secrets.scrub("https://rpc.example/v3/PathKey12345") == "https://rpc.example***"
    assert secrets.scrub("v3 mainnet rpc.example") == "v3 mainnet rpc.example"


def test_a_malformed_database_password_is_registered_under_every_reading() -> None:
    # asyncpg read "CANARY" as the port: `invalid literal for int() with base 10: 'CANARY'`.
    secrets.register_dsn("postgresql://sx_role:CANARY/a#b?c@127.0.0.1:5432/db")
    assert secrets.scrub("invalid literal for int() with base 10: 'CANARY'") == (
        "invalid literal for int() with base 10: '***'"
    )
    assert "CANARY" not in secrets.scrub("password CANARY/a#b?c")
    secrets.register_dsn(f"sx_role:{CANARY}@127.0.0.1:5432/db")
    assert CANARY not in secrets.scrub(f"invalid DSN sx_role:{CANARY}@127.0.0.1")
    secrets.register_dsn("host=db password='with a Space9 inside'")
    assert secrets.scrub("password 'with a Space9 inside'") == "password ***"
    assert secrets.scrub("password: with a Space9 inside.") == "password: ***."


def test_key_and_password_files_are_registered(tmp_path: Path) -> None:
    key = "0x" + "ab12" * 16
    (tmp_path / "k.hex").write_text(key + "\n")
    (tmp_path / "p.txt").write_text("hunter22 \n")
    secrets.register_file(tmp_path / "k.hex", key=True)
    secrets.register_file(tmp_path / "p.txt")
    secrets.register_file(tmp_path / "missing.txt")  # skipped: loading the keys says why
    assert secrets.scrub(f"{key} {key[2:].upper()} [hunter22 ]") == "*** *** [***]"


# --------------------------------------------------------------------------- where output goes


def test_log_lines_and_their_tracebacks_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    logs.configure("debug", "json")
    secrets.register(CANARY)
    log = structlog.get_logger()
    try:
        raise ValueError(f"bad request to /v3/{CANARY}")
    except ValueError:
        log.exception("sync_failed", url=f"https://h/{CANARY}")
    text = out.getvalue()
    assert "sync_failed" in text and "bad request to /v3/***" in text
    assert CANARY not in text


def test_the_cli_error_paragraph_is_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keeper.errors import KeeperError

    def fails(_: object) -> int:
        raise KeeperError(f"eth_getBlockByNumber: bad request to /v3/{CANARY}?apikey=K")

    monkeypatch.setattr(config_command, "cmd_check_config", fails)
    secrets.register(CANARY)
    assert cli.main(["check-config", "--config", "x.toml"]) == 1
    err = capsys.readouterr().err
    assert "keeper check-config: error: eth_getBlockByNumber: bad request to /v3/***" in err
    assert CANARY not in err


def test_everything_a_command_prints_is_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def prints(_: object) -> int:
        print(f"a {CANARY[:4]}", end="")  # one secret, written in two pieces
        print(f"{CANARY[4:]} b", flush=True)
        print(CANARY, file=sys.stderr)
        return 0

    monkeypatch.setattr(config_command, "cmd_check_config", prints)
    secrets.register(CANARY)
    assert cli.main(["check-config", "--config", "x.toml"]) == 0
    out, err = capsys.readouterr()
    assert out == "a *** b\n" and err == "***\n"
    assert sys.stdout is not None and not hasattr(sys.stdout, "wrapped")  # put back after


def test_a_crash_traceback_is_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    secrets.register(CANARY)
    try:
        int(f"0x{CANARY}", 16)
    except ValueError as exc:
        secrets.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "Traceback" in err and "invalid literal for int() with base 16: '0x***'" in err
    assert CANARY not in err


def test_a_dying_thread_traceback_is_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threading, "excepthook", secrets.thread_excepthook)
    secrets.register(CANARY)

    def dies() -> None:
        raise RuntimeError(CANARY)

    thread = threading.Thread(target=dies, name="worker")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert "Exception in thread worker" in err and "RuntimeError: ***" in err
    assert CANARY not in err


def test_health_port_bodies_are_scrubbed() -> None:
    secrets.register(CANARY)
    wire = encode_response(json_response(200, {"last_error": f"bad request to /{CANARY}"}))
    head, _, body = wire.partition(b"\r\n\r\n")
    assert CANARY.encode() not in wire
    assert json.loads(body) == {"last_error": "bad request to /***"}
    assert f"Content-Length: {len(body)}".encode() in head
    assert encode_response(Response(200, b"\xff\xfe binary")).endswith(b"\xff\xfe binary")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://sx:{CANARY}/a#b@127.0.0.1:5432/db",  # asyncpg: int() of the "port"
        f"postgresql://sx:pw@127.0.0.1:1/db?{CANARY}",  # asyncpg: "bad query field"
        f"sx:{CANARY}@127.0.0.1:5432/db",
    ],
)
async def test_connecting_with_a_malformed_url_is_a_typed_error_without_it(dsn: str) -> None:
    from keeper import db

    with pytest.raises(db.DatabaseUnavailable) as caught:
        await db.connect(dsn, timeout=2)
    assert CANARY not in str(caught.value) and caught.value.help
