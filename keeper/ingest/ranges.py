"""Reading final history in wide `eth_getLogs` ranges that adapt to the provider's limits.

A provider refuses ranges too wide for it (in blocks or in results, `RangeTooLarge`): the range
shrinks to what it suggests or by half, and grows again while responses stay small, probing
slowly above the width it last refused (a limit on results moves with the density of events).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from keeper import metrics
from keeper.chain.rpc import BlockHeader, ChainClient, RangeTooLarge
from keeper.errors import KeeperError

GC_COLLECT_EVERY = 60.0  # seconds: a full collection during long backfills (the GC is paused)
PROBES_AT_CEILING = 8  # ranges read at the refused width before trying a little wider


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (as it was before, after).

    Parsing and decoding a range allocate hundreds of thousands of containers (log dicts,
    topic lists, row tuples) that live exactly as long as the range: the collector would only
    traverse them again and again (about a third of the JSON parse time). The backfill holds
    the pause throughout and collects explicitly now and then (GC_COLLECT_EVERY). The pause is
    process-wide: cyclic garbage of the daemon's other loops waits for that collection too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Range:
    """The logs of blocks [start, end.number], with the block times they do not carry."""

    start: int
    end: BlockHeader
    logs: list[dict[str, Any]]
    timestamps: dict[int, int]


def shrunk(start: int, end: int, exc: RangeTooLarge, min_range: int) -> int:
    """The width to try after the provider refused blocks [start, end] with `exc`."""
    size = end - start + 1
    if exc.suggested_to is not None and start <= exc.suggested_to < end:
        return max(exc.suggested_to - start + 1, min_range)
    if exc.max_blocks is not None and exc.max_blocks < size:
        return max(exc.max_blocks, min_range)
    if size <= min_range:
        raise exc  # cannot split further: a single block the provider refuses
    return max(size // 2, min_range)


class RangeReader:
    """Reads the contracts' logs in the widest ranges the provider accepts."""

    def __init__(
        self,
        client: ChainClient,
        addresses: list[str],
        *,
        initial: int,
        minimum: int,
        maximum: int,
        target_logs: int,
        logger: Any,
    ) -> None:
        self.client = client
        self.addresses = addresses
        self.minimum, self.maximum, self.target_logs = minimum, maximum, target_logs
        self.range = initial
        # What the provider refused last: growth stops below it, then probes upward slowly.
        self.ceiling = maximum
        self._at_ceiling = 0
        self.log = logger

    async def fetch(self, start: int, target: int) -> Range:
        """Logs of the widest range from `start` (up to `target`) the provider accepts."""
        while True:
            end = min(start + self.range - 1, target)
            try:
                logs = await self.client.get_logs(self.addresses, start, end)
            except RangeTooLarge as exc:
                self.range = shrunk(start, end, exc, self.minimum)
                self.ceiling = self.range
                self._at_ceiling = 0
                metrics.BACKFILL_RANGE.set(self.range)
                self.log.debug("range_shrunk", from_block=start, to_block=end, range=self.range)
                continue
            header = await self.client.header(end)
            if header is None:
                raise KeeperError(f"the node has no block {end} though it reported it final")
            timestamps = await self._missing_timestamps(logs)
            if self.range >= self.ceiling:
                self._at_ceiling += 1
                if self._at_ceiling >= PROBES_AT_CEILING:
                    self.ceiling = min(self.ceiling * 5 // 4 + 1, self.maximum)
                    self._at_ceiling = 0
            if len(logs) < self.target_logs // 2:
                self.range = min(self.range * 2, self.ceiling, self.maximum)
            elif len(logs) > self.target_logs:
                self.range = max(self.range // 2, self.minimum)
            metrics.BACKFILL_RANGE.set(self.range)
            return Range(start, header, logs, timestamps)

    async def _missing_timestamps(self, logs: Sequence[dict[str, Any]]) -> dict[int, int]:
        """Block timestamps for logs whose node did not include `blockTimestamp`."""
        missing = sorted(
            {int(lg["blockNumber"], 16) for lg in logs if not lg.get("blockTimestamp")}
        )
        if not missing:
            return {}
        headers = await self.client.headers(missing)
        return {h.number: h.timestamp for h in headers if h is not None}
