-- 0008_operator_views: more for the operator to read.
--
-- `keeper.escrows_expired` shows the refund intent that carries each expired escrow, if any
-- (`keeper.escrows_refundable` is recreated unchanged on top of it, and so shows the same new
-- columns). `keeper.usage_daily` is split by the label of the keeper's usage reports.
-- `keeper.settlement_totals` sums the money events over fixed windows of chain time, with the
-- share of the keeper's batch items that had their effect.
--
-- The views are dropped by name, not with CASCADE: a view built on them that this file does
-- not know about stops the migration instead of disappearing silently.

DROP VIEW keeper.escrows_refundable;
DROP VIEW keeper.escrows_expired;
DROP VIEW keeper.usage_daily;

-- The refund intents that hold an escrow id, found per expired escrow. Without it, an escrow
-- no intent holds yet (just expired) costs a scan of every intent ever made, and the refund
-- planner reads this on each pass (through keeper.escrows_refundable). intents is written once
-- per batch, so the index costs little.
CREATE INDEX intents_refund_items_idx ON intents USING gin (items jsonb_path_ops)
    WITH (fastupdate = off) WHERE kind = 'refund';

-- keeper.settlement_totals' windows over the checked batch items, as range scans: intent_items
-- grows by a row per batch item for good, and is written once per item checked (never by COPY).
CREATE INDEX intent_items_checked_idx ON intent_items (checked_at);

-- Open escrows whose expiry has passed in chain time: what the refund planner works on. The
-- refund_* columns show the latest refund intent holding the escrow (NULL when none does): one
-- on its way, or a finished one whose refund the indexer has not seen yet (failed, replanned).
CREATE VIEW keeper.escrows_expired AS
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
    SELECT h.id, h.key, h.state, h.tx_hash
    -- OFFSET 0 keeps the search on intents_refund_items_idx: given ORDER BY id DESC LIMIT 1
    -- itself, the planner walks every intent backwards by primary key instead.
    FROM (SELECT i.id, i.key, i.state, i.tx_hash
          FROM intents i
          WHERE i.chain_id = e.chain_id AND i.kind = 'refund'
            AND i.items @> jsonb_build_array(e.escrow_id)
          OFFSET 0) h
    ORDER BY h.id DESC
    LIMIT 1
) r ON true
WHERE e.status = 'open' AND e.expires_at <= c.indexed_timestamp;

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

-- Usage per stream, label and UTC day (of the block's timestamp): applied reports from
-- UsageRecorded and skipped ones from UsageSkipped, in one row. The label is that of the
-- keeper's report with the same (chain, stream, seq), NULL for reports the keeper did not make
-- (including a sequence number another oracle used first: its report is `sequence_taken`).
-- One GROUP BY over a UNION ALL (not a join of two aggregates) so a filter on chain_id,
-- stream_id or day reaches both event tables' indexes.
CREATE VIEW keeper.usage_daily AS
SELECT u.chain_id,
       u.stream_id,
       r.label,
       date '1970-01-01' + (u.block_time / 86400)::integer AS day,
       count(*) FILTER (WHERE u.skip_reason IS NULL) AS reports,
       COALESCE(sum(u.units), 0)::numeric(78,0) AS units,
       COALESCE(sum(u.charged), 0)::numeric(78,0) AS charged,
       COALESCE(sum(u.fee), 0)::numeric(78,0) AS fee,
       COALESCE(sum(u.charged - u.fee), 0)::numeric(78,0) AS payee_credited,
       COALESCE(sum(u.shortfall), 0)::numeric(78,0) AS shortfall,
       max(u.seq) FILTER (WHERE u.skip_reason IS NULL)::numeric(78,0) AS last_seq,
       count(*) FILTER (WHERE u.skip_reason IS NOT NULL) AS skipped,
       count(*) FILTER (WHERE u.skip_reason = 4) AS skipped_replay,
       count(*) FILTER (WHERE u.skip_reason = 5) AS skipped_gap,
       count(*) FILTER (WHERE u.skip_reason = 6) AS skipped_bad_units,
       count(*) FILTER (WHERE u.skip_reason IN (1, 2)) AS skipped_not_open,
       max(u.block_number) AS last_block
FROM (
    SELECT chain_id, stream_id, block_number, block_time, seq, units, charged, fee, shortfall,
           NULL::smallint AS skip_reason
    FROM usage_recorded
    UNION ALL
    SELECT chain_id, stream_id, block_number, block_time, seq, NULL, NULL, NULL, NULL, reason
    FROM usage_skipped
) u
LEFT JOIN usage_reports r
       ON r.chain_id = u.chain_id AND r.stream_id = u.stream_id AND r.seq = u.seq
      AND r.reason IS DISTINCT FROM 'sequence_taken'
GROUP BY u.chain_id, u.stream_id, r.label, date '1970-01-01' + (u.block_time / 86400)::integer;

-- The first block in [p_from, p_to + 1] at or after which the money events (StreamSettled,
-- UsageRecorded, EscrowRefunded) have block_time >= p_since; p_to + 1 when there are none.
-- Block times never decrease as block numbers grow, so this bisects the block numbers through
-- the event tables' primary keys: about log2(p_to - p_from) index probes per table, where a
-- filter on block_time alone would read the whole history. keeper.settlement_totals then
-- reads only the window's rows, by primary key. (An index on block_time would do the same,
-- but every backfilled row would pay for it in COPY; `blocks` keeps too few rows to help.)
CREATE FUNCTION keeper.first_block_since(p_chain bigint, p_since bigint, p_from bigint,
                                         p_to bigint)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH RECURSIVE bisect (lo, hi) AS (
        SELECT p_from, p_to + 1
        UNION ALL
        SELECT CASE WHEN probe.block_time >= p_since OR probe.block_time IS NULL
                    THEN b.lo ELSE m.mid + 1 END,
               CASE WHEN probe.block_time >= p_since OR probe.block_time IS NULL
                    THEN m.mid ELSE b.hi END
        FROM bisect b
        CROSS JOIN LATERAL (SELECT (b.lo + b.hi) / 2 AS mid) m
        -- The time of the first money event at or after block `mid` (LEAST skips the tables
        -- without one; NULL when none has).
        CROSS JOIN LATERAL (
            SELECT LEAST(
                (SELECT s.block_time FROM stream_settled s
                 WHERE s.chain_id = p_chain AND s.block_number >= m.mid
                 ORDER BY s.block_number LIMIT 1),
                (SELECT u.block_time FROM usage_recorded u
                 WHERE u.chain_id = p_chain AND u.block_number >= m.mid
                 ORDER BY u.block_number LIMIT 1),
                (SELECT r.block_time FROM escrow_refunded r
                 WHERE r.chain_id = p_chain AND r.block_number >= m.mid
                 ORDER BY r.block_number LIMIT 1)) AS block_time
        ) probe
        WHERE b.lo < b.hi
    )
    SELECT lo FROM bisect WHERE lo >= hi;
END;

-- Money moved and work done per chain over the last 10 minutes ... 30 days of chain time: the
-- window `1h` holds the events with as_of - 3600 < block_time <= as_of, as_of being the
-- indexed head's timestamp. Settlements, usage and refunds count every event, whoever sent
-- it. The batch items are the keeper's own, by their outcome; success_rate is the share that
-- had their effect (NULL without items). Items are placed by intent_items.checked_at against
-- the wall clock (now() - window_seconds < checked_at): an item has no chain time of its own,
-- and one reverted in simulation may never reach a block. On a live chain the two clocks
-- differ by the indexer's lag (keeper.indexer_status.wall_lag_seconds).
-- The event scans are bounded above by the indexed block too: Postgres estimates a range between
-- two parameters as narrow, an open `>=` as a third of the table, and on millions of events
-- that estimate triggers a JIT compilation slower than the query itself.
CREATE VIEW keeper.settlement_totals AS
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
    FROM intent_items x
    JOIN intents i ON i.id = x.intent_id
    WHERE i.chain_id = c.chain_id
      AND x.checked_at > now() - make_interval(secs => w.window_seconds)
) it
WHERE c.indexed_timestamp IS NOT NULL
ORDER BY c.chain_id, w.window_seconds;
