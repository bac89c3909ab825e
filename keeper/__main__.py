"""`python -m keeper`: the same as the `keeper` console script."""

from __future__ import annotations

import sys

from keeper.cli import main

if __name__ == "__main__":
    sys.exit(main())
