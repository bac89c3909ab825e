"""The transaction manager's durable outbox: intents and their signed attempts in Postgres.

Planners call `plan()`; an idempotency key that exists already is the typed outcome
`AlreadyPlanned`, not an error. Every state change is one UPDATE whose legality the database
itself checks (`intents_check_transition`), so a bug in the manager cannot move an intent
backwards or re-pin its nonce.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keeper.db import Conn
from keeper.db.queries import Queries, load_queries
from keeper.kinds import INTENT_KINDS


@dataclass(frozen=True)
class Planned:
    """A new intent was created."""

    intent_id: int
    key: str


@dataclass(frozen=True)
class AlreadyPlanned:
    """An intent with this idempotency key exists (whatever its state)."""

    intent_id: int
    key: str
    state: str


@dataclass(frozen=True)
class IntentRequest:
    """What a planner asks for: one call, identified by `key`."""

    kind: str
    key: str
    target: str
    calldata: bytes
    items: Sequence[Any] = ()
    value: int = 0
    urgent: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INTENT_KINDS:
            raise ValueError(f"intent kind must be one of {INTENT_KINDS}, got {self.kind!r}")
        if not 1 <= len(self.key) <= 200:
            raise ValueError("intent key must be 1 to 200 characters")
        if self.value < 0:
            raise ValueError("intent value must not be negative")


class Outbox:
    """Outbox operations for one chain."""

    def __init__(self, chain_id: int, queries: Queries | None = None) -> None:
        self.chain_id = chain_id
        self.q = queries or load_queries("outbox.sql")

    async def plan(self, conn: Conn, req: IntentRequest) -> Planned | AlreadyPlanned:
        """Create the intent, or report that its key is already planned."""
        intent_id = await conn.fetchval(
            self.q["insert_intent"],
            self.chain_id,
            req.kind,
            req.key,
            bytes.fromhex(req.target.removeprefix("0x")),
            req.calldata,
            req.value,
            json.dumps(list(req.items)),
            req.urgent,
        )
        if intent_id is not None:
            return Planned(int(intent_id), req.key)
        row = await conn.fetchrow(self.q["intent_by_key"], self.chain_id, req.key)
        assert row is not None, "the conflicting intent cannot vanish: intents are never deleted"
        return AlreadyPlanned(int(row["id"]), req.key, row["state"])

    async def next_nonce(self, conn: Conn, signer: bytes) -> int:
        """The next nonce of `signer`'s lane as far as the outbox knows."""
        return int(await conn.fetchval(self.q["lane_next_nonce"], self.chain_id, signer))

    async def in_flight(self, conn: Conn) -> dict[bytes, int]:
        """Assigned, unmined intents per signer."""
        rows = await conn.fetch(self.q["lane_in_flight"], self.chain_id)
        return {bytes(r["signer"]): int(r["in_flight"]) for r in rows}
