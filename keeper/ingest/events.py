"""The contracts' events: the catalog read against the ABIs, and a fast decoder of raw logs
into rows.

Every event of StreamManager and EscrowVault has a typed table, one column per event argument;
`keeper.ingest.catalog` names them and is checked against the ABIs at import, so an artifact
change that renames or retypes an argument fails loudly instead of mis-filing data. Events the
keeper does not interpret (roles, pause) still go to `contract_events`, raw, so nothing a
contract emitted is ever dropped.

Decoding works on the JSON-RPC log dicts directly: all the events have static argument types,
so each value is a slice of the hex data. This is several times faster than a generic ABI
decoder, which matters for backfill throughput. An event whose words pack several values
(`UsageRecorded`) names an unpack function in its catalog entry that turns its argument values
into its table's columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from keeper.errors import KeeperError
from keeper.ingest.catalog import (
    CATALOG,
    COMMON_COLUMNS,
    RAW_EVENTS,
    RAW_TABLE,
    ROWS,
    EventRow,
    Packed,
    Unpack,
    column_names,
    column_types,
    unpack_usage_recorded,
)
from keeper.resources import load_artifact

__all__ = [
    "RAW_TABLE",
    "DecodedBatch",
    "Decoder",
    "EventSpec",
    "MalformedLog",
    "UnknownEventShape",
    "build_catalog",
    "unpack_usage_recorded",
]


class UnknownEventShape(KeeperError):
    """A contract artifact does not match the event catalog: the schema needs a migration."""


class MalformedLog(KeeperError):
    """A log returned by the RPC does not have the shape its event declares."""


@dataclass(frozen=True)
class EventSpec:
    """One event: its contract, signature, table, its (ABI type, indexed) arguments and the
    table's columns (the arguments one to one, or what `unpack` makes of them) with their SQL
    types."""

    contract: str
    name: str
    signature: str
    topic0: str
    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    indexed: tuple[bool, ...]
    sql_types: tuple[str, ...]
    row: type[EventRow]
    unpack: Unpack | None = None

    @property
    def data_words(self) -> int:
        """How many 32-byte words the non-indexed arguments take in the log's data."""
        return self.indexed.count(False)

    @property
    def copy_columns(self) -> tuple[str, ...]:
        """All columns of the table, in the order `decode` produces values."""
        return COMMON_COLUMNS + self.columns


INDEXED_CONTRACTS = ("StreamManager", "EscrowVault")


def _signature(item: Mapping[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


def build_catalog() -> tuple[dict[str, EventSpec], dict[str, tuple[str, str]]]:
    """Read the ABIs and return ({topic0: EventSpec}, {topic0: (contract, event) of raw events})."""
    typed: dict[str, EventSpec] = {}
    raw: dict[str, tuple[str, str]] = {}
    seen: set[tuple[str, str]] = set()
    for contract in INDEXED_CONTRACTS:
        for item in load_artifact(contract).abi:
            if item.get("type") != "event":
                continue
            sig = _signature(item)
            topic0 = "0x" + keccak(text=sig).hex()
            key = (contract, item["name"])
            if item["name"] in RAW_EVENTS:
                raw[topic0] = key
                continue
            if key not in CATALOG:
                raise UnknownEventShape(
                    f"{contract}.{sig} has no table in keeper.ingest.catalog.CATALOG",
                    help="add a table for it in a new migration and to the catalog",
                )
            table, entry = CATALOG[key]
            types = tuple(i["type"] for i in item["inputs"])
            indexed = tuple(bool(i["indexed"]) for i in item["inputs"])
            if isinstance(entry, Packed):
                args, unpack = entry.args, entry.unpack
                # The packing is named by the arguments: a renamed one may pack otherwise.
                names = tuple(i["name"] for i in item["inputs"])
                if names != args or any(t != "uint256" for t in types):
                    raise UnknownEventShape(
                        f"{contract}.{sig}: catalog unpacks uint256 words {args}, the ABI has "
                        f"{list(zip(names, types, strict=True))}"
                    )
            else:
                args, unpack = column_names(entry), None
            if len(args) != len(item["inputs"]):
                raise UnknownEventShape(f"{contract}.{sig}: catalog has arguments {args}")
            try:
                sql_types = column_types(entry, types)
            except KeyError as exc:
                raise UnknownEventShape(
                    f"{contract}.{sig}: no column type for ABI type {exc}",
                    help="store it in a new migration and state its type in the catalog",
                ) from None
            typed[topic0] = EventSpec(
                contract=contract,
                name=item["name"],
                signature=sig,
                topic0=topic0,
                table=table,
                columns=column_names(entry),
                types=types,
                indexed=indexed,
                sql_types=sql_types,
                row=ROWS[table],
                unpack=unpack,
            )
            seen.add(key)
    missing = set(CATALOG) - seen
    if missing:
        raise UnknownEventShape(f"catalog events missing from the ABIs: {sorted(missing)}")
    return typed, raw


def _word_decoder(abi_type: str) -> Callable[[str], Any]:
    """A function from one 64-hex-digit word to the Python value COPY expects."""
    if abi_type == "address":
        return lambda w: bytes.fromhex(w[24:])
    if abi_type.startswith("uint") or abi_type == "bool":
        return lambda w: int(w, 16)
    if abi_type == "bytes32":
        return bytes.fromhex
    raise UnknownEventShape(f"event argument type {abi_type} is not supported by the decoder")


@dataclass
class DecodedBatch:
    """Rows decoded from a list of logs, grouped by table.

    `rows` holds the values (ints and bytes) the projections are computed from; `text` holds
    the same rows of the typed tables as lines of COPY text (the raw table is copied from
    `rows`). Both keep the logs' order.
    """

    rows: dict[str, list[EventRow]]
    count: int = 0
    text: dict[str, list[str]] = field(default_factory=dict)


def _copy_value(value: Any) -> str:
    """One value in COPY text format: ints in decimal, bytes as bytea hex."""
    return str(value) if isinstance(value, int) else "\\\\x" + value.hex()


# One decoding step of a typed event: (spec, per-argument plan, integer plan or None, expected
# length of the data's hex text). The integer plan serves events whose arguments are all
# integers and whose indexed arguments come first (all of the catalog's): the topics holding
# them, the bit shifts of the others into the data read as one integer, and the %-format of
# their COPY text.
_Plan = tuple[
    EventSpec,
    list[tuple[bool, int, Callable[[str], Any]]],
    tuple[tuple[int, ...], tuple[int, ...], str] | None,
    int,
]
_WORD = (1 << 256) - 1


class Decoder:
    """Turns raw JSON-RPC logs of the keeper's contracts into table rows."""

    def __init__(self, chain_id: int, addresses: Mapping[str, str]) -> None:
        """`addresses` maps contract name (StreamManager, EscrowVault) to its address."""
        self.chain_id = chain_id
        self.typed, self.raw = build_catalog()
        self.contract_of = {a.lower(): name for name, a in addresses.items()}
        self._plans: dict[str, _Plan] = {}
        for topic0, spec in self.typed.items():
            plan = []
            topic_i, data_i = 1, 0
            for abi_type, indexed in zip(spec.types, spec.indexed, strict=True):
                if indexed:
                    plan.append((True, topic_i, _word_decoder(abi_type)))
                    topic_i += 1
                else:
                    plan.append((False, data_i, _word_decoder(abi_type)))
                    data_i += 1
            words = spec.data_words
            integers = None
            n_indexed = spec.indexed.count(True)
            if (
                words
                and all(t.startswith("uint") or t == "bool" for t in spec.types)
                and all(spec.indexed[:n_indexed])
            ):
                integers = (
                    tuple(range(1, n_indexed + 1)),
                    tuple(256 * (words - 1 - i) for i in range(words)),
                    "\t".join(["%d"] * len(spec.columns)),
                )
            self._plans[topic0] = (spec, plan, integers, 2 + 64 * words)

    @property
    def tables(self) -> list[str]:
        """Every table the decoder writes to."""
        return sorted({s.table for s in self.typed.values()} | {RAW_TABLE})

    def columns(self, table: str) -> tuple[str, ...]:
        """COPY column order of `table`."""
        return ROWS[table]._fields

    def decode(
        self, logs: Iterable[Mapping[str, Any]], timestamps: Mapping[int, int]
    ) -> DecodedBatch:
        """Decode `logs`; `timestamps` gives block times for logs that do not carry one."""
        rows: dict[str, list[EventRow]] = {}
        text: dict[str, list[str]] = {}
        count = 0
        chain_id = self.chain_id
        plans = self._plans
        word = _WORD
        new_row = tuple.__new__  # a row of its table's class, skipping its Python-level __new__
        # Consecutive logs mostly share their block and transaction: parse those once, and
        # the COPY text around the log index with them ("chain\tblock\t", "\ttx\ttime\t").
        last_block_hex = last_tx_hex = ""
        number = 0
        ts: int | None = None
        tx_hash = b""
        block_text = tx_text = ""
        for log in logs:
            if log.get("removed"):
                continue
            try:
                block_hex = log["blockNumber"]
                if block_hex != last_block_hex:
                    number = int(block_hex, 16)
                    ts_hex = log.get("blockTimestamp")
                    ts = int(ts_hex, 16) if ts_hex else timestamps.get(number)
                    if ts is None:
                        raise MalformedLog(f"no timestamp for block {number}")
                    last_block_hex = block_hex
                    last_tx_hex = ""
                    block_text = f"{chain_id}\t{number}\t"
                tx_hex = log["transactionHash"]
                if tx_hex != last_tx_hex:
                    tx_hash = bytes.fromhex(tx_hex[2:])
                    last_tx_hex = tx_hex
                    tx_text = f"\t\\\\x{tx_hash.hex()}\t{ts}\t"
                topics = log["topics"]
                log_index = int(log["logIndex"], 16)
                found = plans.get(topics[0]) if topics else None
                if found is None:
                    row = self._raw_row(log, number, log_index, tx_hash, ts)
                    if row is not None:
                        rows.setdefault(RAW_TABLE, []).append(row)
                        count += 1
                    continue
                spec, plan, integers, size = found
                data = log["data"]
                if len(data) != size:
                    raise ValueError(f"{spec.name} data has {len(data) - 2} hex digits")
                if integers is not None:
                    # All arguments are integers: read the data as one number and cut it
                    # into words (much cheaper than one int() per word).
                    in_topics, shifts, values_format = integers
                    whole = int(data, 16)
                    values = [whole >> shift & word for shift in shifts]
                    if in_topics:
                        values[:0] = [int(topics[i], 16) for i in in_topics]
                    if spec.unpack is not None:
                        values = spec.unpack(values)
                    values_text = values_format % tuple(values)
                else:
                    values = [
                        dec(topics[i][2:]) if indexed else dec(data[2 + 64 * i : 66 + 64 * i])
                        for indexed, i, dec in plan
                    ]
                    if spec.unpack is not None:
                        values = spec.unpack(values)
                    values_text = "\t".join(map(_copy_value, values))
                table = spec.table
                table_rows = rows.get(table)
                if table_rows is None:
                    table_rows = rows[table] = []
                    text[table] = []
                table_rows.append(
                    new_row(spec.row, (chain_id, number, log_index, tx_hash, ts, *values))
                )
                text[table].append(f"{block_text}{log_index}{tx_text}{values_text}")
                count += 1
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise MalformedLog(f"cannot decode log {log!r}: {exc!r}") from exc
        return DecodedBatch(rows=rows, count=count, text=text)

    def _raw_row(
        self, log: Mapping[str, Any], number: int, log_index: int, tx_hash: bytes, ts: int | None
    ) -> EventRow | None:
        """The `contract_events` row of a log no typed table takes (None: not our contract's)."""
        contract = self.contract_of.get(log["address"].lower())
        if contract is None:
            return None  # not one of ours (a filter should not return it)
        topics = log["topics"]
        name = self.raw.get(topics[0], (contract, "unknown"))[1] if topics else "anonymous"
        return tuple.__new__(
            ROWS[RAW_TABLE],
            (
                self.chain_id,
                number,
                log_index,
                tx_hash,
                ts,
                contract,
                name,
                [bytes.fromhex(t[2:]) for t in topics],
                bytes.fromhex(log["data"][2:]),
            ),
        )
