"""Containment of unexpected errors in the transaction manager, one intent at a time.

An error nothing expected while the manager handles one intent (sending it, assigning it,
following its receipts, checking its effects, purging or bumping it) must not stop the other
intents, the other lanes, or the daemon: a deterministic error would otherwise fail every pass,
and under systemd become a restart loop. `IntentFaults.contain` wraps the handling of one
intent at one stage; an error there is

- logged once as `intent_fault` with its traceback (a repeat of the same error is one line at
  debug level),
- counted in `keeper_tx_intent_faults_total{stage}`,
- recorded in `tx_faults` (the view `keeper.tx_faults`, `keeper status`, /status),
- and the intent is backed off: skipped by every stage until its retry time, which doubles with
  each failure from `base_delay` up to `max_delay`.

The next success of that intent at that stage clears the record. Outages (RPC or database
unreachable) are not faults of an intent: they go up to the loop, which waits them out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from keeper import metrics, secrets
from keeper.db.outbox import OutboxStore
from keeper.loops import OUTAGES, describe

log = structlog.get_logger(__name__)

STAGES = ("send", "assign", "receipts", "effects", "purge", "bump")
INTENT_FAULTS = Counter(
    "keeper_tx_intent_faults_total",
    "Unexpected errors contained while handling one intent, by stage; the intent is backed off "
    "and the rest of the outbox goes on (see the view keeper.tx_faults).",
    ["stage"],
    registry=metrics.REGISTRY,
)
for _stage in STAGES:
    INTENT_FAULTS.labels(stage=_stage)


@dataclass
class _Fault:
    stage: str
    text: str
    failures: int
    retry_at: float  # time.monotonic()


class IntentFaults:
    """The intents of one chain's manager that are backed off after an unexpected error."""

    def __init__(
        self,
        outbox: OutboxStore,
        chain_id: int,
        *,
        base_delay: float = 30.0,
        max_delay: float = 3600.0,
    ) -> None:
        self.outbox = outbox
        self.chain_id = chain_id
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._faults: dict[int, _Fault] = {}
        self.log = log.bind(chain_id=chain_id)

    def backed_off(self, intent_id: int) -> bool:
        """Whether `intent_id` waits out a fault (every stage skips it until then)."""
        fault = self._faults.get(int(intent_id))
        return fault is not None and time.monotonic() < fault.retry_at

    def __len__(self) -> int:
        return len(self._faults)

    @asynccontextmanager
    async def contain(self, intent_id: int, key: str, stage: str) -> AsyncIterator[None]:
        """Handle intent `intent_id` at `stage`; an unexpected error ends here (see above)."""
        intent_id = int(intent_id)
        try:
            yield
        except OUTAGES:
            raise
        except Exception as exc:
            await self._failed(intent_id, key, stage, exc)
        else:
            fault = self._faults.get(intent_id)
            if fault is not None and fault.stage == stage:
                del self._faults[intent_id]
                await self.outbox.clear_fault(intent_id, stage)
                self.log.info("intent_fault_cleared", intent=key, stage=stage)

    async def _failed(self, intent_id: int, key: str, stage: str, exc: Exception) -> None:
        previous = self._faults.get(intent_id)
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(self.base_delay * 2.0 ** (failures - 1), self.max_delay)
        text = secrets.scrub(describe(exc))  # stored, and read by processes that may not know it
        self._faults[intent_id] = _Fault(stage, text, failures, time.monotonic() + delay)
        INTENT_FAULTS.labels(stage=stage).inc()
        repeat = previous is not None and previous.text == text and previous.stage == stage
        fields: dict[str, Any] = {
            "intent": key,
            "stage": stage,
            "error": text,
            "failures": failures,
            "retry_in_s": delay,
        }
        if repeat:
            self.log.debug("intent_fault", **fields)
        else:
            self.log.error("intent_fault", unexpected=True, exc_info=exc, **fields)
        await self.outbox.record_fault(intent_id, stage, text, failures, delay)
