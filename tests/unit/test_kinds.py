"""The registry of work kinds agrees with the contracts, the schema, the queries and the model."""

from __future__ import annotations

import re

from eth_utils import keccak

from keeper import resources
from keeper.db.queries import load_queries
from keeper.kinds import BATCH_KINDS, INTENT_KINDS, REFUND, SETTLE, USAGE
from keeper.plan import accrual
from keeper.plan.batches import batch_size, encode_batch, gas_floor
from keeper.resources import load_artifact


def _functions(contract: str) -> set[str]:
    return {
        f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
        for item in load_artifact(contract).abi
        if item.get("type") == "function"
    }


def test_each_batch_kind_calls_a_function_of_its_contract() -> None:
    assert SETTLE.signature in _functions("StreamManager")
    assert USAGE.signature in _functions("StreamManager")
    assert REFUND.signature in _functions("EscrowVault")
    for kind in BATCH_KINDS.values():
        assert kind.selector == keccak(text=kind.signature)[:4]
        assert encode_batch(kind.name, [])[:4] == kind.selector


def test_the_skip_codes_are_the_models() -> None:
    assert dict(SETTLE.skip_reasons).keys() == {int(r) for r in accrual.SettleSkip}
    assert dict(USAGE.skip_reasons).keys() == {int(r) for r in accrual.UsageSkip}


def test_intent_kinds_are_the_schemas_check_list() -> None:
    schema = resources.read_sql("schema.sql")
    found = re.search(r"kind\s+text NOT NULL CHECK \(kind IN \(([^)]*)\)\)", schema)
    assert found is not None
    assert tuple(re.findall(r"'(\w+)'", found.group(1))) == INTENT_KINDS


def test_each_effects_query_exists() -> None:
    queries = set(load_queries("outbox.sql"))
    for kind in BATCH_KINDS.values():
        assert kind.effects_query in queries


def test_batch_gas_comes_from_the_kind() -> None:
    for kind in BATCH_KINDS.values():
        assert gas_floor(kind.name, 10) - gas_floor(kind.name, 9) == kind.gas_per_item
        per_batch = batch_size(kind.name, 10_000_000)
        assert gas_floor(kind.name, per_batch) <= 10_000_000 < gas_floor(kind.name, per_batch + 1)
    assert gas_floor("purge", 3) == 0
