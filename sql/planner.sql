-- Named queries of the planners (keeper.plan.planner). $1 is the chain id.

-- name: upsert_settings
INSERT INTO planner_settings (chain_id, settle_min_amount, settle_max_interval, settle_horizon,
                              backoff_seconds)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (chain_id) DO UPDATE
SET settle_min_amount = EXCLUDED.settle_min_amount,
    settle_max_interval = EXCLUDED.settle_max_interval,
    settle_horizon = EXCLUDED.settle_horizon,
    backoff_seconds = EXCLUDED.backoff_seconds,
    updated_at = now();

-- name: backfill_done
SELECT backfill_done FROM ingest_cursor WHERE chain_id = $1;

-- name: indexed_block
SELECT indexed_block FROM ingest_cursor WHERE chain_id = $1 AND indexed_timestamp IS NOT NULL;

-- name: streams_due
-- Most urgent first (least runway), then the largest amounts. A closing stream is never
-- settled by the planner (its rate is 0 from the close request, which settled it; the final
-- close settles and refunds it): the view lists open streams only. Numbers as text: an exact
-- int() each, cheaper than a Decimal's for 10,000 rows.
SELECT d.stream_id::text, d.payee, d.reason, d.urgent, d.accrued_now::text
FROM keeper.streams_due d
WHERE d.chain_id = $1
ORDER BY d.urgent DESC, d.runway_seconds NULLS LAST, d.accrued_now DESC, d.stream_id;

-- name: escrows_refundable
-- Most overdue first.
SELECT escrow_id::text, amount::text
FROM keeper.escrows_refundable
WHERE chain_id = $1
ORDER BY expires_at, escrow_id;
