"""The secrets this process knows, and `scrub`, which takes them out of anything it prints.

Masking the known fields (`keeper.urls.redact_url`, `redact_dsn`) protects the places that
remember to mask. This module is the net under them: a process-wide registry of secret
values, filled when the configuration loads (`keeper.config_load.load_config`) and when a command
takes a database or RPC URL or a key from its options (`keeper.cli`), and `scrub(text)`, which
replaces every registered value with `***` wherever it appears: in a provider's error message
that repeats the request path, in an exception from a library, in a traceback.

It is applied to everything the keeper writes: structlog's rendered lines (`keeper.logs`),
the CLI's error paragraph, stdout and stderr as a whole while a command runs
(`scrubbed_output`), tracebacks of a crash and of a dying thread (`install_hooks`), stdlib
`logging`, and the health port's responses (`keeper.service.health`).

What gets registered:
- the database password (as written and percent-decoded; a malformed URL's every possible
  reading of it, and the whole URL);
- each RPC and websocket URL's user info (whole, user, password), path (unless just "/"),
  each path segment of at least SEGMENT_MIN_LENGTH characters, query (whole, each parameter,
  each value) and fragment;
- the signer files' contents: password files, and hex keys and their passwords in
  $CREDENTIALS_DIRECTORY; keys loaded by `keeper check-config` and `keeper deploy`.
Each value is also registered as it appears percent-encoded, JSON-escaped and repr-escaped.
Values shorter than MIN_LENGTH characters are ignored: scrubbing "pw" or "v3" everywhere would
mangle unrelated output (and such a value protects nothing). A secret that is also an ordinary
word (a database password "postgres") is scrubbed wherever that word appears.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, cast
from urllib.parse import quote, unquote

from keeper.urls import UrlParts, key_value_pairs, split_url

MARKER = "***"
MIN_LENGTH = 4
SEGMENT_MIN_LENGTH = 8  # path segments: shorter ones are words such as "v2", "mainnet"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


# ---------------------------------------------------------------------------- the registry


def _variants(value: str) -> set[str]:
    """`value` and the forms it takes in URLs, JSON lines and reprs."""
    found = {value, unquote(value), quote(value, safe=""), quote(value, safe="/:@")}
    found.add(json.dumps(value)[1:-1])
    found.add(repr(value)[1:-1])
    return found


def register(*values: str | None) -> None:
    """Add secret values (and their encoded forms) to the registry; None, empty and short
    values are ignored. Never raises."""
    global _pattern
    try:
        new = set()
        for value in values:
            if value and len(value) >= MIN_LENGTH:
                new |= {v for v in _variants(value) if len(v) >= MIN_LENGTH}
        with _lock:
            if new <= _values:
                return
            _values.update(new)
            ordered = sorted(_values, key=lambda v: (-len(v), v))  # longest match first
            _pattern = re.compile("|".join(re.escape(v) for v in ordered))
    except Exception:  # registering must not take a command down; the fields stay masked
        return


def registered() -> frozenset[str]:
    """The registered values (for tests)."""
    with _lock:
        return frozenset(_values)


def clear() -> None:
    """Forget every registered value (for tests)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    pattern = _pattern
    if not isinstance(text, str):
        text = str(text)
    if pattern is None or not text:
        return text
    return pattern.sub(MARKER, text)


def scrub_bytes(data: bytes) -> bytes:
    """`scrub` for UTF-8 bytes (other bytes pass through untouched)."""
    if _pattern is None or not data:
        return data
    return scrub(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------- what is secret


def _userinfo_secrets(userinfo: str, *, user_too: bool) -> list[str]:
    user, colon, password = userinfo.partition(":")
    found = [password] if colon else []
    if user_too:
        found += [userinfo, user]
    return found


def _url_pieces(parts: UrlParts) -> list[str]:
    found: list[str] = []
    if parts.userinfo is not None:
        found += _userinfo_secrets(parts.userinfo, user_too=True)
    if parts.path not in ("", "/"):
        found += [parts.path, parts.path.strip("/")]
        found += [s for s in parts.path.split("/") if len(s) >= SEGMENT_MIN_LENGTH]
    for piece in (parts.query, parts.fragment):
        if piece:
            found.append(piece)
            for param in piece.split("&"):
                found += [param, param.partition("=")[2]]
    return found


def _odd_ports(parts: UrlParts) -> list[str]:
    """Ports that are not numbers: a password, when the user info lost its '@'."""
    return [port for _, port in parts.hosts() if port and not port.isdigit()]


def _at_the_last_at(text: str) -> tuple[str, str] | None:
    """A malformed URL read the other way: the user info runs to the last '@' (a password
    with an unescaped '/', '?' or '#'); (user info, the rest), or None without an '@'."""
    match = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", text)
    rest = text[match.end() :] if match else text
    userinfo, at, after = rest.rpartition("@")
    return (userinfo, after) if at else None


def url_secrets(url: str) -> list[str]:
    """The secret pieces of an RPC or websocket URL (user info, path, query, fragment), under
    every reading of it when it is malformed."""
    parts = split_url(url)
    if parts is None:
        # No scheme (`wss//host/key`, `host/key`): all of it, and its pieces read as if the
        # scheme were there.
        reread = split_url(f"x://{url}")
        return [url, *(_url_pieces(reread) if reread is not None else [])]
    found = _url_pieces(parts) + _odd_ports(parts)
    if parts.stray_at:
        # Read the other way, what looked like host:port is user:password.
        found += [url, parts.hostport, *_userinfo_secrets(parts.hostport, user_too=True)]
        other = _at_the_last_at(url)
        if other is not None:
            found += _userinfo_secrets(other[0], user_too=True)
            reread = split_url(f"{parts.scheme}://{other[1]}")
            if reread is not None:
                found += _url_pieces(reread)
    return found


def dsn_secrets(dsn: str) -> list[str]:
    """The secret pieces of a database URL: its password (and any other password-like query
    value), under every reading of it when it is malformed."""
    parts = split_url(dsn)
    if parts is None:
        pairs = key_value_pairs(dsn)
        if pairs:
            return [x for key, value, raw in pairs if "pass" in key.lower() for x in (value, raw)]
        # Neither a URL nor key=value (a URL without its scheme?): all of it, and the
        # password of each way of reading it.
        found = [dsn]
        for userinfo in (dsn.partition("@")[0], dsn.rpartition("@")[0]):
            found += _userinfo_secrets(userinfo, user_too=False)
        return found
    found = _odd_ports(parts)
    if parts.userinfo is not None:
        found += _userinfo_secrets(parts.userinfo, user_too=False)
    for param in (parts.query or "").split("&"):
        key, _, value = param.partition("=")
        if "pass" in key.lower() and key.lower() != "passfile":
            found.append(value)
    if parts.stray_at:
        # Read the other way, what looked like host:port is user:password (asyncpg would try
        # the password as the port number and say so in its error).
        found += [dsn, *_userinfo_secrets(parts.hostport, user_too=False)]
        other = _at_the_last_at(dsn)
        if other is not None:
            found += _userinfo_secrets(other[0], user_too=False)
    return found


def register_url(url: str | None) -> None:
    """Register the secret pieces of an RPC or websocket URL."""
    if url:
        register(*url_secrets(url))


def register_dsn(dsn: str | None) -> None:
    """Register the password of a database URL."""
    if dsn:
        register(*dsn_secrets(dsn))


def register_key(text: str) -> None:
    """Register a private key given as hex (with or without 0x, either case)."""
    body = text.strip().removeprefix("0x").removeprefix("0X")
    register(text.strip(), body, body.lower(), body.upper())


def register_file(path: Path, *, key: bool = False) -> None:
    """Register the content of a password file (without its line break, as
    `keeper.chain.keys.load_keystore` reads it), or of a hex key file when `key`. Files that cannot
    be read are skipped: loading the keys reports them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if key:
        if not text.lstrip().startswith("{"):  # a keystore JSON holds no plain secret
            register_key(text)
        return
    register(text.removesuffix("\n").removesuffix("\r"), text.strip())


def register_credential(name: str) -> None:
    """Register a systemd credential's hex key and its `<name>.password` file."""
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory or "/" in name or name in ("", ".", ".."):
        return
    register_file(Path(directory) / name, key=True)
    register_file(Path(directory) / f"{name}.password")


# ---------------------------------------------------------------------------- output


class _ScrubbedStream:
    """A text stream that writes through `scrub`, a line at a time (so a secret written in two
    pieces of one line is still caught); everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def wrapped(self) -> TextIO:
        return self._stream

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            cut = max(self._pending.rfind("\n"), self._pending.rfind("\r"))
            if cut >= 0:
                done, self._pending = self._pending[: cut + 1], self._pending[cut + 1 :]
                self._stream.write(scrub(done))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._stream.write(scrub(self._pending))
                self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def scrubbed_output() -> Iterator[None]:
    """Within the block, sys.stdout and sys.stderr write through `scrub`."""
    saved = sys.stdout, sys.stderr
    if saved[0] is not None:
        sys.stdout = cast(TextIO, _ScrubbedStream(saved[0]))
    if saved[1] is not None:
        sys.stderr = cast(TextIO, _ScrubbedStream(saved[1]))
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _ScrubbedStream):
                with suppress(OSError, ValueError):  # a closed pipe: nothing more to write
                    stream.flush()
        sys.stdout, sys.stderr = saved


def _to_stderr(text: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(scrub(text))
        stream.flush()
    except (OSError, ValueError):
        pass


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook: Python's traceback of an uncaught exception, scrubbed, on stderr."""
    _to_stderr("".join(traceback.format_exception(exc_type, exc, tb)))


def thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: a dying thread's traceback, scrubbed, on stderr."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    _to_stderr(f"Exception in thread {name}:\n{text}")


def unraisablehook(unraisable: Any) -> None:
    """sys.unraisablehook: an "Exception ignored in" message, scrubbed, on stderr."""
    head = unraisable.err_msg or "Exception ignored in"
    try:
        head += f": {unraisable.object!r}" if unraisable.object is not None else ""
    except Exception:
        head += ": <object repr() failed>"
    text = "".join(
        traceback.format_exception(
            unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
        )
    )
    _to_stderr(f"{head}\n{text}")


class ScrubbingHandler(logging.Handler):
    """Stdlib logging to the current sys.stderr, scrubbed (what `logging.lastResort` does for
    a process that configured no handler: WARNING and above, the message only)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _to_stderr(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed = False


def install_hooks() -> None:
    """Scrub what Python itself prints: the traceback of an uncaught exception (also in a
    thread), "Exception ignored" messages, and stdlib logging when nothing else handles it.
    Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    sys.unraisablehook = unraisablehook
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(ScrubbingHandler())
