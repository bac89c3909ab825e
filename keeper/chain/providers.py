"""The RPC providers of one chain, scored, and which one a read goes to.

Each provider keeps a health record: recent errors (a score that halves every minute), latency
(a moving average), its head and `finalized` tag as last seen, and a demotion: a provider that
fails is not chosen again for 1, 2, 4, ... up to 60 seconds (or the `Retry-After` it sent),
and one whose head lags the best provider's by more than `max_lag_blocks` is not chosen until
it catches up. A provider that serves another chain is excluded until it serves the right one.

Reads stick to one provider (the selected one) while it stays healthy, so that one pass reads
one node's view of the chain; when it fails, the next attempt of the same request goes to the
best other provider. Probes (`ProviderPool.probe_forever`) ask every provider for its chain id,
head and finalized block every `probe_interval` seconds, bring demoted providers back when
they answer and move the selection to a clearly better provider. With one provider nothing is
probed: the client behaves as it always did.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from keeper import metrics, secrets
from keeper.chain.errors import RpcError, RpcTransient
from keeper.chain.transport import HttpTransport, ProviderFault

log = structlog.get_logger(__name__)

ERROR_HALF_LIFE = 60.0  # seconds for a provider's error score to halve
MAX_DEMOTION = 60.0  # longest a failure keeps a provider out
LATENCY_WEIGHT = 5.0  # score points per second of average latency
SWITCH_MARGIN = 1.0  # a probe moves the selection only to a provider better by this much


@dataclass
class Provider:
    """One provider and what the pool knows of its health."""

    index: int
    label: str  # scheme://host:port (made unique): its name in logs, metrics and status
    transport: HttpTransport
    error_score: float = 0.0
    error_at: float = 0.0
    latency: float | None = None  # moving average, seconds
    failures: int = 0  # in a row
    demoted_until: float = 0.0
    head: int | None = None
    finalized_tag: int | None = None
    wrong_chain: str | None = None  # why it is excluded (another chain), if it is
    last_error: str | None = None
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def errors_now(self, now: float) -> float:
        """The error score decayed to `now`."""
        return self.error_score * math.pow(0.5, (now - self.error_at) / ERROR_HALF_LIFE)


def unique_labels(labels: Sequence[str]) -> list[str]:
    """`labels` with repeats told apart (`#2`, `#3`): two keys at one host are two providers."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


class ProviderPool:
    """The providers of one chain, their health, and the selection (see module doc)."""

    def __init__(
        self,
        transports: Sequence[HttpTransport],
        *,
        max_lag_blocks: int = 5,
        probe_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not transports:
            raise ValueError("at least one RPC provider is needed")
        labels = unique_labels([t.label for t in transports])
        named = zip(labels, transports, strict=True)
        self.providers = [Provider(i, label, t) for i, (label, t) in enumerate(named)]
        self.max_lag_blocks = max_lag_blocks
        self.probe_interval = probe_interval
        self.expected_chain_id: int | None = None
        self.clock = clock
        self.current = self.providers[0]
        for p in self.providers:
            metrics.RPC_PROVIDER_REQUESTS.labels(provider=p.label)  # at 0 from the start
            self._publish(p)

    @property
    def several(self) -> bool:
        """Whether there is more than one provider."""
        return len(self.providers) > 1

    # ------------------------------------------------------------------ health

    def best_head(self) -> int | None:
        """The highest head any provider serving the chain reported."""
        heads = [p.head for p in self.providers if p.head is not None and not p.wrong_chain]
        return max(heads) if heads else None

    def lag(self, p: Provider) -> int:
        """How many blocks `p`'s head is behind the best provider's (0 when unknown)."""
        best = self.best_head()
        return 0 if best is None or p.head is None else best - p.head

    def healthy(self, p: Provider, now: float | None = None) -> bool:
        """Whether `p` may be chosen: on the right chain, not demoted, not lagging."""
        now = self.clock() if now is None else now
        return (
            p.wrong_chain is None and now >= p.demoted_until and self.lag(p) <= self.max_lag_blocks
        )

    def score(self, p: Provider, now: float) -> float:
        """Lower is better: recent errors, average latency and head lag."""
        return p.errors_now(now) + LATENCY_WEIGHT * (p.latency or 0.0) + self.lag(p)

    def succeeded(self, p: Provider, seconds: float) -> None:
        """`p` answered (an answer, even an error answer, that is no fault of the provider)."""
        p.latency = seconds if p.latency is None else 0.8 * p.latency + 0.2 * seconds
        p.failures = 0
        p.demoted_until = 0.0
        metrics.RPC_PROVIDER_LATENCY.labels(provider=p.label).observe(seconds)

    def failed(self, p: Provider, exc: RpcError) -> None:
        """`p` failed a request: count it, and keep it out for a while."""
        now = self.clock()
        kind = exc.kind if isinstance(exc, ProviderFault) else type(exc).__name__
        p.error_score = p.errors_now(now) + 1.0
        p.error_at = now
        p.failures += 1
        pause = min(MAX_DEMOTION, 2.0 ** (p.failures - 1))
        retry_after = exc.retry_after if isinstance(exc, ProviderFault) else None
        p.demoted_until = now + max(pause, retry_after or 0.0)
        p.last_error = secrets.scrub(exc.message)
        p.errors[kind] = p.errors.get(kind, 0) + 1
        metrics.RPC_PROVIDER_ERRORS.labels(provider=p.label, kind=kind).inc()
        if self.several and p.failures == 1:
            log.warning("rpc_provider_failed", provider=p.label, kind=kind, error=p.last_error)
        self._publish(p)

    def requested(self, p: Provider) -> None:
        """Count one HTTP request to `p`."""
        p.requests += 1
        metrics.RPC_PROVIDER_REQUESTS.labels(provider=p.label).inc()

    def saw_head(self, p: Provider, number: int, finalized_tag: int | None = None) -> None:
        """`p` reported `number` as its head (and its finalized tag, when asked)."""
        p.head = number
        if finalized_tag is not None:
            p.finalized_tag = finalized_tag
        if self.several:
            for q in self.providers:
                self._publish(q)

    def exclude(self, p: Provider, reason: str, *, logged: bool = False) -> None:
        """Stop choosing `p`: it serves another chain (until a probe finds the right one).
        `logged`: the caller has logged it already."""
        if p.wrong_chain is None and not logged:
            log.error("rpc_provider_excluded", provider=p.label, reason=reason)
        p.wrong_chain = reason
        if self.current is p:
            self._reselect(self.clock())
        self._publish(p)

    # ------------------------------------------------------------------ selection

    def choose(self, avoid: Sequence[Provider] = ()) -> Provider:
        """The provider for the next attempt of a request that already failed on `avoid`:
        the selected one while it is healthy, else the best other healthy one, else the one
        whose demotion ends first."""
        now = self.clock()
        if self.current not in avoid and self.healthy(self.current, now):
            return self.current
        usable = [p for p in self.providers if p.wrong_chain is None] or self.providers
        fresh = [p for p in usable if p not in avoid] or usable
        healthy = [p for p in fresh if self.healthy(p, now)]
        if healthy:
            best = min(healthy, key=lambda p: (self.score(p, now), p.index))
            self._select(best)
            return best
        return min(fresh, key=lambda p: (p.demoted_until, self.lag(p), p.index))

    def has_alternative(self, avoid: Sequence[Provider]) -> bool:
        """Whether a healthy provider not in `avoid` is left to try at once."""
        now = self.clock()
        return any(p not in avoid and self.healthy(p, now) for p in self.providers)

    def healthy_providers(self) -> list[Provider]:
        """The providers a send goes to: the healthy ones (the least bad when none is)."""
        now = self.clock()
        healthy = [p for p in self.providers if self.healthy(p, now)]
        return healthy or [self.choose()]

    def _reselect(self, now: float) -> None:
        """Move the selection to a clearly better healthy provider, if there is one."""
        candidates = [p for p in self.providers if self.healthy(p, now)]
        if not candidates:
            return
        best = min(candidates, key=lambda p: (self.score(p, now), p.index))
        current = self.current
        if not self.healthy(current, now) or (
            best is not current and self.score(best, now) + SWITCH_MARGIN < self.score(current, now)
        ):
            self._select(best)

    def _select(self, p: Provider) -> None:
        if p is self.current:
            return
        old, self.current = self.current, p
        log.info("rpc_provider_selected", provider=p.label, previous=old.label)
        self._publish(old)
        self._publish(p)

    def _publish(self, p: Provider) -> None:
        metrics.RPC_PROVIDER_SELECTED.labels(provider=p.label).set(int(p is self.current))
        metrics.RPC_PROVIDER_HEALTHY.labels(provider=p.label).set(int(self.healthy(p)))
        metrics.RPC_PROVIDER_HEAD_LAG.labels(provider=p.label).set(self.lag(p))

    # ------------------------------------------------------------------ finality

    def finalized_floor(self, depth: int) -> int | None:
        """The highest block every healthy provider has finalized (its tag, never closer than
        `depth` to its head); None with one provider or before any probe answered."""
        if not self.several:
            return None
        now = self.clock()
        known = [p for p in self.providers if self.healthy(p, now) and p.head is not None]
        if not known:
            return None
        floors = []
        for p in known:
            assert p.head is not None
            floor = p.head - depth
            tag = p.finalized_tag
            floors.append(max(floor if tag is None else min(tag, floor), -1))
        return min(floors)

    # ------------------------------------------------------------------ probes

    async def probe_forever(self, probe: Callable[[Provider], Awaitable[dict[str, Any]]]) -> None:
        """Probe every provider every `probe_interval` seconds (never with one provider).
        `probe(p)` returns {"chain_id", "head", "finalized"} or raises an `RpcError`."""
        if not self.several:
            return
        while True:
            try:
                await self.probe_all(probe)
            except Exception as exc:  # a probe round never stops the daemon
                log.error("rpc_probe_failed", error=secrets.scrub(repr(exc)))
            await anyio.sleep(self.probe_interval)

    async def probe_all(self, probe: Callable[[Provider], Awaitable[dict[str, Any]]]) -> None:
        """One round of probes, then a fresh look at the selection."""

        async def one(p: Provider) -> None:
            started = self.clock()
            try:
                seen = await probe(p)
            except RpcTransient as exc:
                self.failed(p, exc)
                return
            except RpcError as exc:
                p.last_error = secrets.scrub(exc.message)
                return
            self.succeeded(p, self.clock() - started)
            chain_id = seen.get("chain_id")
            expected = self.expected_chain_id
            if expected is not None and chain_id is not None and chain_id != expected:
                self.exclude(p, f"serves chain {chain_id}, not {expected}")
                return
            if p.wrong_chain is not None:
                log.warning("rpc_provider_restored", provider=p.label, chain_id=chain_id)
                p.wrong_chain = None
            self.saw_head(p, seen["head"], seen.get("finalized"))

        async with anyio.create_task_group() as tg:
            for p in self.providers:
                tg.start_soon(one, p)
        self._reselect(self.clock())
        for p in self.providers:
            self._publish(p)

    # ------------------------------------------------------------------ status

    def snapshot(self) -> list[dict[str, Any]]:
        """One line per provider for /status and `keeper status`."""
        now = self.clock()
        return [
            {
                "provider": p.label,
                "selected": p is self.current,
                "healthy": self.healthy(p, now),
                "head": p.head,
                "lag_blocks": self.lag(p),
                "latency_ms": None if p.latency is None else round(p.latency * 1000, 1),
                "requests": p.requests,
                "errors": dict(p.errors),
                "demoted_for_s": round(max(0.0, p.demoted_until - now), 1),
                "excluded": p.wrong_chain,
                "last_error": p.last_error,
            }
            for p in self.providers
        ]
