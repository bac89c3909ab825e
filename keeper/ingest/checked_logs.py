"""The follow zone's `eth_getLogs` answers, believed only once they agree with their blocks.

A provider behind a load balancer may answer `eth_getLogs` for a block its node has only just
seen with an empty or partial result. Before the follow zone stores a block's logs they are
checked against the headers already read (`keeper.ingest.logcheck`):

- a log of another block hash, or of a block outside the range, means the chain moved between
  the header and the log reads: nothing is stored, the next poll reads again (as a reorg race);
- a log the header's `logsBloom` cannot hold, or a bloom that says a watched contract emitted a
  watched event with no log returned, is an incomplete or wrong answer: the provider is
  demoted and the logs are asked again, of another provider when there is one, else of the
  same one after `recheck_delay`.

A bloom can say yes for an item that is not there (a false positive), so a "missing" verdict
is settled by the blocks' receipts (`eth_getBlockReceipts`, another code path of the node): if
no receipt holds a watched event the answer is taken (`bloom_false_positive`); if one does, the
answer was incomplete. Without `eth_getBlockReceipts` (Hardhat's node), the same logs from a
second provider settle it; one provider saying the same twice does not (its node may still miss
them), so with one such provider a doubtful block waits until it is final and the backfill
reads it, as it reads every final block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import anyio
from prometheus_client import Counter

from keeper import metrics
from keeper.chain.rpc import BlockHeader, ChainClient, RpcError
from keeper.ingest.logcheck import LogProblem, check_block_logs

LOGS_REJECTED = Counter(
    "keeper_logs_rejected_total",
    "eth_getLogs answers of the follow zone not stored, by what was wrong (block_hash, "
    "outside_range, not_in_bloom, missing_logs).",
    ["reason"],
    registry=metrics.REGISTRY,
)
for _reason in ("block_hash", "outside_range", "not_in_bloom", "missing_logs"):
    LOGS_REJECTED.labels(reason=_reason)
BLOOM_FALSE_POSITIVES = Counter(
    "keeper_logs_bloom_false_positives_total",
    "Blocks whose bloom named a watched event that two answers agreed was not there (taken).",
    registry=metrics.REGISTRY,
)

ASKS = 3  # answers asked for one range in one poll before waiting for the next
RACES = frozenset({"block_hash", "outside_range"})


def _key(log: dict[str, Any]) -> tuple[str, str, str]:
    return (str(log.get("blockHash")), str(log.get("transactionHash")), str(log.get("logIndex")))


def _index(log: dict[str, Any]) -> int:
    value = log.get("logIndex")
    return int(value, 16) if isinstance(value, str) else int(value or 0)


def _same(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> bool:
    return sorted(map(_key, a)) == sorted(map(_key, b))


class LogChecker:
    """Asks for the logs of a run of followed blocks until an answer can be believed."""

    def __init__(
        self,
        client: ChainClient,
        addresses: Sequence[str],
        topics0: Collection[str],
        *,
        check_blooms: bool,
        recheck_delay: float,
        log: Any,
    ) -> None:
        self.client = client
        self.addresses = list(addresses)
        self.topics0 = frozenset(t.lower() for t in topics0)
        self.check_blooms = check_blooms
        self.recheck_delay = recheck_delay
        self.log = log

    def problems(
        self, chain: Sequence[BlockHeader], logs: Sequence[dict[str, Any]]
    ) -> list[LogProblem]:
        """What is wrong with `logs` as the answer for `chain`'s blocks."""
        headers = chain if self.check_blooms else [_without_bloom(h) for h in chain]
        return check_block_logs(headers, logs, self.addresses, self.topics0)

    async def checked(
        self, chain: Sequence[BlockHeader], logs: list[dict[str, Any]]
    ) -> tuple[list[BlockHeader], list[dict[str, Any]]] | None:
        """The blocks of `chain` whose logs can be believed, from its first block on, with
        their logs: all of `chain` with `logs` (its first answer) or a later answer, or the
        blocks before the first one that could not be believed; None when the chain moved
        meanwhile or not even the first block could be believed this poll."""
        first, last = chain[0].number, chain[-1].number
        for asked in range(1, ASKS + 1):
            problems = self.problems(chain, logs)
            if not problems:
                return list(chain), logs
            reasons = sorted({p.reason for p in problems})
            blocks = sorted({p.block for p in problems})
            if RACES & set(reasons):
                self._count(problems)
                self.log.info("follow_raced_reorg", block=blocks[0], reasons=reasons)
                return None
            verdict = None
            if reasons == ["missing_logs"]:
                verdict = await self._receipts_hold_more(chain, blocks, logs)
                if verdict is False:
                    BLOOM_FALSE_POSITIVES.inc(len(blocks))
                    self.log.info("bloom_false_positive", blocks=blocks[:10])
                    return list(chain), logs
            self._count(problems)
            source = getattr(logs, "provider", None)
            self.log.warning(
                "logs_rejected",
                reasons=reasons,
                blocks=blocks[:10],
                provider=source,
                detail=problems[0].detail,
                asked=asked,
            )
            self.client.blame(source, "incomplete_logs", f"eth_getLogs {first}-{last}: {reasons}")
            if blocks[0] > first:
                # The blocks before the first doubtful one are taken; the rest is read again
                # at the next poll (of another provider, when there is one).
                return (
                    [h for h in chain if h.number < blocks[0]],
                    [lg for lg in logs if int(lg["blockNumber"], 16) < blocks[0]],
                )
            if asked == ASKS:
                return None
            if not self.client.several:
                await anyio.sleep(self.recheck_delay)
            again = await self.client.get_logs(self.addresses, first, last)
            other = getattr(again, "provider", None)
            if (
                verdict is None
                and reasons == ["missing_logs"]
                and other is not None
                and other != source
                and _same(again, logs)
            ):
                # No receipts to ask: two providers agree that the logs the bloom suggests are
                # not there.
                BLOOM_FALSE_POSITIVES.inc(len(blocks))
                self.log.info("bloom_false_positive", blocks=blocks[:10], by=f"{source}+{other}")
                return list(chain), again
            logs = again
        return None

    @staticmethod
    def _count(problems: Sequence[LogProblem]) -> None:
        for p in problems:
            LOGS_REJECTED.labels(reason=p.reason).inc()

    async def _receipts_hold_more(
        self, chain: Sequence[BlockHeader], blocks: Sequence[int], logs: Sequence[dict[str, Any]]
    ) -> bool | None:
        """Whether the receipts of `blocks` hold a watched event that `logs` lacks (True: the
        answer was incomplete; False: the bloom gave a false positive); None when the node
        cannot say (no `eth_getBlockReceipts`, or it does not know the block)."""
        hashes = {h.number: h.hash.lower() for h in chain}
        watched = {a.lower() for a in self.addresses}
        answered = {(str(lg.get("transactionHash")).lower(), _index(lg)) for lg in logs}
        for number in blocks:
            try:
                receipts = await self.client.request("eth_getBlockReceipts", [hex(number)])
            except RpcError:
                return None
            if not isinstance(receipts, list):
                return None
            for receipt in receipts:
                if str(receipt.get("blockHash", "")).lower() != hashes.get(number):
                    return None  # another block by that number now: the next poll sees it
                for lg in receipt.get("logs") or ():
                    topics = lg.get("topics") or [""]
                    if (
                        str(lg.get("address", "")).lower() in watched
                        and (not self.topics0 or str(topics[0]).lower() in self.topics0)
                        and (str(lg.get("transactionHash")).lower(), _index(lg)) not in answered
                    ):
                        return True
        return False


def _without_bloom(header: BlockHeader) -> BlockHeader:
    return dataclasses.replace(header, logs_bloom=None)
