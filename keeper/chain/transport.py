"""One RPC provider's HTTP endpoint: a JSON-RPC payload out, a decoded JSON answer back, or a
typed fault.

Providers fail in ways a node never does: a load balancer's HTML page with HTTP 502, a 200
whose body is cut short, `{"message": "Internal server error"}`, a 429 or 503 with
`Retry-After`, a connection reset before or after the request reached the node. Every one of
them is a `ProviderFault` here (an `RpcTransient`: asked again, on another provider when there
is one), never a `JSONDecodeError` or an aiohttp exception escaping to the daemon. A JSON-RPC
error answer is not a fault of the provider: it goes back to the caller as an answer.

Messages name the provider by scheme, host and port only: hosted RPC URLs carry API keys.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import aiohttp

from keeper.chain.errors import RpcTransient
from keeper.urls import redact_url

# The longest pause a provider's Retry-After can ask for: longer is read as this (a provider
# asking for an hour is down; the pool's probes bring it back).
MAX_RETRY_AFTER = 60.0


class ProviderFault(RpcTransient):
    """The provider failed to answer: transport error, HTTP error status or a body that is no
    JSON-RPC answer. `kind` is a short label for metrics (transport, timeout, http_502,
    bad_body, bad_reply); `retry_after` the seconds the provider asked to wait, if it did."""

    def __init__(
        self, message: str, *, method: str, kind: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message, method=method)
        self.kind = kind
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _looks_like_reply(body: Any) -> bool:
    """Whether decoded JSON is a JSON-RPC answer (one reply, or a batch of replies)."""
    if isinstance(body, dict):
        return "result" in body or "error" in body
    if isinstance(body, list):
        return bool(body) and all(isinstance(r, dict) and _looks_like_reply(r) for r in body)
    return False


class HttpTransport:
    """POSTs JSON-RPC payloads to one URL over a kept-alive aiohttp session."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url  # a secret: shown only as `label`
        self.label = redact_url(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpTransport({self.label})"

    async def close(self) -> None:
        """Close the HTTP session (a later post opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"Content-Type": "application/json"}
            )
        return self._session

    async def post(self, payload: Any, method: str) -> Any:
        """Send `payload` (one call or a batch); the decoded JSON-RPC answer, or a
        `ProviderFault` (`method` names the call in messages and metrics)."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        try:
            async with self._open().post(self.url, data=data) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                ctype = response.headers.get("Content-Type", "")
                body = await response.read()
        except TimeoutError:
            raise self.fault(method, "timeout", "no answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            # Not str(exc): aiohttp's messages carry the full URL.
            raise self.fault(method, "transport", type(exc).__name__) from None
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed, readable = False, False
        else:
            parsed, readable = True, _looks_like_reply(decoded)
        if status == 429 or status >= 500 or (status >= 300 and not readable):
            # A rate limit or a failing backend, whatever the body says; or an error page.
            raise self.fault(
                method, f"http_{status}", f"HTTP {status}{_about(body, ctype)}", retry_after
            )
        if not readable:
            kind = "bad_reply" if parsed else "bad_body"
            what = "JSON that is no JSON-RPC answer" if parsed else "no JSON"
            raise self.fault(method, kind, f"HTTP {status} with {what}{_about(body, ctype)}")
        return decoded

    def fault(
        self, method: str, kind: str, detail: str, retry_after: float | None = None
    ) -> ProviderFault:
        """The fault of a request to this provider (named by its label only)."""
        return ProviderFault(
            f"{method}: {detail} from {self.label}",
            method=method,
            kind=kind,
            retry_after=retry_after,
        )


def _about(body: bytes, ctype: str) -> str:
    """A short description of a body for a message: its type and size, never its text (an
    error page may echo the request's URL, API key included)."""
    kind = ctype.split(";")[0].strip() or "no content type"
    return f" ({len(body)} bytes, {kind})"
