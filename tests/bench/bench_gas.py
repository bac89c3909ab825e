"""`make bench-gas`: gas per item of the batch calls, as one JSON object on the last line.

Starts its own anvil, deploys the contracts, measures (see `tests.support.gas`: settlement,
refunds, and usage through `recordUsage`, own-price and on price lists) and prints the figures
next to the goals. Run with `--update-snapshot` after a change
that makes a figure cheaper, to lower the snapshot the test suite holds the contracts to.
"""

from __future__ import annotations

import argparse
import json
import sys

from keeper.dev.anvil import running_anvil
from tests.support.gas import GOALS, SNAPSHOT_PATH, measure


def main(argv: list[str] | None = None) -> int:
    """Measure and print; optionally rewrite the snapshot."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--update-snapshot",
        action="store_true",
        help=f"write the measured figures to {SNAPSHOT_PATH.name}",
    )
    args = parser.parse_args(argv)
    with running_anvil() as node:
        figures = measure(node.url, progress=lambda line: print(line, file=sys.stderr))
    for key, goal in GOALS.items():
        verdict = "ok" if figures[key] <= goal else "OVER GOAL"
        print(f"{key}: {figures[key]} gas/item (goal <= {goal}) {verdict}", file=sys.stderr)
    if args.update_snapshot:
        SNAPSHOT_PATH.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"snapshot written to {SNAPSHOT_PATH}", file=sys.stderr)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
