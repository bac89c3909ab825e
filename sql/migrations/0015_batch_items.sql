-- 0015_batch_items: each planned batch item is a typed row, written when the work is planned.
--
-- Until now an intent carried its items as JSON (intents.items) and their outcomes were keyed by
-- text (intent_items.item): a stream id went int -> JSON -> text in the planner views -> JSON
-- again. batch_items holds one row per item (the stream or escrow id as numeric, a usage report's
-- sequence number, units and endpoint) with its outcome; the in-flight and backed-off checks of
-- the planners are plain joins on it, by index. The existing items and outcomes are copied over;
-- intents.items and intent_items go.

CREATE TABLE batch_items (
    intent_id   bigint NOT NULL REFERENCES intents (id),
    position    integer NOT NULL CHECK (position >= 0),
    chain_id    bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('settle', 'refund', 'usage')),
    entity      numeric(78,0) NOT NULL CHECK (entity >= 0),
    seq         numeric(78,0),
    units       numeric(78,0),
    endpoint    numeric(78,0),
    outcome     text CHECK (outcome IN ('effect', 'no_effect', 'skipped', 'reverted')),
    detail      text,
    checked_at  timestamptz,
    PRIMARY KEY (intent_id, position),
    CONSTRAINT batch_items_item_key UNIQUE NULLS NOT DISTINCT (intent_id, entity, seq),
    CONSTRAINT batch_items_usage_check CHECK ((kind = 'usage') = (seq IS NOT NULL)),
    CONSTRAINT batch_items_report_check
        CHECK (kind = 'usage' OR (units IS NULL AND endpoint IS NULL)),
    CONSTRAINT batch_items_checked_check CHECK ((outcome IS NULL) = (checked_at IS NULL))
);
-- An item's rows (a usage report's by its seq) in every intent that held it: the latest refund
-- of an escrow, the intent a report is on its way in.
CREATE INDEX batch_items_entity_idx ON batch_items (chain_id, kind, entity, seq, intent_id);
-- keeper.settlement_totals' windows over the checked items, as range scans.
CREATE INDEX batch_items_checked_idx ON batch_items (checked_at) WHERE checked_at IS NOT NULL;
-- The backed-off items of an entity (few: the planners look them up for every due entity).
CREATE INDEX batch_items_backed_off_idx ON batch_items (chain_id, kind, entity)
    WHERE outcome IN ('no_effect', 'reverted');
-- Final intents above the indexed block (keeper.items_in_flight): after a reorg or a resync.
CREATE INDEX intents_final_block_idx ON intents (chain_id, block_number) WHERE state = 'final';

-- Every item of every batch intent, in its batch's order. A usage item of three fields was
-- planned before endpoints existed: endpoint 0.
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, seq, units, endpoint)
SELECT i.id, (x.n - 1)::integer, i.chain_id, i.kind,
       CASE WHEN i.kind = 'usage' THEN (x.v ->> 0)::numeric ELSE (x.v #>> '{}')::numeric END,
       CASE WHEN i.kind = 'usage' THEN (x.v ->> 2)::numeric END,
       CASE WHEN i.kind = 'usage' THEN (x.v ->> 1)::numeric END,
       CASE WHEN i.kind = 'usage' THEN COALESCE((x.v ->> 3)::numeric, 0) END
FROM intents i
CROSS JOIN LATERAL jsonb_array_elements(i.items) WITH ORDINALITY AS x (v, n)
WHERE i.kind IN ('settle', 'refund', 'usage');

-- Their outcomes: intent_items named an item by its id, or `id:seq` for a usage report.
UPDATE batch_items b
SET outcome = it.outcome, detail = it.detail, checked_at = it.checked_at
FROM intent_items it
WHERE it.intent_id = b.intent_id
  AND it.item = CASE WHEN b.kind = 'usage' THEN b.entity::text || ':' || b.seq::text
                     ELSE b.entity::text END;

-- Items taken out of their batch for reverting in simulation were no longer in intents.items:
-- they come after the batch's own items (a usage report's units and endpoint are not known).
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, seq, outcome, detail,
                         checked_at)
SELECT i.id,
       (jsonb_array_length(i.items) - 1
        + row_number() OVER (PARTITION BY i.id ORDER BY it.item))::integer,
       i.chain_id, i.kind,
       split_part(it.item, ':', 1)::numeric,
       CASE WHEN i.kind = 'usage' THEN split_part(it.item, ':', 2)::numeric END,
       it.outcome, it.detail, it.checked_at
FROM intent_items it
JOIN intents i ON i.id = it.intent_id
WHERE i.kind IN ('settle', 'refund', 'usage')
  AND NOT EXISTS (SELECT 1 FROM batch_items b
                  WHERE b.intent_id = it.intent_id
                    AND it.item = CASE WHEN b.kind = 'usage'
                                       THEN b.entity::text || ':' || b.seq::text
                                       ELSE b.entity::text END);

-- The planner views read batch_items: the in-flight and backed-off views change their item
-- column from text to numeric, so they and the views on top of them are made again.
DROP VIEW keeper.streams_due, keeper.escrows_refundable, keeper.items_in_flight,
    keeper.items_backed_off;

CREATE VIEW keeper.items_in_flight AS
SELECT i.chain_id, i.kind, b.entity AS item, i.id AS intent_id, i.key AS intent_key,
       i.state AS intent_state, b.seq, b.units, b.endpoint
FROM intents i
JOIN batch_items b ON b.intent_id = i.id
WHERE i.state IN ('planned', 'assigned', 'mined', 'confirmed')
  AND b.outcome IS DISTINCT FROM 'reverted'
  AND (i.state <> 'confirmed'
       OR i.block_number > COALESCE((SELECT c.indexed_block FROM ingest_cursor c
                                     WHERE c.chain_id = i.chain_id), -1))
UNION ALL
SELECT i.chain_id, i.kind, b.entity, i.id, i.key, i.state, b.seq, b.units, b.endpoint
FROM ingest_cursor c
JOIN intents i ON i.chain_id = c.chain_id AND i.state = 'final'
              AND i.block_number > c.indexed_block
JOIN batch_items b ON b.intent_id = i.id
WHERE b.outcome IS DISTINCT FROM 'reverted';

CREATE VIEW keeper.items_backed_off AS
SELECT b.chain_id, b.kind, b.entity AS item, b.outcome, b.detail, b.checked_at,
       b.checked_at + make_interval(secs => ps.backoff_seconds) AS retry_after, b.seq,
       b.intent_id
FROM batch_items b
JOIN planner_settings ps ON ps.chain_id = b.chain_id
WHERE b.outcome IN ('no_effect', 'reverted')
  AND b.checked_at + make_interval(secs => ps.backoff_seconds) > now();

CREATE VIEW keeper.streams_due AS
-- As in keeper.escrows_refundable: the streams on their way or backed off, computed once.
WITH held AS MATERIALIZED (
    SELECT f.chain_id, f.item FROM keeper.items_in_flight f WHERE f.kind = 'settle'
    UNION
    SELECT o.chain_id, o.item FROM keeper.items_backed_off o WHERE o.kind = 'settle'
)
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
WHERE b.status IN ('open', 'depleted')
  AND b.accrued_now > 0
  AND (b.runway_seconds <= ps.settle_horizon
       OR b.accrued_now >= ps.settle_min_amount
       OR b.as_of - b.settled_at >= ps.settle_max_interval)
  AND NOT EXISTS (SELECT 1 FROM held h WHERE h.chain_id = b.chain_id AND h.item = b.stream_id);

CREATE OR REPLACE VIEW keeper.escrows_expired AS
SELECT e.chain_id,
       e.escrow_id,
       keeper.hex(e.payer) AS payer,
       keeper.hex(e.payee) AS payee,
       e.amount,
       e.expires_at,
       keeper.to_time(e.expires_at) AS expires_at_time,
       c.indexed_timestamp - e.expires_at AS seconds_overdue,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of,
       e.created_block,
       e.updated_block,
       COALESCE(e.updated_block <= c.finalized_block, false) AS final,
       NOT COALESCE(e.updated_block <= c.finalized_block, false) AS pending,
       r.id AS refund_intent_id,
       r.key AS refund_intent_key,
       r.state AS refund_state,
       keeper.hex(r.tx_hash) AS refund_tx_hash
FROM escrows e
JOIN ingest_cursor c ON c.chain_id = e.chain_id
LEFT JOIN LATERAL (
    SELECT i.id, i.key, i.state, i.tx_hash
    FROM batch_items b
    JOIN intents i ON i.id = b.intent_id
    WHERE b.chain_id = e.chain_id AND b.kind = 'refund' AND b.entity = e.escrow_id
      AND b.outcome IS DISTINCT FROM 'reverted'
    ORDER BY b.intent_id DESC
    LIMIT 1
) r ON true
WHERE e.status = 'open' AND e.expires_at <= c.indexed_timestamp;

-- The escrows on their way or backed off are one set, computed once (MATERIALIZED) from the
-- live intents and the backed-off index, then anti-joined: few rows, whatever the statistics
-- say, where a lookup per escrow could search an entity's whole history.
CREATE VIEW keeper.escrows_refundable AS
WITH held AS MATERIALIZED (
    SELECT f.chain_id, f.item FROM keeper.items_in_flight f WHERE f.kind = 'refund'
    UNION
    SELECT o.chain_id, o.item FROM keeper.items_backed_off o WHERE o.kind = 'refund'
)
SELECT x.*
FROM keeper.escrows_expired x
WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.chain_id = x.chain_id AND h.item = x.escrow_id);

CREATE OR REPLACE VIEW keeper.usage_in_flight AS
SELECT f.chain_id,
       f.item AS stream_id,
       f.seq,
       f.units,
       f.intent_id,
       f.intent_key,
       f.intent_state,
       f.endpoint
FROM keeper.items_in_flight f
WHERE f.kind = 'usage';

CREATE OR REPLACE VIEW keeper.tx_pipeline AS
SELECT i.chain_id,
       i.id AS intent_id,
       i.kind,
       i.key,
       i.state,
       i.urgent,
       (SELECT count(*) FROM batch_items b
        WHERE b.intent_id = i.id AND b.outcome IS DISTINCT FROM 'reverted')::integer AS items,
       keeper.hex(i.signer) AS signer,
       i.nonce,
       (SELECT count(*) FROM attempts a WHERE a.intent_id = i.id) AS attempts,
       la.max_fee AS latest_max_fee,
       la.priority_fee AS latest_priority_fee,
       la.last_error AS latest_send_error,
       i.gas_limit,
       i.gas_used,
       i.effective_gas_price,
       (i.gas_used::numeric * i.effective_gas_price + COALESCE(i.l1_fee, 0))::numeric(78,0)
           AS cost_wei,
       keeper.hex(i.tx_hash) AS tx_hash,
       i.block_number,
       i.receipt_status,
       i.reason,
       i.created_at,
       i.assigned_at,
       i.mined_at,
       i.confirmed_at,
       i.updated_at,
       i.l1_fee,
       la.last_outcome AS latest_send_outcome
FROM intents i
LEFT JOIN LATERAL (
    SELECT a.max_fee, a.priority_fee, a.last_error, a.last_outcome FROM attempts a
    WHERE a.intent_id = i.id ORDER BY a.id DESC LIMIT 1
) la ON true;

CREATE OR REPLACE VIEW keeper.settlement_totals AS
SELECT c.chain_id,
       w.window_name,
       w.window_seconds,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of,
       st.settlements,
       st.settled_amount,
       st.settled_fee,
       ur.usage_reports,
       ur.usage_charged,
       ur.usage_fee,
       ur.usage_shortfall,
       rf.refunds,
       rf.refunded_amount,
       it.items_checked,
       it.items_effect,
       it.items_skipped,
       it.items_no_effect,
       it.items_reverted,
       CASE WHEN it.items_checked > 0
            THEN it.items_effect::numeric / it.items_checked END AS success_rate
FROM ingest_cursor c
CROSS JOIN (VALUES ('10m', 600), ('1h', 3600), ('6h', 21600), ('12h', 43200),
                   ('24h', 86400), ('7d', 604800), ('30d', 2592000))
           AS w (window_name, window_seconds)
-- OFFSET 0 keeps this subquery apart, so each window is bisected once, not once per table.
CROSS JOIN LATERAL (
    SELECT keeper.first_block_since(c.chain_id, c.indexed_timestamp - w.window_seconds + 1,
                                    c.start_block, c.indexed_block) AS first_block
    OFFSET 0
) f
CROSS JOIN LATERAL (
    SELECT count(*) AS settlements,
           COALESCE(sum(s.amount), 0)::numeric(78,0) AS settled_amount,
           COALESCE(sum(s.fee), 0)::numeric(78,0) AS settled_fee
    FROM stream_settled s
    WHERE s.chain_id = c.chain_id AND s.block_number BETWEEN f.first_block AND c.indexed_block
      AND s.block_time > c.indexed_timestamp - w.window_seconds
) st
CROSS JOIN LATERAL (
    SELECT count(*) AS usage_reports,
           COALESCE(sum(u.charged), 0)::numeric(78,0) AS usage_charged,
           COALESCE(sum(u.fee), 0)::numeric(78,0) AS usage_fee,
           COALESCE(sum(u.shortfall), 0)::numeric(78,0) AS usage_shortfall
    FROM usage_recorded u
    WHERE u.chain_id = c.chain_id AND u.block_number BETWEEN f.first_block AND c.indexed_block
      AND u.block_time > c.indexed_timestamp - w.window_seconds
) ur
CROSS JOIN LATERAL (
    SELECT count(*) AS refunds,
           COALESCE(sum(r.amount), 0)::numeric(78,0) AS refunded_amount
    FROM escrow_refunded r
    WHERE r.chain_id = c.chain_id AND r.block_number BETWEEN f.first_block AND c.indexed_block
      AND r.block_time > c.indexed_timestamp - w.window_seconds
) rf
CROSS JOIN LATERAL (
    SELECT count(*) AS items_checked,
           count(*) FILTER (WHERE x.outcome = 'effect') AS items_effect,
           count(*) FILTER (WHERE x.outcome = 'skipped') AS items_skipped,
           count(*) FILTER (WHERE x.outcome = 'no_effect') AS items_no_effect,
           count(*) FILTER (WHERE x.outcome = 'reverted') AS items_reverted
    FROM batch_items x
    WHERE x.chain_id = c.chain_id
      AND x.checked_at > now() - make_interval(secs => w.window_seconds)
) it
WHERE c.indexed_timestamp IS NOT NULL
ORDER BY c.chain_id, w.window_seconds;

DROP TABLE intent_items;
DROP INDEX intents_refund_items_idx;
ALTER TABLE intents DROP COLUMN items;
