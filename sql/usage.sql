-- Named queries of the usage oracle (keeper.usage). $1 is the chain id.

-- name: lock_intake
-- One validator per chain at a time (two daemons' passes, or a script calling
-- UsageOracle.intake), so no two of them hand out the same sequence number.
SELECT pg_advisory_xact_lock($1::bigint);

-- name: unvalidated
-- received_at is whatever timestamptz the row was given (the default is now(), but a producer
-- may set it): ±infinity and years Python's datetime cannot hold come as NULL, which the
-- intake rejects, with the value as text for the detail.
SELECT id, stream_id, units, producer_key, label, observed_at, endpoint,
       CASE WHEN received_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
            THEN received_at END AS received_at,
       received_at::text AS received_text
FROM usage_inbox
WHERE verdict IS NULL AND (chain_id = $1 OR chain_id IS NULL)
ORDER BY id
LIMIT $2;

-- name: stream_states
-- The streams a batch of inbox rows names: status (and when a closing one stops taking usage),
-- payee and billing mode, the contract's last usage sequence (as indexed) and the last
-- sequence number already handed out.
SELECT s.stream_id, s.status, s.close_at, s.payee, s.price_list, s.usage_seq,
       (SELECT max(r.seq) FROM usage_reports r
        WHERE r.chain_id = s.chain_id AND r.stream_id = s.stream_id) AS assigned_seq
FROM streams s
WHERE s.chain_id = $1 AND s.stream_id = ANY($2::text::numeric[]);

-- name: endpoints_named
-- The ids of the endpoints a batch of inbox rows names, by (payee, name).
SELECT e.payee, e.name, e.endpoint
FROM endpoints e
JOIN unnest($2::bytea[], $3::text[]) AS w (payee, name)
  ON e.payee = w.payee AND e.name = w.name
WHERE e.chain_id = $1;

-- name: intake_context
-- In one round trip: the transaction's time, the indexed head's timestamp (chain time as far
-- as the index goes) and the highest indexed stream id.
SELECT now() AS now,
       (SELECT c.indexed_timestamp FROM ingest_cursor c WHERE c.chain_id = $1) AS chain_time,
       (SELECT max(s.stream_id) FROM streams s WHERE s.chain_id = $1) AS highest;

-- name: accepted_keys
-- The keys of accepted rows: in usage_reports, or in usage_retired_keys once retention took
-- their report (keeper.db.retention), so a row replayed after that is refused all the same.
SELECT producer_key, inbox_id FROM usage_reports
WHERE chain_id = $1 AND producer_key = ANY($2::text[])
UNION ALL
SELECT producer_key, inbox_id FROM usage_retired_keys
WHERE chain_id = $1 AND producer_key = ANY($2::text[]);

-- name: set_verdicts
-- ids, verdicts and reason codes as array literals (keeper.db.array_literal);
-- the details, free text, as a text array.
UPDATE usage_inbox u
SET verdict = v.verdict, reason = v.reason, detail = v.detail, validated_at = now(),
    chain_id = COALESCE(u.chain_id, $1)
FROM unnest($2::text::bigint[], $3::text::text[], $4::text::text[], $5::text[])
     AS v (id, verdict, reason, detail)
WHERE u.id = v.id AND u.verdict IS NULL;

-- name: reorgs_unchecked
-- The newest reorg of the chain (0: none), and the newest whose effect on usage was undone
-- (NULL: never looked).
SELECT (SELECT COALESCE(max(g.id), 0) FROM reorgs g WHERE g.chain_id = $1) AS latest,
       (SELECT c.reorg_id FROM usage_reorgs_checked c WHERE c.chain_id = $1) AS checked;

-- name: mark_reorgs_checked
INSERT INTO usage_reorgs_checked (chain_id, reorg_id) VALUES ($1, $2)
ON CONFLICT (chain_id) DO UPDATE SET reorg_id = EXCLUDED.reorg_id;

-- name: unreconcile_reorged
-- Reconciliations whose deciding event is no longer indexed (its block was reorged away): the
-- report is pending again. Only blocks above the finalized one ($2, read first: as a constant
-- the planner knows how few rows are above it and uses the block index) can change.
UPDATE usage_reports r
SET state = 'pending', block_number = NULL, tx_hash = NULL, charged = NULL, fee = NULL,
    shortfall = NULL, price = NULL, reason = NULL, detail = NULL, reconciled_at = NULL
WHERE r.chain_id = $1 AND r.block_number > $2
  AND NOT EXISTS (SELECT 1 FROM usage_recorded e
                  WHERE e.chain_id = r.chain_id AND e.block_number = r.block_number
                    AND e.tx_hash = r.tx_hash AND e.stream_id = r.stream_id AND e.seq = r.seq)
  AND NOT EXISTS (SELECT 1 FROM stream_closed x
                  WHERE x.chain_id = r.chain_id AND x.block_number = r.block_number
                    AND x.tx_hash = r.tx_hash AND x.stream_id = r.stream_id)
  AND NOT EXISTS (SELECT 1 FROM stream_close_requested x
                  WHERE x.chain_id = r.chain_id AND x.block_number = r.block_number
                    AND x.tx_hash = r.tx_hash AND x.stream_id = r.stream_id);

-- name: reconcile_recorded
-- Pending reports the contract has passed (its last sequence is at or past theirs) and whose
-- UsageRecorded event is indexed: recorded (with the price charged), or rejected when the
-- contract recorded different units or another endpoint at that sequence number (another
-- oracle used it).
-- The pending reports at or below their stream's sequence are found first: the pending reports
-- by their partial index, then each of their streams once by its primary key (OFFSET 0: a
-- lookup per stream, never a pass over every stream; a stream has many pending reports).
WITH pending AS MATERIALIZED (
    SELECT r.inbox_id, r.stream_id, r.seq FROM usage_reports r
    WHERE r.chain_id = $1 AND r.state = 'pending'
),
passed AS MATERIALIZED (
    SELECT p.inbox_id
    FROM (SELECT DISTINCT d.stream_id FROM pending d) d
    CROSS JOIN LATERAL (
        SELECT x.usage_seq FROM streams x
        WHERE x.chain_id = $1 AND x.stream_id = d.stream_id
        OFFSET 0
    ) s
    JOIN pending p ON p.stream_id = d.stream_id AND p.seq <= s.usage_seq
)
UPDATE usage_reports r
SET state = CASE WHEN e.units = r.units AND e.endpoint = r.endpoint
                 THEN 'recorded' ELSE 'rejected' END,
    block_number = e.block_number,
    tx_hash = e.tx_hash,
    charged = CASE WHEN e.units = r.units AND e.endpoint = r.endpoint THEN e.charged END,
    fee = CASE WHEN e.units = r.units AND e.endpoint = r.endpoint THEN e.fee END,
    shortfall = CASE WHEN e.units = r.units AND e.endpoint = r.endpoint THEN e.shortfall END,
    price = CASE WHEN e.units = r.units AND e.endpoint = r.endpoint THEN e.price END,
    reason = CASE WHEN e.units <> r.units OR e.endpoint <> r.endpoint
                  THEN 'sequence_taken' END,
    detail = CASE WHEN e.units <> r.units OR e.endpoint <> r.endpoint
                  THEN 'the contract recorded ' || e.units || ' units of endpoint '
                       || e.endpoint || ' as sequence ' || e.seq || ' of stream ' || e.stream_id
                       || ' in block ' || e.block_number
                       || ' (another oracle reported on this stream)' END,
    reconciled_at = now()
FROM passed p, usage_recorded e
WHERE r.inbox_id = p.inbox_id AND r.state = 'pending'
  AND e.chain_id = r.chain_id AND e.stream_id = r.stream_id AND e.seq = r.seq
RETURNING r.state;

-- name: reconcile_closed
-- Pending reports of a stream closed before they were recorded: rejected (the contract skips
-- them). Runs after reconcile_recorded in the same transaction.
UPDATE usage_reports r
SET state = 'rejected', block_number = x.block_number, tx_hash = x.tx_hash,
    reason = 'stream_closed',
    detail = 'stream ' || r.stream_id || ' was closed in block ' || x.block_number
             || ' before this report was recorded',
    reconciled_at = now()
FROM streams s, stream_closed x
WHERE r.chain_id = $1 AND r.state = 'pending'
  AND s.chain_id = r.chain_id AND s.stream_id = r.stream_id AND s.status = 'closed'
  AND r.seq > s.usage_seq
  AND x.chain_id = s.chain_id AND x.stream_id = s.stream_id;

-- name: reconcile_closing
-- Pending reports of a closing stream whose close_at has passed by the time of the finalized
-- block: the contract skips every report from close_at on, and no reorg can bring back a
-- block before it, so they will never be charged. Rejected (`stream_closed`) with the block
-- and transaction of the close request, without waiting for the stream's final close (which
-- may never be sent). Runs after reconcile_recorded in the same transaction.
WITH final AS (
    SELECT max(b.timestamp) AS t
    FROM ingest_cursor c
    JOIN blocks b ON b.chain_id = c.chain_id AND b.number <= c.finalized_block
    WHERE c.chain_id = $1
)
UPDATE usage_reports r
SET state = 'rejected', block_number = x.block_number, tx_hash = x.tx_hash,
    reason = 'stream_closed',
    detail = 'stream ' || r.stream_id || ' took usage until ' || s.close_at
             || ' (unix seconds, chain time; its close was requested in block '
             || x.block_number || ') and this report was not recorded by then',
    reconciled_at = now()
FROM final, streams s, stream_close_requested x
WHERE r.chain_id = $1 AND r.state = 'pending'
  AND s.chain_id = r.chain_id AND s.stream_id = r.stream_id AND s.status = 'closing'
  AND r.seq > s.usage_seq AND s.close_at <= final.t
  AND x.chain_id = s.chain_id AND x.stream_id = s.stream_id AND x.close_at = s.close_at;

-- name: usage_due
-- Pending reports the contract has not passed, of streams that take usage (open, or closing
-- before their close_at in chain time: the indexed head's timestamp) with no usage on its way
-- and not backed off (their last usage intent failed within the backoff window), in stream
-- and sequence order, at most $2. The streams held back are one set (`held`), computed once
-- (MATERIALIZED) from the live or recently failed usage intents (the failed ones by
-- intents_failed_idx, a range of updated_at) to their items. The first $2 pending reports of
-- the streams not held are read in the pending index's order (`due`), then each of their
-- streams once by its primary key (OFFSET 0: a lookup per stream, never a pass over every
-- stream; a stream has many reports). The conditions on the stream come after that limit:
-- the reports they leave out are few and brief (reconciled earlier in the same transaction;
-- a closing stream's until the finalized block passes its close_at), so they never hold the
-- others back for long.
-- Numbers come as text (a Python int from it is exact and far cheaper than from a Decimal; a
-- value with a fraction would not parse): the pass reads up to 20,000 rows.
-- price: what the report costs per unit at the head, as the contract's priceInForce: an
-- own-price stream's own price whatever the endpoint, a price-list stream's endpoint price (a
-- pending price whose effective time has come is in force).
-- urgent_reason: the deadline the report must beat, if any: its stream stops taking usage at
-- close_at (`stream_closing`), or the price it is charged changes: the stream's own price
-- (`price_change`) or, on a price list, its endpoint's (`endpoint_price_change`).
WITH head AS (
    SELECT COALESCE(max(indexed_timestamp), 0) AS t FROM ingest_cursor WHERE chain_id = $1
),
held AS MATERIALIZED (
    SELECT f.stream_id FROM keeper.usage_in_flight f WHERE f.chain_id = $1
    UNION
    SELECT b.entity
    FROM intents i
    JOIN planner_settings ps ON ps.chain_id = i.chain_id
    JOIN batch_items b ON b.intent_id = i.id
    WHERE i.chain_id = $1 AND i.kind = 'usage' AND i.state = 'failed'
      AND i.updated_at > now() - make_interval(secs => ps.backoff_seconds)
),
due AS MATERIALIZED (
    SELECT r.stream_id, r.seq, r.units, r.endpoint
    FROM usage_reports r
    WHERE r.chain_id = $1 AND r.state = 'pending'
      AND NOT EXISTS (SELECT 1 FROM held h WHERE h.stream_id = r.stream_id)
    ORDER BY r.chain_id, r.stream_id, r.seq
    LIMIT $2
),
stream AS MATERIALIZED (
    SELECT d.stream_id, s.*
    FROM (SELECT DISTINCT x.stream_id FROM due x) d
    CROSS JOIN LATERAL (
        SELECT x.usage_seq, x.payee, x.price_list, x.price, x.price_pending,
               x.price_effective_at, x.status, x.close_at
        FROM streams x
        WHERE x.chain_id = $1 AND x.stream_id = d.stream_id
        OFFSET 0
    ) s
)
SELECT r.stream_id::text, r.seq::text, r.units::text, s.usage_seq::text, s.payee,
       r.endpoint::text,
       COALESCE(CASE WHEN NOT s.price_list
                     THEN CASE WHEN s.price_effective_at <= head.t THEN s.price_pending
                               ELSE s.price END
                     ELSE CASE WHEN e.price_effective_at <= head.t THEN e.price_pending
                               ELSE e.price END
                END, 0)::text AS price,
       CASE WHEN s.status = 'closing' THEN 'stream_closing'
            WHEN NOT s.price_list AND s.price_effective_at > head.t THEN 'price_change'
            WHEN s.price_list AND e.price_effective_at > head.t THEN 'endpoint_price_change'
       END AS urgent_reason
FROM due r
CROSS JOIN head
JOIN stream s ON s.stream_id = r.stream_id
LEFT JOIN endpoints e
       ON e.chain_id = $1 AND e.payee = s.payee AND e.endpoint = r.endpoint
WHERE r.seq > s.usage_seq
  AND (s.status = 'open' OR (s.status = 'closing' AND s.close_at > head.t))
ORDER BY r.stream_id, r.seq;

-- name: finalized_block
SELECT COALESCE(finalized_block, -1) FROM ingest_cursor WHERE chain_id = $1;

