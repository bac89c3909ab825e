-- Queries of `keeper backfill` (keeper/ingest/backfill.py).

-- name: event_counts
-- Events stored per event table in blocks [$2, $3] of chain $1, to compare with the logs the
-- node returns for the same blocks. Lists every event table (tests/integration/
-- test_backfill_cli.py holds the list equal to the decoder's tables); each branch is a range
-- scan of the table's primary key (chain_id, block_number, log_index).
SELECT 'claimed' AS event_table, count(*) AS events FROM claimed
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'contract_events' AS event_table, count(*) AS events FROM contract_events
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'endpoint_added' AS event_table, count(*) AS events FROM endpoint_added
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'endpoint_price_set' AS event_table, count(*) AS events FROM endpoint_price_set
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'escrow_created' AS event_table, count(*) AS events FROM escrow_created
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'escrow_refunded' AS event_table, count(*) AS events FROM escrow_refunded
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'escrow_released' AS event_table, count(*) AS events FROM escrow_released
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'fee_recipient_updated' AS event_table, count(*) AS events FROM fee_recipient_updated
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'fee_updated' AS event_table, count(*) AS events FROM fee_updated
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'fees_credited' AS event_table, count(*) AS events FROM fees_credited
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'notice_period_set' AS event_table, count(*) AS events FROM notice_period_set
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'refund_skipped' AS event_table, count(*) AS events FROM refund_skipped
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'settle_skipped' AS event_table, count(*) AS events FROM settle_skipped
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_close_requested' AS event_table, count(*) AS events FROM stream_close_requested
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_closed' AS event_table, count(*) AS events FROM stream_closed
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_opened' AS event_table, count(*) AS events FROM stream_opened
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_rate_updated' AS event_table, count(*) AS events FROM stream_rate_updated
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_settled' AS event_table, count(*) AS events FROM stream_settled
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'stream_topped_up' AS event_table, count(*) AS events FROM stream_topped_up
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'usage_price_set' AS event_table, count(*) AS events FROM usage_price_set
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'usage_recorded' AS event_table, count(*) AS events FROM usage_recorded
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'usage_skipped' AS event_table, count(*) AS events FROM usage_skipped
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'vault_deposited' AS event_table, count(*) AS events FROM vault_deposited
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
UNION ALL
SELECT 'vault_withdrawn' AS event_table, count(*) AS events FROM vault_withdrawn
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3;
