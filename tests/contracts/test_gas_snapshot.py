"""Gas is deterministic: no figure may rise above the committed snapshot or the goals.

After a change that makes the contracts cheaper, lower the snapshot with
`python -m tests.bench.bench_gas --update-snapshot` and commit it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from keeper.dev.anvil import Anvil
from tests.support.gas import GOALS, SNAPSHOT_PATH, measure


def test_gas_per_item_does_not_rise(anvil_factory: Callable[..., Anvil]) -> None:
    snapshot: dict[str, int] = json.loads(SNAPSHOT_PATH.read_text())
    # Usage priced by price lists (issue 13) is held to a figure like every other batch.
    for key in ("usage_100", "usage_endpoints_100", "usage_endpoints_distinct_100"):
        assert key in snapshot and key in GOALS, key
    assert GOALS["usage_endpoints_100"] <= 12_000
    assert GOALS["usage_endpoints_distinct_100"] <= 15_000
    node = anvil_factory()  # a node of its own: the figures depend on the ids it hands out
    figures = measure(node.url)
    assert set(figures) == set(snapshot)
    risen = {k: (snapshot[k], v) for k, v in figures.items() if v > snapshot[k]}
    assert not risen, f"gas per item rose above the snapshot (was, now): {risen}"
    over = {k: (goal, figures[k]) for k, goal in GOALS.items() if figures[k] > goal}
    assert not over, f"gas per item over the DESIGN goals (goal, now): {over}"
