"""Named SQL queries, read from the `.sql` files shipped under `sql/`.

A query file is a sequence of blocks, each introduced by a `-- name: <query_name>` line;
the block's text up to the next name line is the query (comments included, Postgres ignores
them). Code then says `load_queries()["applied_migrations"]`, so every statement the keeper
runs can be read, reviewed and tried in `psql` from the `.sql` files alone.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Mapping

from keeper import resources
from keeper.errors import KeeperError

_NAME_LINE = re.compile(r"^--\s*name:(?P<name>.*)$")
_VALID_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class QueryFileInvalid(KeeperError):
    """A SQL query file is malformed."""


# KeyError as a second base on purpose: Mapping's `in` and `.get()` rely on __getitem__
# raising KeyError, and callers may reasonably catch it as one.
class UnknownQuery(KeeperError, KeyError):
    """No query with this name exists."""

    def __init__(self, name: str, source: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else None
        super().__init__(f"no query named {name!r} in {source}", help=hint)
        self.name = name
        self.source = source


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split query-file text into {name: sql}, in file order.

    Raises `QueryFileInvalid` for a malformed name, a duplicate name, a block with no SQL, or
    SQL before the first name line (it would otherwise be silently unreachable).
    """
    queries: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []

    def finish() -> None:
        if current is None:
            return
        sql = "\n".join(body).strip()
        if not _has_sql(sql):
            raise QueryFileInvalid(f"{source}: query {current!r} has no SQL")
        queries[current] = sql

    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _NAME_LINE.match(line.strip())
        if match is None:
            if current is None and line.strip() and not line.lstrip().startswith("--"):
                raise QueryFileInvalid(
                    f"{source}:{lineno}: SQL before the first `-- name:` line",
                    help="start every query with a `-- name: <query_name>` line",
                )
            body.append(line)
            continue
        finish()
        name = match.group("name").strip()
        if not _VALID_NAME.match(name):
            raise QueryFileInvalid(
                f"{source}:{lineno}: invalid query name {name!r}",
                help="query names are lower-case identifiers: letters, digits, underscores",
            )
        if name in queries:
            raise QueryFileInvalid(f"{source}:{lineno}: query {name!r} is defined twice")
        current, body = name, []
    finish()
    return queries


def _has_sql(block: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("--") for line in block.splitlines())


class Queries(Mapping[str, str]):
    """Read-only mapping of query name to SQL text; an unknown name raises `UnknownQuery`."""

    def __init__(self, queries: Mapping[str, str], source: str = "<string>") -> None:
        self._queries = dict(queries)
        self.source = source

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Queries:
        """Parse query-file text (see `parse_queries`)."""
        return cls(parse_queries(text, source), source)

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise UnknownQuery(name, self.source, list(self._queries)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)

    def __repr__(self) -> str:
        return f"Queries({self.source!r}, {len(self)} queries)"


@functools.cache
def load_queries(filename: str = "queries.sql") -> Queries:
    """The queries of `sql/<filename>` from the installed package, parsed once per process."""
    return Queries.from_text(resources.read_sql(filename), source=f"sql/{filename}")
