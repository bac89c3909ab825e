-- Named queries of the usage oracle (keeper.usage). $1 is the chain id.

-- name: lock_intake
-- One validator per chain at a time (two daemons' passes, or a script calling
-- UsageOracle.intake), so no two of them hand out the same sequence number.
SELECT pg_advisory_xact_lock($1::bigint);

-- name: unvalidated
-- received_at is whatever timestamptz the row was given (the default is now(), but a producer
-- may set it): ±infinity and years Python's datetime cannot hold come as NULL, which the
-- intake rejects, with the value as text for the detail.
SELECT id, stream_id, units, producer_key, label, observed_at,
       CASE WHEN received_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
            THEN received_at END AS received_at,
       received_at::text AS received_text
FROM usage_inbox
WHERE verdict IS NULL AND (chain_id = $1 OR chain_id IS NULL)
ORDER BY id
LIMIT $2;

-- name: stream_states
-- The streams a batch of inbox rows names: status, the contract's last usage sequence (as
-- indexed) and the last sequence number already handed out.
SELECT s.stream_id, s.status, s.usage_seq,
       (SELECT max(r.seq) FROM usage_reports r
        WHERE r.chain_id = s.chain_id AND r.stream_id = s.stream_id) AS assigned_seq
FROM streams s
WHERE s.chain_id = $1 AND s.stream_id = ANY($2::numeric[]);

-- name: highest_stream
SELECT max(stream_id) FROM streams WHERE chain_id = $1;

-- name: accepted_keys
SELECT producer_key, inbox_id FROM usage_reports
WHERE chain_id = $1 AND producer_key = ANY($2::text[]);

-- name: set_verdicts
UPDATE usage_inbox u
SET verdict = v.verdict, reason = v.reason, detail = v.detail, validated_at = now(),
    chain_id = COALESCE(u.chain_id, $1)
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS v (id, verdict, reason, detail)
WHERE u.id = v.id AND u.verdict IS NULL;

-- name: unreconcile_reorged
-- Reconciliations whose deciding event is no longer indexed (its block was reorged away): the
-- report is pending again. Only blocks above the finalized one ($2, read first: as a constant
-- the planner knows how few rows are above it and uses the block index) can change.
UPDATE usage_reports r
SET state = 'pending', block_number = NULL, tx_hash = NULL, charged = NULL, fee = NULL,
    shortfall = NULL, reason = NULL, detail = NULL, reconciled_at = NULL
WHERE r.chain_id = $1 AND r.block_number > $2
  AND NOT EXISTS (SELECT 1 FROM usage_recorded e
                  WHERE e.chain_id = r.chain_id AND e.block_number = r.block_number
                    AND e.tx_hash = r.tx_hash AND e.stream_id = r.stream_id AND e.seq = r.seq)
  AND NOT EXISTS (SELECT 1 FROM stream_closed x
                  WHERE x.chain_id = r.chain_id AND x.block_number = r.block_number
                    AND x.tx_hash = r.tx_hash AND x.stream_id = r.stream_id);

-- name: reconcile_recorded
-- Pending reports the contract has passed (its last sequence is at or past theirs) and whose
-- UsageRecorded event is indexed: recorded, or rejected when the contract recorded different
-- units at that sequence number (another oracle used it).
UPDATE usage_reports r
SET state = CASE WHEN e.units = r.units THEN 'recorded' ELSE 'rejected' END,
    block_number = e.block_number,
    tx_hash = e.tx_hash,
    charged = CASE WHEN e.units = r.units THEN e.charged END,
    fee = CASE WHEN e.units = r.units THEN e.fee END,
    shortfall = CASE WHEN e.units = r.units THEN e.shortfall END,
    reason = CASE WHEN e.units <> r.units THEN 'sequence_taken' END,
    detail = CASE WHEN e.units <> r.units
                  THEN 'the contract recorded ' || e.units || ' units as sequence ' || e.seq
                       || ' of stream ' || e.stream_id || ' in block ' || e.block_number
                       || ' (another oracle reported on this stream)' END,
    reconciled_at = now()
FROM streams s, usage_recorded e
WHERE r.chain_id = $1 AND r.state = 'pending'
  AND s.chain_id = r.chain_id AND s.stream_id = r.stream_id AND r.seq <= s.usage_seq
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

-- name: usage_due
-- Pending reports the contract has not passed, of open streams with no usage on its way and
-- not backed off (their last usage intent failed within the backoff window), in stream and
-- sequence order (the pending index's order: no sort). The two exclusions are NOT EXISTS so
-- they become hashed anti-joins: a NOT IN over a set too large to hash would be searched
-- linearly for every pending report.
SELECT r.stream_id, r.seq, r.units, s.usage_seq, s.payee, s.price
FROM usage_reports r
JOIN streams s ON s.chain_id = r.chain_id AND s.stream_id = r.stream_id
WHERE r.chain_id = $1 AND r.state = 'pending' AND s.status = 'open' AND r.seq > s.usage_seq
  AND NOT EXISTS (SELECT 1 FROM keeper.usage_in_flight f
                  WHERE f.chain_id = $1 AND f.stream_id = r.stream_id)
  AND NOT EXISTS (
      SELECT 1
      FROM intents i
      JOIN planner_settings ps ON ps.chain_id = i.chain_id
      CROSS JOIN LATERAL jsonb_array_elements(i.items) AS item (value)
      WHERE i.chain_id = $1 AND i.kind = 'usage' AND i.state = 'failed'
        AND i.updated_at + make_interval(secs => ps.backoff_seconds) > now()
        AND (item.value ->> 0)::numeric(78,0) = r.stream_id)
ORDER BY r.chain_id, r.stream_id, r.seq
LIMIT $2;

-- name: finalized_block
SELECT COALESCE(finalized_block, -1) FROM ingest_cursor WHERE chain_id = $1;

-- name: transaction_time
SELECT now();
