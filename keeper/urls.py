"""The keeper's URLs (RPC, websocket, database), taken apart without trusting them.

These URLs carry secrets: hosted RPCs put API keys in the path, the query or the user info, and
a database URL holds a password. So nothing here relies on a URL being well-formed, and nothing
raises: `split_url` takes any text apart with plain string operations (never `urlsplit`, whose
`.port` raises on an out-of-range port and whose exception would carry the URL),
`redact_url`/`redact_dsn` fall back to a fixed placeholder whatever they are given, and
`url_problem`/`database_url_problem` say what is wrong with a URL without ever quoting it.

The accepted forms (`url_problem`): `chain.rpc_url` http:// or https://, `chain.ws_url` ws:// or
wss://, `database.url` postgresql:// or postgres:// (asyncpg reads no key=value connection
strings). A user name or password holding `/`, `?`, `#` or `@` must have them percent-encoded,
as RFC 3986 and libpq require: an unescaped one makes it impossible to tell where the password
ends, so such a URL is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
# RFC 3986 reg-name characters (letters, digits, unreserved, sub-delims but ',', and %-escapes).
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+;=%]+")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~]+)?\]")
_PORT = re.compile(r"[0-9]{1,5}")
# What a database name or user name may be shown as; anything else is replaced.
_PLAIN = re.compile(r"[A-Za-z0-9\-._~%+]*")
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")  # libpq's key = value

RPC_SCHEMES = ("http", "https")
WS_SCHEMES = ("ws", "wss")
DATABASE_SCHEMES = ("postgresql", "postgres")
# Query parameters of a database URL whose values are shown by `redact_dsn`; any other
# parameter's value (password, sslpassword, sslkey, ...) is masked.
_SHOWN_PARAMS = frozenset(
    {"host", "hostaddr", "port", "user", "dbname", "database", "sslmode", "application_name",
     "connect_timeout", "target_session_attrs", "krbsrvname", "gsslib"}
)  # fmt: skip
MASK = "***"
UNPARSEABLE = "<unparseable URL>"


@dataclass(frozen=True)
class UrlParts:
    """A URL cut at its delimiters, every part as written (nothing decoded or checked)."""

    scheme: str  # lower-cased
    userinfo: str | None  # before the last '@' of the authority; None without an '@'
    hostport: str  # host[:port], or several of them joined by ',' (libpq's multi-host form)
    path: str
    query: str | None
    fragment: str | None
    # An '@' after the authority: a user name or password holding an unescaped '/', '?' or '#'
    # (or an '@' in the path or query). Where the user info ends cannot be told then.
    stray_at: bool

    def hosts(self) -> list[tuple[str, str | None]]:
        """Each (host, port) of `hostport`; port None when absent (it may be any text)."""
        return [_host_port(item) for item in self.hostport.split(",")]


def split_url(text: str) -> UrlParts | None:
    """`text` cut into a URL's parts, or None when it does not start with `scheme://`.

    Plain string operations only: any text gives an answer, never an exception. The
    authority ends at the first '/', '?' or '#', as RFC 3986 reads it.
    """
    match = _SCHEME.match(text)
    if match is None:
        return None
    rest = text[match.end() :]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    end = min(ends) if ends else len(rest)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    before_fragment, hash_mark, fragment = tail.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    return UrlParts(
        scheme=match.group(1).lower(),
        userinfo=userinfo if at else None,
        hostport=hostport,
        path=path,
        query=query if question_mark else None,
        fragment=fragment if hash_mark else None,
        stray_at="@" in tail,
    )


def _host_port(item: str) -> tuple[str, str | None]:
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            return item, None
        host, after = item[: close + 1], item[close + 1 :]
        return (host, after[1:]) if after.startswith(":") else (host, after or None)
    host, colon, port = item.rpartition(":")
    return (host, port) if colon else (item, None)


def _valid_host(host: str) -> bool:
    return bool(_HOST.fullmatch(host) or _IPV6.fullmatch(host))


def _valid_port(port: str) -> bool:
    return bool(_PORT.fullmatch(port)) and 1 <= int(port) <= 65535


def _shown_hosts(parts: UrlParts) -> str:
    """host:port of every host, each part shown only when it is well-formed."""
    shown = []
    for host, port in parts.hosts():
        text = host if (not host or _valid_host(host)) else "<host>"
        if port is not None:
            text += f":{port}" if _PORT.fullmatch(port) else ":<port>"
        shown.append(text)
    return ",".join(shown)


def redact_url(url: str) -> str:
    """An RPC or websocket URL safe to show: `scheme://host:port` only (hosted RPCs carry API
    keys in the path, the query and the user info). Never raises: a URL that cannot be taken
    apart shows as a placeholder, never as itself."""
    try:
        parts = split_url(url)
        if parts is None:
            return "<URL without a scheme>"
        if parts.stray_at:
            return f"{parts.scheme}://<host not shown: the URL has an '@' after its host>"
        return f"{parts.scheme}://{_shown_hosts(parts)}"
    except Exception:  # a redaction must never be the thing that fails
        return UNPARSEABLE


def redact_dsn(dsn: str) -> str:
    """A database URL safe to show: `scheme://user:***@host:port/dbname`, password and any
    query value other than the plain settings masked. A key=value string shows its keys with
    the password's value masked. Never raises; an unparseable DSN shows as a placeholder."""
    try:
        parts = split_url(dsn)
        if parts is None:
            if _PAIR.match(dsn):
                return _redact_key_value(dsn)
            return "<database URL without a scheme>"
        if parts.stray_at:
            return (
                f"{parts.scheme}://<not shown: the URL has an '@' after its host (an unescaped "
                "character in the user name or password?)>"
            )
        shown = f"{parts.scheme}://"
        if parts.userinfo is not None:
            user, colon, _ = parts.userinfo.partition(":")
            user = user if _PLAIN.fullmatch(user) else "<user>"
            shown += f"{user}:{MASK}@" if colon else f"{user}@"
        shown += _shown_hosts(parts)
        if parts.path:
            shown += parts.path if _PLAIN.fullmatch(parts.path[1:]) else "/<database>"
        if parts.query is not None:
            shown += "?" + "&".join(_shown_param(p) for p in parts.query.split("&"))
        return shown
    except Exception:  # a redaction must never be the thing that fails
        return "<unparseable database URL>"


def _shown_param(param: str) -> str:
    key, equals, value = param.partition("=")
    if not equals:
        return MASK
    if key in _SHOWN_PARAMS and re.fullmatch(r"[A-Za-z0-9\-._~%/:,]*", value):
        return param
    return f"{key}={MASK}" if _PLAIN.fullmatch(key) else MASK


def key_value_pairs(text: str) -> list[tuple[str, str, str]]:
    """The (key, value, value as written) pairs of a libpq key=value string, read leniently:
    a quoted value ends at its closing quote (or the end of the text), `\\` escapes the next
    character, an unquoted value ends at whitespace. Reading stops at anything else."""
    pairs = []
    pos, n = 0, len(text)
    while pos < n:
        match = _PAIR.match(text, pos)
        if match is None:
            break
        key, pos = match.group(1), match.end()
        start, value = pos, []
        quoted = pos < n and text[pos] == "'"
        pos += 1 if quoted else 0
        while pos < n:
            char = text[pos]
            if char == "\\" and pos + 1 < n:
                value.append(text[pos + 1])
                pos += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                pos += 1 if quoted else 0
                break
            value.append(char)
            pos += 1
        pairs.append((key, "".join(value), text[start:pos]))
    return pairs


def _redact_key_value(text: str) -> str:
    shown = []
    for key, value, _ in key_value_pairs(text):
        plain = re.fullmatch(r"[A-Za-z0-9\-._~/:,]*", value)
        shown.append(f"{key}={value}" if key in _SHOWN_PARAMS and plain else f"{key}={MASK}")
    return " ".join(shown) or "<unparseable database URL>"


# ---------------------------------------------------------------------------- checking


def url_problem(text: str, schemes: tuple[str, ...], *, need_host: bool = True) -> str | None:
    """What is wrong with `text` as a URL with one of `schemes`, in words that never quote
    it (it may hold a secret); None when it is fine."""
    expected = " or ".join(f"{s}://" for s in schemes)
    if not text.strip():
        return f"it is empty; expected a URL starting with {expected}"
    if text.endswith(" (masked)"):
        return "it is the masked form `keeper config show` prints; put the real URL back"
    parts = split_url(text)
    if parts is None and "postgresql" in schemes and _PAIR.match(text):
        return (
            "a key=value connection string is not supported; expected a "
            "postgresql://user:password@host:port/dbname URL (special characters of the "
            "password percent-encoded)"
        )
    if _WHITESPACE_OR_CONTROL.search(text):
        return "it contains whitespace or a control character (percent-encode them: %20)"
    if parts is None:
        return f"it does not start with {expected}"
    if parts.scheme not in schemes:
        return f"its scheme is not {' or '.join(schemes)}; expected a URL starting with {expected}"
    if parts.stray_at:
        return (
            "it has an '@' after the host: a user name or password holding '/', '?', '#' or "
            "'@' must have them percent-encoded (%2F, %3F, %23, %40)"
        )
    hosts = parts.hosts()
    if len(hosts) > 1 and need_host:
        return "it names several hosts; expected one"
    for host, port in hosts:
        if not host:
            if need_host or port is not None:
                return f"it has no host; expected {schemes[0]}://host[:port]/..."
        elif not _valid_host(host):
            return "its host is not a host name or an IP address ([...] for IPv6)"
        if port is not None and not _valid_port(port):
            return "its port is not a number from 1 to 65535"
    return None


def database_url_problem(dsn: str) -> str | None:
    """`url_problem` for a database URL (postgresql:// or postgres://, the host optional:
    libpq's defaults and `?host=/socket/dir` then apply)."""
    return url_problem(dsn, DATABASE_SCHEMES, need_host=False)
