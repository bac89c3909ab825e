"""A provider's bad minutes, in turn: drives `RpcProxy` faults while a `keeper run` works.

`Chaos(proxies, selected)` cycles through `MODES`, one at a time, each for `period` seconds on
one provider: the one the keeper reads from when the mode starts (`selected()`, from the
daemon's /status), so that every fault meets the keeper's reads and not only its probes and
sends. At any moment at most one provider misbehaves; the others answer as the node does.
`effects` records, per mode, whether the proxy's counters show the fault met a request.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence

from tests.support.rpc_proxy import RpcProxy

HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
JSON = "application/json"

Mode = Callable[[RpcProxy], None]
MODES: dict[str, Mode] = {
    # First: it needs blocks with the keeper's events, which the start of a run has most of.
    "newest logs dropped": lambda p: p.drop_logs(3),
    "429 Retry-After": lambda p: p.fail_next(None, 429, retry_after="1"),
    "503 Retry-After": lambda p: p.fail_next(
        None, 503, body="Service Unavailable", content_type="text/plain", retry_after="2"
    ),
    "502 HTML": lambda p: p.fail_next(None, 502, body=HTML_502),
    "200 HTML": lambda p: p.fail_next(None, 200, body=HTML_502),
    "200 truncated": lambda p: p.fail_next(None, 200, truncate=True),
    "502 truncated": lambda p: p.fail_next(None, 502, truncate=True),
    "200 invalid JSON": lambda p: p.fail_next(
        None, 200, body='{"jsonrpc":"2.0","id":1,"result":', content_type=JSON
    ),
    "200 not JSON-RPC": lambda p: p.fail_next(
        None, 200, body='{"message":"Internal server error"}', content_type=JSON
    ),
    "reset before forwarding": lambda p: p.drop_next(None),
    "reset after forwarding": lambda p: p.drop_next(None, after_forwarding=True),
    "latency": lambda p: p.delay_next(None, 0.8),
    "lagging head": lambda p: p.lag_head(8),
    "other chain id": lambda p: p.report_chain_id(999),
}


def _touched(proxy: RpcProxy) -> tuple[int, int, int, int]:
    """Counters that move when a fault or mode meets a request."""
    return (
        sum(proxy.faults_served.values()),
        proxy.lagged_answers,
        proxy.dropped_logs,
        proxy.calls["eth_chainId"],
    )


def selected_from_status(health: Callable[[], str | None], labels: Sequence[str]) -> int:
    """The index (in `labels`) of the provider the daemon reads from, per its /status; 0 when
    it cannot be told."""
    base = health()
    if base is None:
        return 0
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=2) as resp:  # noqa: S310
            status = json.loads(resp.read())
    except (OSError, ValueError):
        return 0
    for line in (status.get("process") or {}).get("providers") or []:
        if line.get("selected") and line.get("provider") in labels:
            return labels.index(line["provider"])
    return 0


class Chaos:
    """Cycles `MODES` over `proxies` in a thread (see module doc)."""

    def __init__(
        self, proxies: Sequence[RpcProxy], selected: Callable[[], int], period: float = 1.5
    ) -> None:
        self.proxies = list(proxies)
        self.selected = selected
        self.period = period
        self.applied: Counter[str] = Counter()
        self.effects: Counter[str] = Counter()
        self.targets: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> Chaos:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for proxy in self.proxies:
            proxy.clear_faults()

    def _run(self) -> None:
        while not self._stop.is_set():
            # The modes that have not met a request yet go first (a window can fall on a
            # restart of the daemon, when it asks nothing), then the others, in their order.
            for name in sorted(MODES, key=lambda m: self.effects[m] > 0):
                apply = MODES[name]
                if self._stop.is_set():
                    return
                target = self.selected()
                proxy = self.proxies[target]
                before = _touched(proxy)
                apply(proxy)
                self.applied[name] += 1
                self.targets[target] += 1
                # Dropped logs need a block with the keeper's events: a longer window.
                self._stop.wait(self.period * (3 if name == "newest logs dropped" else 1))
                proxy.clear_faults()
                after = _touched(proxy)
                moved = [a - b for a, b in zip(after, before, strict=True)]
                if name == "other chain id":
                    hit = moved[3] > 0
                elif name == "lagging head":
                    hit = moved[1] > 0
                elif name == "newest logs dropped":
                    hit = moved[2] > 0
                else:
                    hit = moved[0] > 0
                self.effects[name] += int(hit)
                self._stop.wait(0.5)
