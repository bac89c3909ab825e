-- Queries of `keeper db archive-events` (keeper/ops/partitions.py). The work is done by the SQL
-- functions of sql/schema.sql's section 0018; these read what they need around it.

-- name: archive_limit
-- The chain's first indexed block, and the newest block no rollback can reach: finalized and
-- indexed (a reorg below the finalized block stops the indexer instead).
SELECT start_block, least(finalized_block, indexed_block) AS safe
FROM ingest_cursor
WHERE chain_id = $1;

-- name: ranges_below
-- The chain's event ranges that end at or below block $2 (exclusive end) and are not archived.
SELECT from_block, to_block
FROM event_ranges
WHERE chain_id = $1 AND to_block <= $2 AND archived_at IS NULL
ORDER BY from_block;

-- name: ensure_event_partitions
SELECT ensure_event_partitions($1, $2, $3, $4);

-- name: archive_event_range
SELECT archived, kept FROM archive_event_range($1, $2);
