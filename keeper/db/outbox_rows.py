"""The outbox's rows, typed: what `keeper.db.outbox` returns and takes.

Intents and attempts come back as these frozen dataclasses, never as database records: the
transaction manager reads fields by name, and the in-memory outbox of the unit tests returns the
very same types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keeper.db import array_literal, word_array_literal
from keeper.kinds import INTENT_KINDS, USAGE, ItemRef, item_columns, usage_fields

# An item's outcome as recorded in batch_items: (which item, detail or None).
ItemOutcome = tuple[ItemRef, str | None]


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


@dataclass(frozen=True)
class Call:
    """What a transaction calls: the target, its calldata and the value sent."""

    target: bytes
    calldata: bytes
    value: int = 0


@dataclass(frozen=True)
class PlannedIntent:
    """An intent waiting for a signer."""

    id: int
    kind: str
    key: str
    call: Call
    items: list[Any]
    urgent: bool


@dataclass(frozen=True)
class OpenIntent:
    """An intent sent and not final yet (assigned, mined or confirmed)."""

    id: int
    kind: str
    key: str
    state: str
    signer: bytes
    nonce: int
    gas_limit: int
    call: Call
    items: list[Any]
    block_number: int | None  # of its recorded receipt, once mined
    block_hash: bytes | None


@dataclass(frozen=True)
class Signed:
    """A signed transaction, as an attempt stores it."""

    signer: bytes
    nonce: int
    max_fee: int
    priority_fee: int
    legacy: bool
    gas_limit: int
    raw: bytes
    tx_hash: bytes


@dataclass(frozen=True)
class Attempt:
    """The newest attempt of an assigned intent (what is sent again, bumped or purged)."""

    id: int
    intent_id: int
    kind: str
    key: str
    call: Call
    signed: Signed
    broadcast_block: int | None
    first_broadcast_block: int | None  # when the intent's first attempt went out


@dataclass(frozen=True)
class StoredSend:
    """Signed bytes to send: never sent yet, or sent again after an unsure answer."""

    id: int
    intent_id: int
    key: str
    raw: bytes


@dataclass(frozen=True)
class MinedReceipt:
    """The receipt of the attempt that was mined, as recorded with its intent."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    status: int
    gas_used: int
    effective_gas_price: int
    l1_fee: int | None


@dataclass(frozen=True)
class ConfirmedBatch:
    """A confirmed batch whose items' effects were not checked yet."""

    id: int
    kind: str
    key: str
    tx_hash: bytes
    block_number: int


@dataclass(frozen=True)
class ItemEffect:
    """One item of a batch against the indexed events of its transaction."""

    item: ItemRef
    effect: bool
    skip_reason: int | None


def int_or_none(value: Any) -> int | None:
    """A nullable integer column."""
    return None if value is None else int(value)


def call_of(row: Mapping[str, Any]) -> Call:
    return Call(bytes(row["target"]), bytes(row["calldata"]), int(row["value"]))


def planned_intent(row: Mapping[str, Any], items: list[Any]) -> PlannedIntent:
    return PlannedIntent(
        id=int(row["id"]),
        kind=row["kind"],
        key=row["key"],
        call=call_of(row),
        items=items,
        urgent=bool(row["urgent"]),
    )


def open_intent(row: Mapping[str, Any], items: list[Any]) -> OpenIntent:
    block_hash = row["block_hash"]
    return OpenIntent(
        id=int(row["id"]),
        kind=row["kind"],
        key=row["key"],
        state=row["state"],
        signer=bytes(row["signer"]),
        nonce=int(row["nonce"]),
        gas_limit=int(row["gas_limit"]),
        call=call_of(row),
        items=items,
        block_number=int_or_none(row["block_number"]),
        block_hash=None if block_hash is None else bytes(block_hash),
    )


def attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        id=int(row["id"]),
        intent_id=int(row["intent_id"]),
        kind=row["kind"],
        key=row["key"],
        call=call_of(row),
        signed=Signed(
            signer=bytes(row["signer"]),
            nonce=int(row["nonce"]),
            max_fee=int(row["max_fee"]),
            priority_fee=int(row["priority_fee"]),
            legacy=bool(row["legacy"]),
            gas_limit=int(row["gas_limit"]),
            raw=bytes(row["raw"]),
            tx_hash=bytes(row["tx_hash"]),
        ),
        broadcast_block=int_or_none(row["broadcast_block"]),
        first_broadcast_block=int_or_none(row["first_broadcast_block"]),
    )


def stored_send(row: Mapping[str, Any]) -> StoredSend:
    return StoredSend(int(row["id"]), int(row["intent_id"]), row["key"], bytes(row["raw"]))


def confirmed_batch(row: Mapping[str, Any]) -> ConfirmedBatch:
    return ConfirmedBatch(
        id=int(row["id"]),
        kind=row["kind"],
        key=row["key"],
        tx_hash=bytes(row["tx_hash"]),
        block_number=int(row["block_number"]),
    )


def first_claims(keys: Sequence[str], inserted: Mapping[str, int]) -> list[bool]:
    """Per request key, whether that request created its intent: a key the insert returned was
    created by the first request with it; every other request (its key planned before, or
    repeating an earlier request's) is already planned."""
    unclaimed = set(inserted)
    created = []
    for key in keys:
        created.append(key in unclaimed)
        unclaimed.discard(key)
    return created


def item_arrays(
    intents: Iterable[tuple[int, str, Sequence[Any]]],
) -> tuple[int, list[str]]:
    """The insert_items arguments of new intents' (id, kind, items): the number of items, and
    per item its intent, position, kind and keeper.kinds.item_columns, each column one
    `array_literal`."""
    ids: list[int] = []
    positions: list[int] = []
    kinds: list[str] = []
    entity: list[int] = []
    seq: list[int | None] = []
    units: list[int | None] = []
    endpoint: list[int | None] = []
    for intent_id, kind, items in intents:
        if kind not in INTENT_KINDS:  # a bare word in the literal: only the registry's names
            raise ValueError(f"unknown intent kind {kind!r}")
        n = len(items)
        ids += [intent_id] * n
        positions += range(n)
        kinds += [kind] * n
        if kind == USAGE.name:
            # item_columns, unrolled: a pass writes up to 20,000 usage items.
            for item in items:
                stream_id, item_units, item_seq, item_endpoint = usage_fields(item)
                entity.append(stream_id)
                seq.append(item_seq)
                units.append(item_units)
                endpoint.append(item_endpoint)
        else:
            entity += [item_columns(kind, item)[0] for item in items]
            seq += [None] * n
            units += [None] * n
            endpoint += [None] * n
    return len(ids), [
        array_literal(ids),
        array_literal(positions),
        word_array_literal(kinds),
        *(array_literal(column) for column in (entity, seq, units, endpoint)),
    ]
