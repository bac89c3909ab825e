-- Queries of `keeper demo` (keeper/dev/demo_run.py): its workload's usage rows and the activity
-- line it prints every few seconds. The demo reads tables, not only views, because it
-- reports on blocks and transactions between two of its lines.

-- name: insert_usage_rows
-- Usage rows as a producer writes them: text fields, one row per array element; the endpoint
-- is the name its payee published (NULL for a stream billed at its own price).
INSERT INTO usage_inbox (stream_id, units, producer_key, label, endpoint)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]);

-- name: indexer_progress
SELECT indexed_block, head_block, backfill_done FROM ingest_cursor WHERE chain_id = $1;

-- name: activity
-- The money events of blocks ($2, $3] and the keeper's transactions confirmed or failed after
-- $4 (wall clock; `as_of` is the next line's $4), with what is waiting now.
SELECT
    s.streams AS settled_streams, s.amount AS settled_amount,
    u.reports AS usage_reports, u.charged AS usage_charged,
    r.escrows AS refunded_escrows, r.amount AS refunded_amount,
    (SELECT count(*) FROM intents
     WHERE chain_id = $1 AND confirmed_at > $4) AS txs_confirmed,
    (SELECT count(*) FROM intents
     WHERE chain_id = $1 AND state = 'failed' AND updated_at > $4) AS txs_failed,
    (SELECT count(*) FROM intents
     WHERE chain_id = $1 AND state IN ('planned', 'assigned', 'mined')) AS txs_in_flight,
    (SELECT count(*) FROM keeper.usage_pending) AS usage_pending,
    now() AS as_of
FROM (SELECT count(DISTINCT stream_id) AS streams, coalesce(sum(amount), 0) AS amount
      FROM stream_settled
      WHERE chain_id = $1 AND block_number > $2 AND block_number <= $3) s
CROSS JOIN (SELECT count(*) AS reports, coalesce(sum(charged), 0) AS charged
            FROM usage_recorded
            WHERE chain_id = $1 AND block_number > $2 AND block_number <= $3) u
CROSS JOIN (SELECT count(*) AS escrows, coalesce(sum(amount), 0) AS amount
            FROM escrow_refunded
            WHERE chain_id = $1 AND block_number > $2 AND block_number <= $3) r;

-- name: usage_by_endpoint
-- The usage charged in blocks ($2, $3] per endpoint name (NULL: reports without an endpoint,
-- billed at the stream's own price), largest first.
SELECT e.name AS endpoint, sum(u.charged) AS charged
FROM usage_recorded u
JOIN streams s ON s.chain_id = u.chain_id AND s.stream_id = u.stream_id
LEFT JOIN endpoints e
    ON e.chain_id = u.chain_id AND e.payee = s.payee AND e.endpoint = u.endpoint
WHERE u.chain_id = $1 AND u.block_number > $2 AND u.block_number <= $3
GROUP BY e.name
ORDER BY sum(u.charged) DESC, e.name NULLS LAST;
