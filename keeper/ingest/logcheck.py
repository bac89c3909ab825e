"""Whether an `eth_getLogs` answer agrees with the headers of its blocks (pure; see
`keeper.ingest.checked_logs` for what the follow zone does about it).

Reasons a block's answer is not believed:

- `block_hash`: a log names the block's number with another hash (the answer mixes chains);
- `outside_range`: a log of a block that was not asked for;
- `not_in_bloom`: a log whose address or a topic is not in its block's `logsBloom` (the block
  cannot hold it);
- `missing_logs`: the bloom holds a watched address and one of the watched event signatures,
  but no log of that address came back for the block: an incomplete answer, or a false
  positive of the bloom, which only a second answer can tell apart.

Headers without a bloom (`logs_bloom` None) get the hash checks only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from keeper.chain.bloom import Bloom
from keeper.chain.rpc import BlockHeader


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One block's answer that cannot be believed, and why."""

    block: int
    reason: str
    detail: str


def _bytes(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def check_block_logs(
    headers: Sequence[BlockHeader],
    logs: Sequence[dict[str, Any]],
    addresses: Sequence[str],
    topics0: Collection[str] | None,
) -> list[LogProblem]:
    """The problems of `logs` as the answer for `headers`' blocks and the watched `addresses`
    (and, when given, event signatures `topics0`); empty when it can be believed."""
    by_number = {h.number: h for h in headers}
    blooms = {h.number: Bloom.from_hex(h.logs_bloom) for h in headers if h.logs_bloom}
    problems: list[LogProblem] = []
    returned: dict[int, set[str]] = {}
    for log in logs:
        number = int(log["blockNumber"], 16)
        header = by_number.get(number)
        if header is None:
            problems.append(LogProblem(number, "outside_range", "a log of a block not asked for"))
            continue
        if str(log.get("blockHash", "")).lower() != header.hash.lower():
            problems.append(
                LogProblem(number, "block_hash", f"a log of block hash {log.get('blockHash')}")
            )
            continue
        address = str(log["address"]).lower()
        returned.setdefault(number, set()).add(address)
        bloom = blooms.get(number)
        if bloom is None:
            continue
        items = [_bytes(address), *(_bytes(t) for t in log.get("topics") or ())]
        if not all(item in bloom for item in items):
            problems.append(
                LogProblem(number, "not_in_bloom", f"a log of {address} the bloom does not hold")
            )
    watched = [(a.lower(), _bytes(a)) for a in addresses]
    signatures = [_bytes(t) for t in topics0] if topics0 else []
    for number, bloom in blooms.items():
        if bloom.empty:
            continue
        seen = returned.get(number, set())
        for text, raw in watched:
            if text in seen or raw not in bloom:
                continue
            if signatures and not any(sig in bloom for sig in signatures):
                continue
            problems.append(
                LogProblem(number, "missing_logs", f"the bloom holds {text}, no log of it came")
            )
    return problems
