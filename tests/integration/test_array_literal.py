"""keeper.db.array_literal: one text parameter PostgreSQL parses as an array, used where a pass
sends tens of thousands of numbers (batch items, verdicts, stream ids). What it writes reads
back exactly, and nothing but numbers and the keeper's own words gets in."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.db import array_literal, word_array_literal

pytestmark = pytest.mark.anyio


async def test_numbers_and_words_read_back_exactly(db: asyncpg.Connection) -> None:
    numbers = [0, 1, None, 2**63 - 1, -(2**63), 2**256 - 1, 10**77]
    got = await db.fetchval("SELECT $1::text::numeric[]", array_literal(numbers))
    assert [None if v is None else int(v) for v in got] == numbers
    ids = [7, None, 2**62]
    assert await db.fetchval("SELECT $1::text::bigint[]", array_literal(ids)) == ids
    words = ["settle", None, "duplicate_producer_key", "accepted"]
    assert await db.fetchval("SELECT $1::text::text[]", word_array_literal(words)) == words
    assert await db.fetchval("SELECT $1::text::bigint[]", array_literal([])) == []


@pytest.mark.parametrize(
    "bad", ["a,b", "NULL", "null", "x y", '"', "{}", "a\\b", "Settle", "", "é", "1"]
)
def test_anything_but_a_bare_word_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bare word"):
        word_array_literal(["settle", bad])
    if bad != "1":  # a number's digits are a number
        with pytest.raises(ValueError, match="invalid literal for int"):
            array_literal([1, bad])  # type: ignore[list-item]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(min_value=-(2**255), max_value=2**256))))
def test_any_list_of_integers_is_one_literal_of_that_many_elements(
    values: list[int | None],
) -> None:
    text = array_literal(values)
    assert text.startswith("{") and text.endswith("}")
    inner = text[1:-1]
    assert (inner.split(",") if inner else []) == ["NULL" if v is None else str(v) for v in values]
