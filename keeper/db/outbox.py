"""The outbox: intents, their signed attempts and their items, in Postgres.

Every query on `intents`, `attempts`, `batch_items` and `tx_faults` goes through this module
(`sql/outbox.sql`). Planners call `plan()` inside their own transaction; an idempotency key that
exists already is the typed outcome `AlreadyPlanned`, not an error. The transaction manager uses
the rest: reads return the dataclasses of `keeper.db.outbox_rows`, and a state change returns
whether it happened (False: another manager moved the intent first, or it was no longer in the
state the change starts from). The database itself checks each transition
(`intents_check_transition`), so a bug cannot move an intent backwards or re-pin its nonce.

`OutboxStore` is what the manager needs of an outbox; the unit tests drive the manager with an
in-memory one (`tests/support/memory_outbox.py`) that keeps the same rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from keeper.db import Conn
from keeper.db.outbox_rows import (
    AlreadyPlanned,
    Attempt,
    ConfirmedBatch,
    IntentRequest,
    ItemEffect,
    ItemOutcome,
    MinedReceipt,
    OpenIntent,
    Planned,
    PlannedIntent,
    Signed,
    StoredSend,
    attempt,
    confirmed_batch,
    first_claims,
    int_or_none,
    item_arrays,
    open_intent,
    planned_intent,
    stored_send,
)
from keeper.db.queries import Queries, load_queries
from keeper.kinds import item_of_columns, item_ref

__all__ = [  # the planners' side is re-exported; the manager imports the rows from outbox_rows
    "AlreadyPlanned",
    "IntentRequest",
    "Outbox",
    "OutboxStore",
    "Planned",
    "lane_lock_key",
]

PURGE_KIND = "purge"


def lane_lock_key(chain_id: int, signer: bytes) -> int:
    """The advisory lock key of a signer's nonce lane (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-lane" + chain_id.to_bytes(8, "big") + signer).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _changed(status: str) -> bool:
    """Whether a one-row UPDATE found its row (asyncpg's command status)."""
    return status == "UPDATE 1"


# Given the outbox's next nonce of the lane, sign the attempt (the nonce may be higher).
SignAt = Callable[[int], Awaitable[Signed]]


class OutboxStore(Protocol):
    """What the transaction manager does with its outbox."""

    async def planned(self, limit: int) -> list[PlannedIntent]: ...
    async def in_flight(self) -> dict[bytes, int]: ...
    async def spent_since(self, since: datetime) -> int: ...
    async def worst_case_in_flight(self) -> int: ...
    async def save_signer_states(self, states: Sequence[tuple[bytes, int, bool]]) -> None: ...
    async def assign(
        self, intent_id: int, signer: bytes, gas_limit: int, sign: SignAt
    ) -> tuple[int, Signed] | None: ...
    async def add_attempt(self, intent_id: int, signed: Signed) -> int: ...
    async def mark_broadcast(
        self, attempt_id: int, block: int, error: str | None, outcome: str | None
    ) -> None: ...
    async def record_send_error(
        self, attempt_id: int, error: str | None, outcome: str | None
    ) -> None: ...
    async def unsent(self) -> list[StoredSend]: ...
    async def unsure(self, attempt_ids: Sequence[int]) -> list[StoredSend]: ...
    async def latest_attempts(self) -> list[Attempt]: ...
    async def open_intents(self) -> list[OpenIntent]: ...
    async def attempt_hashes(self) -> dict[int, list[bytes]]: ...
    async def record_mined(self, intent_id: int, receipt: MinedReceipt) -> bool: ...
    async def unmine(self, intent_id: int, state: str) -> bool: ...
    async def confirm(self, intent_id: int) -> bool: ...
    async def finalize(self, intent_id: int) -> bool: ...
    async def fail(self, intent_id: int, reason: str, reverted: Sequence[ItemOutcome]) -> None: ...
    async def replan(self, intent_id: int, reason: str) -> bool: ...
    async def purge(self, intent_id: int, reason: str, key: str, signed: Signed) -> int | None: ...
    async def rewrite_batch(
        self,
        intent_id: int,
        calldata: bytes,
        items: Sequence[Any],
        reason: str,
        reverted: Sequence[ItemOutcome] = (),
    ) -> bool: ...
    async def note_planned(self, intent_id: int, note: str) -> None: ...
    async def effects_due(self) -> list[ConfirmedBatch]: ...
    async def item_effects(self, query: str, batch: ConfirmedBatch) -> list[ItemEffect]: ...
    async def record_effects(
        self, intent_id: int, outcomes: Mapping[str, Sequence[ItemOutcome]]
    ) -> None: ...
    async def record_fault(
        self, intent_id: int, stage: str, error: str, failures: int, delay: float
    ) -> None: ...
    async def clear_fault(self, intent_id: int, stage: str) -> None: ...


class Outbox:
    """The outbox of one chain (`pool` is needed by everything but `plan`)."""

    def __init__(
        self, chain_id: int, pool: asyncpg.Pool | None = None, queries: Queries | None = None
    ) -> None:
        self.chain_id = chain_id
        self._pool = pool
        self.q = queries or load_queries("outbox.sql")

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("this outbox was made without a pool: it can only plan")
        return self._pool

    # ------------------------------------------------------------------ planning

    async def plan(self, conn: Conn, req: IntentRequest) -> Planned | AlreadyPlanned:
        """Create the intent, or report that its key is already planned."""
        (outcome,) = await self.plan_all(conn, [req])
        return outcome

    async def plan_all(
        self, conn: Conn, reqs: Sequence[IntentRequest]
    ) -> list[Planned | AlreadyPlanned]:
        """`plan` each request in order, in three statements whatever their number (a planning
        pass plans hundreds of intents with thousands of items): the intents, those whose key
        was planned already (when any), the items of the new ones."""
        if not reqs:
            return []
        inserted = {
            r["key"]: int(r["id"])
            for r in await conn.fetch(
                self.q["insert_intents"],
                self.chain_id,
                [r.kind for r in reqs],
                [r.key for r in reqs],
                [bytes.fromhex(r.target.removeprefix("0x")) for r in reqs],
                [r.calldata for r in reqs],
                [str(r.value) for r in reqs],
                [r.urgent for r in reqs],
            )
        }
        created = first_claims([r.key for r in reqs], inserted)
        others = [r.key for r, new in zip(reqs, created, strict=True) if not new]
        existing = {
            r["key"]: AlreadyPlanned(int(r["id"]), r["key"], r["state"])
            for r in (
                await conn.fetch(self.q["intents_by_keys"], self.chain_id, others) if others else ()
            )
        }
        outcomes: list[Planned | AlreadyPlanned] = []
        for req, new in zip(reqs, created, strict=True):
            if new:
                outcomes.append(Planned(inserted[req.key], req.key))
            else:
                assert req.key in existing, "a conflicting intent cannot vanish: none is deleted"
                outcomes.append(existing[req.key])
        count, columns = item_arrays(
            (inserted[r.key], r.kind, r.items) for r, new in zip(reqs, created, strict=True) if new
        )
        if count:
            await conn.execute(self.q["insert_items"], self.chain_id, *columns)
        return outcomes

    # ------------------------------------------------------------------ reads

    async def _fetch(self, name: str, *args: Any) -> list[Any]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(self.q[name], self.chain_id, *args))

    async def _value(self, name: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(self.q[name], self.chain_id, *args)

    async def planned(self, limit: int) -> list[PlannedIntent]:
        """Planned intents, urgent first, then oldest first."""
        rows = await self._fetch("planned_intents", limit)
        items = await self._items(rows)
        return [planned_intent(r, items.get(r["id"], [])) for r in rows]

    async def _items(self, intents: Sequence[Mapping[str, Any]]) -> dict[int, list[Any]]:
        """The items still in the batches of `intents` (rows with `id`), in order."""
        found: dict[int, list[Any]] = {}
        ids = [int(r["id"]) for r in intents]
        for row in await self._fetch("items_of_intents", ids) if ids else []:
            columns = (
                int(row["entity"]),
                int_or_none(row["seq"]),
                int_or_none(row["units"]),
                int_or_none(row["endpoint"]),
            )
            found.setdefault(int(row["intent_id"]), []).append(
                item_of_columns(row["kind"], columns)
            )
        return found

    async def in_flight(self) -> dict[bytes, int]:
        """Assigned, unmined intents per signer."""
        rows = await self._fetch("lane_in_flight")
        return {bytes(r["signer"]): int(r["in_flight"]) for r in rows}

    async def next_nonce(self, conn: Conn, signer: bytes) -> int:
        """The next nonce of `signer`'s lane as far as the outbox knows."""
        return int(await conn.fetchval(self.q["lane_next_nonce"], self.chain_id, signer))

    async def spent_since(self, since: datetime) -> int:
        """Gas paid (and an L2's L1 fee) by intents mined since `since`, in wei."""
        return int(await self._value("spent_since", since))

    async def worst_case_in_flight(self) -> int:
        """The most the assigned, unmined intents can still cost (gas limit x max fee)."""
        return int(await self._value("in_flight_worst_case"))

    async def unsent(self) -> list[StoredSend]:
        """Attempts signed but never sent (a crash between storing and sending)."""
        return [stored_send(r) for r in await self._fetch("unsent_attempts")]

    async def unsure(self, attempt_ids: Sequence[int]) -> list[StoredSend]:
        """Those of `attempt_ids` still broadcast for an assigned intent."""
        return [stored_send(r) for r in await self._fetch("unsure_attempts", list(attempt_ids))]

    async def latest_attempts(self) -> list[Attempt]:
        """The newest attempt of every assigned intent."""
        return [attempt(r) for r in await self._fetch("latest_attempts")]

    async def open_intents(self) -> list[OpenIntent]:
        """Intents sent and not final, by signer and nonce."""
        rows = await self._fetch("open_intents")
        items = await self._items(rows)
        return [open_intent(r, items.get(r["id"], [])) for r in rows]

    async def attempt_hashes(self) -> dict[int, list[bytes]]:
        """Every attempt's hash of the open intents, per intent."""
        found: dict[int, list[bytes]] = {}
        for row in await self._fetch("all_attempt_hashes"):
            found.setdefault(int(row["intent_id"]), []).append(bytes(row["tx_hash"]))
        return found

    async def effects_due(self) -> list[ConfirmedBatch]:
        """Confirmed batches whose effects were not checked, once the index has their block."""
        return [confirmed_batch(r) for r in await self._fetch("effects_due")]

    async def item_effects(self, query: str, batch: ConfirmedBatch) -> list[ItemEffect]:
        """Each item of `batch` against the indexed events of its transaction, by the kind's
        effects query `query`."""
        return [
            ItemEffect(
                (int(r["entity"]), int_or_none(r["seq"])),
                bool(r["effect"]),
                int_or_none(r["skip_reason"]),
            )
            for r in await self._fetch(query, batch.id)
        ]

    # ------------------------------------------------------------------ changes

    async def save_signer_states(self, states: Sequence[tuple[bytes, int, bool]]) -> None:
        """Each signer's (address, balance, below the minimum) as of this pass."""
        async with self.pool.acquire() as conn:
            await conn.executemany(
                self.q["upsert_signer_state"],
                [(self.chain_id, s, Decimal(balance), low) for s, balance, low in states],
            )

    async def assign(
        self, intent_id: int, signer: bytes, gas_limit: int, sign: SignAt
    ) -> tuple[int, Signed] | None:
        """Pin a planned intent to `signer` and store its first attempt, in one transaction under
        the lane's lock (across processes: one assignment per lane at a time). `sign` gets the
        outbox's next nonce of the lane and signs. Returns (attempt id, what was signed), or
        None when the intent was taken meanwhile (nothing is stored then)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(self.q["lock_lane"], lane_lock_key(self.chain_id, signer))
            signed = await sign(await self.next_nonce(conn, signer))
            status = await conn.execute(
                self.q["assign_intent"], intent_id, signer, signed.nonce, gas_limit
            )
            if not _changed(status):
                return None
            return await self._insert_attempt(conn, intent_id, signed), signed

    async def _insert_attempt(self, conn: Conn, intent_id: int, signed: Signed) -> int:
        return int(
            await conn.fetchval(
                self.q["insert_attempt"],
                intent_id,
                self.chain_id,
                signed.signer,
                signed.nonce,
                signed.max_fee,
                signed.priority_fee,
                signed.legacy,
                signed.gas_limit,
                signed.raw,
                signed.tx_hash,
            )
        )

    async def add_attempt(self, intent_id: int, signed: Signed) -> int:
        """Store another attempt (a fee bump) of an assigned intent."""
        async with self.pool.acquire() as conn:
            return await self._insert_attempt(conn, intent_id, signed)

    async def mark_broadcast(
        self, attempt_id: int, block: int, error: str | None, outcome: str | None
    ) -> None:
        """The attempt was sent at `block` (the node's answer `error` and what it means,
        `outcome`, kept when it was not a plain acceptance)."""
        await self._change("mark_broadcast", attempt_id, block, error, outcome)

    async def record_send_error(
        self, attempt_id: int, error: str | None, outcome: str | None
    ) -> None:
        """The node refused the attempt for now: its answer is kept, its state unchanged."""
        await self._change("record_send_error", attempt_id, error, outcome)

    async def record_mined(self, intent_id: int, receipt: MinedReceipt) -> bool:
        """An assigned intent's attempt was mined: its receipt recorded, its other attempts
        superseded."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                self.q["mark_mined"],
                intent_id,
                receipt.tx_hash,
                receipt.block_number,
                receipt.block_hash,
                receipt.status,
                receipt.gas_used,
                receipt.effective_gas_price,
                receipt.l1_fee,
            )
            if not _changed(status):
                return False
            await conn.execute(self.q["attempt_mined"], receipt.tx_hash)
            await conn.execute(self.q["attempts_superseded"], intent_id, receipt.tx_hash)
            return True

    async def unmine(self, intent_id: int, state: str) -> bool:
        """The intent's receipt left the chain: back to `assigned` (from `state`), its checked
        effects forgotten."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not _changed(await conn.execute(self.q["unmine"], intent_id, state)):
                return False
            await conn.execute(self.q["unmine_attempts"], intent_id)
            await conn.execute(self.q["forget_effects"], intent_id)
            return True

    async def _change(self, name: str, *args: Any) -> bool:
        async with self.pool.acquire() as conn:
            return _changed(await conn.execute(self.q[name], *args))

    async def confirm(self, intent_id: int) -> bool:
        """mined -> confirmed."""
        return await self._change("mark_confirmed", intent_id)

    async def finalize(self, intent_id: int) -> bool:
        """confirmed -> final."""
        return await self._change("mark_final", intent_id)

    async def replan(self, intent_id: int, reason: str) -> bool:
        """assigned -> replan: its items are planned again."""
        return await self._change("mark_replan", intent_id, reason)

    async def fail(self, intent_id: int, reason: str, reverted: Sequence[ItemOutcome]) -> None:
        """The intent failed with `reason`; `reverted` items recorded with theirs."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._record_items(conn, intent_id, "reverted", reverted)
            await conn.execute(self.q["fail_intent"], intent_id, reason)

    async def purge(self, intent_id: int, reason: str, key: str, signed: Signed) -> int | None:
        """Give the nonce of assigned intent `intent_id` to a zero-value self-send (an intent of
        kind `purge` with key `key`, `signed` at that nonce); the intent goes to `replan` with
        `reason`. Returns the purge's attempt id, None when the intent was no longer assigned."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not _changed(await conn.execute(self.q["mark_replan"], intent_id, reason)):
                return None
            await conn.execute(self.q["supersede_attempts"], intent_id)
            purge_id = await conn.fetchval(
                self.q["insert_intent"],
                self.chain_id,
                PURGE_KIND,
                key,
                signed.signer,
                b"",
                0,
                True,
            )
            await conn.execute(
                self.q["assign_intent"], purge_id, signed.signer, signed.nonce, signed.gas_limit
            )
            return await self._insert_attempt(conn, int(purge_id), signed)

    async def rewrite_batch(
        self,
        intent_id: int,
        calldata: bytes,
        items: Sequence[Any],
        reason: str,
        reverted: Sequence[ItemOutcome] = (),
    ) -> bool:
        """A planned batch made smaller before anything was signed: its calldata now encodes
        `items`; `reverted` (the items left out for reverting) are recorded, and the rest of
        those left out are dropped from it (planned again)."""
        async with self.pool.acquire() as conn, conn.transaction():
            kind = await conn.fetchval(self.q["rewrite_batch"], intent_id, calldata, reason)
            if kind is None:
                return False
            await self._record_items(conn, intent_id, "reverted", reverted)
            kept = [item_ref(kind, i) for i in items]
            await conn.execute(
                self.q["drop_items"],
                intent_id,
                [_numeric(entity) for entity, _ in kept],
                [_numeric(seq) for _, seq in kept],
            )
            return True

    async def note_planned(self, intent_id: int, note: str) -> None:
        """Why a planned intent waits; it stays planned."""
        await self._change("note_planned", intent_id, note)

    async def record_effects(
        self, intent_id: int, outcomes: Mapping[str, Sequence[ItemOutcome]]
    ) -> None:
        """The checked items of a confirmed batch, by outcome; the batch marked checked."""
        async with self.pool.acquire() as conn, conn.transaction():
            for outcome, items in outcomes.items():
                await self._record_items(conn, intent_id, outcome, items)
            await conn.execute(self.q["mark_effects_checked"], intent_id)

    async def _record_items(
        self, conn: Conn, intent_id: int, outcome: str, items: Sequence[ItemOutcome]
    ) -> None:
        if items:
            await conn.executemany(
                self.q["item_outcome"],
                [
                    (intent_id, _numeric(entity), _numeric(seq), outcome, detail)
                    for (entity, seq), detail in items
                ],
            )

    async def record_fault(
        self, intent_id: int, stage: str, error: str, failures: int, delay: float
    ) -> None:
        """An unexpected error while handling the intent at `stage` (the latest, counted)."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                self.q["record_fault"], intent_id, self.chain_id, stage, error, failures, delay
            )

    async def clear_fault(self, intent_id: int, stage: str) -> None:
        """The intent went through `stage`: its fault record goes."""
        async with self.pool.acquire() as conn:
            await conn.execute(self.q["clear_fault"], intent_id, stage)


def _numeric(value: int | None) -> Decimal | None:
    """An integer column value as asyncpg binds numeric(78,0)."""
    return None if value is None else Decimal(value)
