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

-- What the transaction manager last saw of each signer (written every pass).
CREATE TABLE signer_state (
    chain_id      bigint NOT NULL,
    signer        bytea NOT NULL CHECK (octet_length(signer) = 20),
    balance       numeric(78,0) NOT NULL,
    low_balance   boolean NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, signer)
);

-- Intents and their latest attempt: state, gas and cost, newest first.
CREATE VIEW keeper.tx_pipeline AS
SELECT i.chain_id,
       i.id AS intent_id,
       i.kind,
       i.key,
       i.state,
       i.urgent,
       jsonb_array_length(i.items) AS items,
       keeper.hex(i.signer) AS signer,
       i.nonce,
       (SELECT count(*) FROM attempts a WHERE a.intent_id = i.id) AS attempts,
       la.max_fee AS latest_max_fee,
       la.priority_fee AS latest_priority_fee,
       la.last_error AS latest_send_error,
       i.gas_limit,
       i.gas_used,
       i.effective_gas_price,
       (i.gas_used::numeric * i.effective_gas_price)::numeric(78,0) AS cost_wei,
       keeper.hex(i.tx_hash) AS tx_hash,
       i.block_number,
       i.receipt_status,
       i.reason,
       i.created_at,
       i.assigned_at,
       i.mined_at,
       i.confirmed_at,
       i.updated_at
FROM intents i
LEFT JOIN LATERAL (
    SELECT a.max_fee, a.priority_fee, a.last_error FROM attempts a
    WHERE a.intent_id = i.id ORDER BY a.id DESC LIMIT 1
) la ON true;

-- The signer pool: next nonce, work in flight, last known balance.
CREATE VIEW keeper.signers AS
SELECT s.chain_id,
       keeper.hex(s.signer) AS address,
       s.balance,
       s.low_balance,
       (SELECT COALESCE(max(i.nonce) + 1, 0) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer AND i.state <> 'replan')
           AS next_nonce,
       (SELECT count(*) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer AND i.state = 'assigned')
           AS in_flight,
       (SELECT count(*) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer
          AND i.state IN ('confirmed', 'final')) AS confirmed,
       s.updated_at
FROM signer_state s;
