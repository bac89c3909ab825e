"""newHeads over a websocket: wakes the indexer as soon as a block arrives.

The subscription only accelerates polling; it never replaces it. The indexer still polls at
its interval, so a socket that drops, stalls or is never configured costs latency, not
correctness. A dropped socket is reconnected with backoff and reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import anyio
import structlog
from anyio.abc import TaskStatus
from prometheus_client import Counter, Gauge

from keeper import metrics

log = structlog.get_logger(__name__)

HEADS_RECEIVED = Counter(
    "keeper_ws_heads_total", "newHeads notifications received.", registry=metrics.REGISTRY
)
WS_CONNECTED = Gauge(
    "keeper_ws_connected",
    "1 while the newHeads websocket is subscribed.",
    registry=metrics.REGISTRY,
)


class HeadWatcher:
    """Subscribes to newHeads at `url` and calls `wake` for every notification."""

    def __init__(self, url: str, wake: Callable[[], None], *, max_backoff: float = 30.0) -> None:
        self.url = url
        self.wake = wake
        self.max_backoff = max_backoff

    def __repr__(self) -> str:
        return f"HeadWatcher({metrics.redact_url(self.url)})"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a subscription open forever, reconnecting after failures."""
        task_status.started()
        failures = 0
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self._subscribe_once(session)
                    failures = 0  # the server closed a working socket: reconnect promptly
                except Exception as exc:  # whatever the provider sends: polling carries on
                    failures += 1
                    log.warning(
                        "ws_disconnected",
                        url=metrics.redact_url(self.url),
                        error=str(exc) or type(exc).__name__,
                        failures=failures,
                    )
                finally:
                    WS_CONNECTED.set(0)
                await anyio.sleep(min(0.5 * 2**failures, self.max_backoff))

    async def _subscribe_once(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.url, heartbeat=20) as ws:
            await ws.send_str(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
                )
            )
            reply = await ws.receive_json(timeout=10)
            if not isinstance(reply, dict) or "error" in reply:
                raise ValueError(f"eth_subscribe refused: {reply!r:.200}")
            WS_CONNECTED.set(1)
            log.info("ws_subscribed", url=metrics.redact_url(self.url))
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if isinstance(data, dict) and data.get("method") == "eth_subscription":
                    HEADS_RECEIVED.inc()
                    self.wake()
