"""The named-query parser (pure: no database)."""

from __future__ import annotations

import pytest

from keeper.db.queries import Queries, QueryFileInvalid, UnknownQuery, load_queries, parse_queries
from keeper.errors import KeeperError

TEXT = """\
-- A header comment before the first query is allowed.

-- name: first_query
-- What the first query is for.
SELECT 1;

-- name:second_query
SELECT *
FROM t
WHERE a = $1;
"""


def test_parses_named_blocks_in_file_order() -> None:
    queries = parse_queries(TEXT)
    assert list(queries) == ["first_query", "second_query"]
    assert queries["first_query"] == "-- What the first query is for.\nSELECT 1;"
    assert queries["second_query"] == "SELECT *\nFROM t\nWHERE a = $1;"


def test_queries_mapping_behaves_like_a_dict() -> None:
    queries = Queries.from_text(TEXT, source="test.sql")
    assert len(queries) == 2
    assert "first_query" in queries
    assert "nope" not in queries
    assert queries.get("nope") is None
    assert dict(queries) == parse_queries(TEXT)


def test_unknown_name_is_a_keeper_error_and_a_key_error_with_a_hint() -> None:
    queries = Queries.from_text(TEXT, source="test.sql")
    with pytest.raises(UnknownQuery) as caught:
        queries["frist_query"]
    err = caught.value
    assert isinstance(err, KeeperError)
    assert isinstance(err, KeyError)
    assert err.name == "frist_query"
    assert "no query named 'frist_query' in test.sql" in str(err)
    assert err.help is not None
    assert err.help.startswith("did you mean 'first_query'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n", "defined twice"),
        ("-- name: q\n-- only a comment\n\n-- name: r\nSELECT 1;\n", "'q' has no SQL"),
        ("-- name: q\n", "'q' has no SQL"),
        ("SELECT 0;\n-- name: q\nSELECT 1;\n", "before the first"),
        ("-- name: Bad-Name\nSELECT 1;\n", "invalid query name"),
        ("-- name: two words\nSELECT 1;\n", "invalid query name"),
        ("-- name:\nSELECT 1;\n", "invalid query name"),
    ],
)
def test_malformed_files_are_rejected(text: str, message: str) -> None:
    with pytest.raises(QueryFileInvalid, match=message):
        parse_queries(text, source="bad.sql")


def test_empty_file_has_no_queries() -> None:
    assert parse_queries("") == {}
    assert parse_queries("-- just a comment\n") == {}


def test_shipped_query_file_parses() -> None:
    queries = load_queries()
    assert {"applied_migrations", "record_migration", "schema_catalog"} <= set(queries)
    assert load_queries() is queries  # parsed once
