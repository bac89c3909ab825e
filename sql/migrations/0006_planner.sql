-- 0006_planner: what the planners decide, visible in SQL.
--
-- `planner_settings` holds the settle rule's thresholds per chain (the daemon writes its
-- configuration there at start), so `keeper.streams_due` shows exactly what the next planning
-- pass would settle and why, and the planner reads that very view.

CREATE TABLE planner_settings (
    chain_id            bigint PRIMARY KEY,
    settle_min_amount   numeric(78,0) NOT NULL CHECK (settle_min_amount >= 0),
    settle_max_interval bigint NOT NULL CHECK (settle_max_interval > 0),
    settle_horizon      bigint NOT NULL CHECK (settle_horizon >= 0),
    backoff_seconds     bigint NOT NULL CHECK (backoff_seconds >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Batch items the keeper has on its way: in an intent that is not settled yet, or mined in a
-- block the indexer has not reached (the projections do not show its effect yet).
CREATE VIEW keeper.items_in_flight AS
SELECT i.chain_id, i.kind, item.value AS item, i.id AS intent_id, i.key AS intent_key,
       i.state AS intent_state
FROM intents i
LEFT JOIN ingest_cursor c ON c.chain_id = i.chain_id
CROSS JOIN LATERAL jsonb_array_elements_text(i.items) AS item (value)
WHERE i.kind IN ('settle', 'refund')
  AND (i.state IN ('planned', 'assigned', 'mined')
       OR (i.state IN ('confirmed', 'final')
           AND i.block_number > COALESCE(c.indexed_block, -1)));

-- Batch items backed off: reverted in simulation or without effect after confirmation, within
-- the backoff window.
CREATE VIEW keeper.items_backed_off AS
SELECT i.chain_id, i.kind, it.item, it.outcome, it.detail, it.checked_at,
       it.checked_at + make_interval(secs => ps.backoff_seconds) AS retry_after
FROM intent_items it
JOIN intents i ON i.id = it.intent_id
JOIN planner_settings ps ON ps.chain_id = i.chain_id
WHERE it.outcome IN ('no_effect', 'reverted')
  AND it.checked_at + make_interval(secs => ps.backoff_seconds) > now();

-- Streams the next settle pass would settle, with the reason: `depleting` (runs out within the
-- horizon, urgent: the payee is paid before the money runs out and the stream is marked
-- depleted), `min_amount` (accrued at least the minimum) or `max_interval` (not settled for
-- the maximum interval). Streams already on their way or backed off are left out.
CREATE VIEW keeper.streams_due AS
SELECT b.chain_id,
       b.stream_id,
       b.payer,
       b.payee,
       b.accrued_now,
       b.balance,
       b.rate,
       b.as_of - b.settled_at AS seconds_since_settled,
       b.runway_seconds,
       CASE WHEN b.runway_seconds <= ps.settle_horizon THEN 'depleting'
            WHEN b.accrued_now >= ps.settle_min_amount THEN 'min_amount'
            ELSE 'max_interval' END AS reason,
       COALESCE(b.runway_seconds <= ps.settle_horizon, false) AS urgent,
       b.as_of_block,
       b.as_of
FROM keeper.stream_balances b
JOIN planner_settings ps ON ps.chain_id = b.chain_id
WHERE b.status <> 'closed'
  AND b.accrued_now > 0
  AND (b.runway_seconds <= ps.settle_horizon
       OR b.accrued_now >= ps.settle_min_amount
       OR b.as_of - b.settled_at >= ps.settle_max_interval)
  AND NOT EXISTS (SELECT 1 FROM keeper.items_in_flight f
                  WHERE f.chain_id = b.chain_id AND f.kind = 'settle'
                    AND f.item = b.stream_id::text)
  AND NOT EXISTS (SELECT 1 FROM keeper.items_backed_off o
                  WHERE o.chain_id = b.chain_id AND o.kind = 'settle'
                    AND o.item = b.stream_id::text);

-- Expired escrows the next refund pass would refund (not on their way, not backed off).
CREATE VIEW keeper.escrows_refundable AS
SELECT x.*
FROM keeper.escrows_expired x
WHERE NOT EXISTS (SELECT 1 FROM keeper.items_in_flight f
                  WHERE f.chain_id = x.chain_id AND f.kind = 'refund'
                    AND f.item = x.escrow_id::text)
  AND NOT EXISTS (SELECT 1 FROM keeper.items_backed_off o
                  WHERE o.chain_id = x.chain_id AND o.kind = 'refund'
                    AND o.item = x.escrow_id::text);
