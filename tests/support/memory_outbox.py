"""An outbox in memory, with the rules the database enforces, for fast unit tests of the manager.

It implements `keeper.db.outbox.OutboxStore` (mypy holds it to the protocol where a test passes
it to `TxManager`) and keeps what the schema keeps: the state machine of intents (a change
happens only from the state the SQL's WHERE names, and says whether it did), one live intent per
signer and nonce, unique attempt hashes (`attempts_tx_hash_key`), and the lane's next nonce.
`tests/integration` runs the same manager against PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from keeper.db.outbox import SignAt
from keeper.db.outbox_rows import (
    Attempt,
    Call,
    ConfirmedBatch,
    ItemEffect,
    ItemOutcome,
    MinedReceipt,
    OpenIntent,
    PlannedIntent,
    Signed,
    StoredSend,
)
from keeper.kinds import ItemRef, item_ref


class IntegrityError(Exception):
    """What the database would refuse (a unique key or a check)."""


@dataclass
class Intent:
    id: int
    kind: str
    key: str
    call: Call
    items: list[Any]
    urgent: bool
    state: str = "planned"
    reason: str | None = None
    signer: bytes | None = None
    nonce: int | None = None
    gas_limit: int | None = None
    receipt: MinedReceipt | None = None
    mined_at: datetime | None = None
    effects_checked: bool = False


@dataclass
class StoredAttempt:
    id: int
    intent_id: int
    signed: Signed
    state: str = "signed"
    broadcast_block: int | None = None
    broadcasts: int = 0
    last_error: str | None = None
    last_outcome: str | None = None


@dataclass
class MemoryOutbox:
    """The outbox of one chain, in dicts."""

    intents: dict[int, Intent] = field(default_factory=dict)
    attempts: dict[int, StoredAttempt] = field(default_factory=dict)
    # Each checked or reverted item's (outcome, detail), per (intent id, item).
    items: dict[tuple[int, ItemRef], tuple[str, str | None]] = field(default_factory=dict)
    faults: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    signer_states: dict[bytes, tuple[int, bool]] = field(default_factory=dict)
    # What the effects query answers per (intent id, item): (effect, skip reason).
    effects: dict[tuple[int, ItemRef], tuple[bool, int | None]] = field(default_factory=dict)

    # ------------------------------------------------------------------ for tests

    def plan(
        self, kind: str, key: str, call: Call, items: Sequence[Any] = (), urgent: bool = False
    ) -> int:
        if any(i.key == key for i in self.intents.values()):
            raise IntegrityError(f"intents (chain_id, key): {key} exists")
        intent_id = len(self.intents) + 1
        self.intents[intent_id] = Intent(intent_id, kind, key, call, list(items), urgent)
        return intent_id

    def attempts_of(self, intent_id: int) -> list[StoredAttempt]:
        return [a for a in self.attempts.values() if a.intent_id == intent_id]

    # ------------------------------------------------------------------ reads

    async def planned(self, limit: int) -> list[PlannedIntent]:
        rows = sorted(
            (i for i in self.intents.values() if i.state == "planned"),
            key=lambda i: (not i.urgent, i.id),
        )
        return [PlannedIntent(i.id, i.kind, i.key, i.call, list(i.items), i.urgent) for i in rows][
            :limit
        ]

    async def in_flight(self) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        for i in self.intents.values():
            if i.state == "assigned" and i.signer is not None:
                found[i.signer] = found.get(i.signer, 0) + 1
        return found

    async def spent_since(self, since: datetime) -> int:
        return sum(
            r.gas_used * r.effective_gas_price + (r.l1_fee or 0)
            for i in self.intents.values()
            if (r := i.receipt) is not None and i.mined_at is not None and i.mined_at >= since
        )

    async def worst_case_in_flight(self) -> int:
        total = 0
        for i in self.intents.values():
            if i.state == "assigned":
                latest = max(self.attempts_of(i.id), key=lambda a: a.id)
                total += latest.signed.gas_limit * latest.signed.max_fee
        return total

    def _sends(self, rows: list[StoredAttempt]) -> list[StoredSend]:
        rows.sort(key=lambda a: (a.signed.signer, a.signed.nonce, a.id))
        return [
            StoredSend(a.id, a.intent_id, self.intents[a.intent_id].key, a.signed.raw) for a in rows
        ]

    async def unsent(self) -> list[StoredSend]:
        return self._sends(
            [a for a in self.attempts.values() if a.state == "signed" and self._assigned(a)]
        )

    async def unsure(self, attempt_ids: Sequence[int]) -> list[StoredSend]:
        wanted = set(attempt_ids)
        return self._sends(
            [
                a
                for a in self.attempts.values()
                if a.id in wanted and a.state == "broadcast" and self._assigned(a)
            ]
        )

    def _assigned(self, a: StoredAttempt) -> bool:
        return self.intents[a.intent_id].state == "assigned"

    async def latest_attempts(self) -> list[Attempt]:
        found = []
        for i in sorted(self.intents.values(), key=lambda i: i.id):
            if i.state != "assigned":
                continue
            mine = self.attempts_of(i.id)
            latest = max(mine, key=lambda a: a.id)
            sent = [a.broadcast_block for a in mine if a.broadcast_block is not None]
            found.append(
                Attempt(
                    latest.id,
                    i.id,
                    i.kind,
                    i.key,
                    i.call,
                    latest.signed,
                    latest.broadcast_block,
                    min(sent) if sent else None,
                )
            )
        return found

    async def open_intents(self) -> list[OpenIntent]:
        rows = sorted(
            (i for i in self.intents.values() if i.state in ("assigned", "mined", "confirmed")),
            key=lambda i: (i.signer or b"", i.nonce or 0),
        )
        return [
            OpenIntent(
                i.id,
                i.kind,
                i.key,
                i.state,
                i.signer or b"",
                i.nonce or 0,
                i.gas_limit or 0,
                i.call,
                list(i.items),
                None if i.receipt is None else i.receipt.block_number,
                None if i.receipt is None else i.receipt.block_hash,
            )
            for i in rows
        ]

    async def attempt_hashes(self) -> dict[int, list[bytes]]:
        found: dict[int, list[bytes]] = {}
        for a in self.attempts.values():
            if self.intents[a.intent_id].state in ("assigned", "mined", "confirmed"):
                found.setdefault(a.intent_id, []).append(a.signed.tx_hash)
        return found

    async def effects_due(self) -> list[ConfirmedBatch]:
        return [
            ConfirmedBatch(i.id, i.kind, i.key, i.receipt.tx_hash, i.receipt.block_number)
            for i in self.intents.values()
            if i.state in ("confirmed", "final")
            and not i.effects_checked
            and i.kind in ("settle", "refund", "usage")
            and i.receipt is not None
            and i.receipt.status == 1
        ]

    async def item_effects(self, query: str, batch: ConfirmedBatch) -> list[ItemEffect]:
        refs = [item_ref(batch.kind, i) for i in self.intents[batch.id].items]
        return [ItemEffect(r, *self.effects.get((batch.id, r), (True, None))) for r in refs]

    # ------------------------------------------------------------------ changes

    async def save_signer_states(self, states: Sequence[tuple[bytes, int, bool]]) -> None:
        for signer, balance, low in states:
            self.signer_states[signer] = (balance, low)

    def _next_nonce(self, signer: bytes) -> int:
        nonces = [
            i.nonce
            for i in self.intents.values()
            if i.signer == signer and i.nonce is not None and i.state != "replan"
        ]
        return max(nonces) + 1 if nonces else 0

    def _pin(self, intent: Intent, signer: bytes, nonce: int, gas_limit: int) -> None:
        for other in self.intents.values():
            live = other.state not in ("replan", "failed")
            if other is not intent and live and (other.signer, other.nonce) == (signer, nonce):
                raise IntegrityError(f"one live intent per signer and nonce: {nonce} is taken")
        intent.state, intent.signer, intent.nonce, intent.gas_limit = (
            "assigned",
            signer,
            nonce,
            gas_limit,
        )

    def _insert_attempt(self, intent_id: int, signed: Signed) -> int:
        if any(a.signed.tx_hash == signed.tx_hash for a in self.attempts.values()):
            raise IntegrityError("duplicate key value violates attempts_tx_hash_key")
        attempt_id = len(self.attempts) + 1
        self.attempts[attempt_id] = StoredAttempt(attempt_id, intent_id, signed)
        return attempt_id

    async def assign(
        self, intent_id: int, signer: bytes, gas_limit: int, sign: SignAt
    ) -> tuple[int, Signed] | None:
        signed = await sign(self._next_nonce(signer))
        intent = self.intents[intent_id]
        if intent.state != "planned":
            return None
        self._pin(intent, signer, signed.nonce, gas_limit)
        return self._insert_attempt(intent_id, signed), signed

    async def add_attempt(self, intent_id: int, signed: Signed) -> int:
        return self._insert_attempt(intent_id, signed)

    async def mark_broadcast(
        self, attempt_id: int, block: int, error: str | None, outcome: str | None
    ) -> None:
        a = self.attempts[attempt_id]
        a.last_outcome = outcome
        a.state = "broadcast" if a.state == "signed" else a.state
        a.broadcast_block = block if a.broadcast_block is None else a.broadcast_block
        a.broadcasts += 1
        a.last_error = error

    async def record_send_error(
        self, attempt_id: int, error: str | None, outcome: str | None
    ) -> None:
        self.attempts[attempt_id].last_error = error
        self.attempts[attempt_id].last_outcome = outcome

    def _move(self, intent_id: int, start: str, end: str) -> bool:
        intent = self.intents[intent_id]
        if intent.state != start:
            return False
        intent.state = end
        return True

    async def record_mined(self, intent_id: int, receipt: MinedReceipt) -> bool:
        if not self._move(intent_id, "assigned", "mined"):
            return False
        intent = self.intents[intent_id]
        intent.receipt, intent.mined_at = receipt, datetime.now(UTC)
        for a in self.attempts_of(intent_id):
            if a.signed.tx_hash == receipt.tx_hash:
                a.state = "mined"
            elif a.state in ("signed", "broadcast"):
                a.state = "superseded"
        return True

    async def unmine(self, intent_id: int, state: str) -> bool:
        if state not in ("mined", "confirmed") or not self._move(intent_id, state, "assigned"):
            return False
        intent = self.intents[intent_id]
        intent.receipt, intent.mined_at, intent.effects_checked = None, None, False
        for a in self.attempts_of(intent_id):
            a.state = "broadcast" if a.state == "mined" else a.state
        for key in [k for k, v in self.items.items() if k[0] == intent_id and v[0] != "reverted"]:
            del self.items[key]
        return True

    async def confirm(self, intent_id: int) -> bool:
        return self._move(intent_id, "mined", "confirmed")

    async def finalize(self, intent_id: int) -> bool:
        return self._move(intent_id, "confirmed", "final")

    async def fail(self, intent_id: int, reason: str, reverted: Sequence[ItemOutcome]) -> None:
        self._record(intent_id, "reverted", reverted)
        self.intents[intent_id].state = "failed"
        self.intents[intent_id].reason = reason

    async def replan(self, intent_id: int, reason: str) -> bool:
        if not self._move(intent_id, "assigned", "replan"):
            return False
        self.intents[intent_id].reason = reason
        return True

    async def purge(self, intent_id: int, reason: str, key: str, signed: Signed) -> int | None:
        if not await self.replan(intent_id, reason):
            return None
        for a in self.attempts_of(intent_id):
            a.state = "superseded" if a.state in ("signed", "broadcast") else a.state
        purge_id = self.plan("purge", key, Call(signed.signer, b"", 0), urgent=True)
        self._pin(self.intents[purge_id], signed.signer, signed.nonce, signed.gas_limit)
        return self._insert_attempt(purge_id, signed)

    async def rewrite_batch(
        self,
        intent_id: int,
        calldata: bytes,
        items: Sequence[Any],
        reason: str,
        reverted: Sequence[ItemOutcome] = (),
    ) -> bool:
        intent = self.intents[intent_id]
        if intent.state != "planned":
            return False
        intent.call = replace(intent.call, calldata=calldata)
        intent.items, intent.reason = list(items), reason
        self._record(intent_id, "reverted", reverted)
        return True

    async def note_planned(self, intent_id: int, note: str) -> None:
        if self.intents[intent_id].state == "planned":
            self.intents[intent_id].reason = note

    async def record_effects(
        self, intent_id: int, outcomes: Mapping[str, Sequence[ItemOutcome]]
    ) -> None:
        for outcome, items in outcomes.items():
            self._record(intent_id, outcome, items)
        self.intents[intent_id].effects_checked = True

    def _record(self, intent_id: int, outcome: str, items: Sequence[ItemOutcome]) -> None:
        for item, detail in items:
            self.items[(intent_id, item)] = (outcome, detail)

    async def record_fault(
        self, intent_id: int, stage: str, error: str, failures: int, delay: float
    ) -> None:
        self.faults[intent_id] = (stage, error, failures)

    async def clear_fault(self, intent_id: int, stage: str) -> None:
        if self.faults.get(intent_id, ("",))[0] == stage:
            del self.faults[intent_id]
