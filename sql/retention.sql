-- Named queries of retention (keeper.db.retention). $1 is the chain id.
--
-- A batch selects at most `retention.batch_rows` parents (intents, usage reports, rejected inbox
-- rows) with FOR UPDATE SKIP LOCKED, then moves (archive_*) or deletes (delete_*) their
-- children and then them, by id, in one short transaction. The archive tables have the live
-- tables' columns in the same order (0017: LIKE), hence `SELECT * FROM moved`.

-- name: lock_timeout
-- A batch waits at most this long for a lock: it never holds up the planner or the manager; a
-- batch that times out is tried again at the next run.
SET LOCAL lock_timeout = '2s';

-- name: bounds
-- What a run may retire: rows finished before `cutoff` (now minus keep_days, $2 seconds, and
-- never less than the planners' backoff: a backed-off item or a recently failed usage intent
-- still holds its stream back) and, where a block is involved, at or below the finalized
-- block (NULL: nothing is known to be final, nothing is retired).
SELECT now() - make_interval(secs => GREATEST($2::double precision,
                                              COALESCE(ps.backoff_seconds, 0))) AS cutoff,
       c.finalized_block
FROM (SELECT $1::bigint AS chain_id) x
LEFT JOIN ingest_cursor c ON c.chain_id = x.chain_id
LEFT JOIN planner_settings ps ON ps.chain_id = x.chain_id;

-- name: finished_intents
-- Finished intents (final, failed, replan) unchanged since before the cutoff ($2), mined at or
-- below the finalized block ($3) if at all, oldest first (intents_finished_idx), at most $4.
-- Left in place: a final batch whose effects are not checked yet (effects_due), one whose
-- items were checked after the cutoff (keeper.items_backed_off), and the newest live nonce of
-- each signer (lane_next_nonce and keeper.signers read the lane's next nonce from it).
SELECT i.id
FROM intents i
WHERE i.chain_id = $1 AND i.state IN ('final', 'failed', 'replan')
  AND i.updated_at < $2
  AND (i.block_number IS NULL OR i.block_number <= $3)
  AND NOT (i.state = 'final' AND i.effects_checked_at IS NULL AND i.receipt_status = 1
           AND i.kind IN ('settle', 'refund', 'usage'))
  -- max(), not EXISTS (... n.nonce > i.nonce): one backward probe of intents_live_nonce_idx,
  -- where the planner may read an EXISTS as a scan that stops at the first higher nonce, and
  -- the lane's newest nonce has none.
  AND (i.nonce IS NULL OR i.state = 'replan'
       OR i.nonce < (SELECT max(n.nonce) FROM intents n
                     WHERE n.chain_id = i.chain_id AND n.signer = i.signer
                       AND n.nonce IS NOT NULL AND n.state <> 'replan'))
  -- A scalar subquery, run per intent on batch_items' primary key: as NOT EXISTS the planner
  -- may turn it into an anti-join that reads every item.
  AND COALESCE((SELECT max(b.checked_at) FROM batch_items b WHERE b.intent_id = i.id),
               '-infinity') < $2
ORDER BY i.updated_at
LIMIT $4
FOR UPDATE OF i SKIP LOCKED;

-- name: archive_tx_faults
WITH moved AS (DELETE FROM tx_faults WHERE intent_id = ANY($1::bigint[]) RETURNING *)
INSERT INTO archive.tx_faults SELECT * FROM moved;

-- name: delete_tx_faults
DELETE FROM tx_faults WHERE intent_id = ANY($1::bigint[]);

-- name: archive_attempts
WITH moved AS (DELETE FROM attempts WHERE intent_id = ANY($1::bigint[]) RETURNING *)
INSERT INTO archive.attempts SELECT * FROM moved;

-- name: delete_attempts
DELETE FROM attempts WHERE intent_id = ANY($1::bigint[]);

-- name: archive_batch_items
WITH moved AS (DELETE FROM batch_items WHERE intent_id = ANY($1::bigint[]) RETURNING *)
INSERT INTO archive.batch_items SELECT * FROM moved;

-- name: delete_batch_items
DELETE FROM batch_items WHERE intent_id = ANY($1::bigint[]);

-- name: archive_intents
WITH moved AS (DELETE FROM intents WHERE id = ANY($1::bigint[]) RETURNING *)
INSERT INTO archive.intents SELECT * FROM moved;

-- name: delete_intents
DELETE FROM intents WHERE id = ANY($1::bigint[]);

-- name: reconciled_reports
-- Reports recorded or rejected before the cutoff ($2) by an event at or below the finalized
-- block ($3), oldest first (usage_reports_reconciled_idx), at most $4. The intake numbers a
-- stream's next report max(usage_seq, max(seq) of its reports) + 1 (sql/usage.sql,
-- stream_states): a retired report must not lower that. A recorded report (or one whose
-- sequence number another oracle took) is at or below the contract's usage_seq, which a
-- finalized event never lets fall; a report rejected as stream_closed belongs to a stream that
-- takes no more usage. The condition on the stream says so, and keeps a report in place should
-- either ever not hold.
SELECT r.inbox_id
FROM usage_reports r
JOIN streams s ON s.chain_id = r.chain_id AND s.stream_id = r.stream_id
WHERE r.chain_id = $1 AND r.state <> 'pending'
  AND r.reconciled_at < $2
  AND r.block_number <= $3
  AND (r.seq <= s.usage_seq OR s.status <> 'open')
ORDER BY r.reconciled_at
LIMIT $4
FOR UPDATE OF r SKIP LOCKED;

-- name: archive_reports
-- The reports leave with their producer keys kept in usage_retired_keys (the intake's
-- duplicate check reads both).
WITH moved AS (DELETE FROM usage_reports WHERE inbox_id = ANY($1::bigint[]) RETURNING *),
kept AS (
    INSERT INTO usage_retired_keys (chain_id, producer_key, inbox_id)
    SELECT chain_id, producer_key, inbox_id FROM moved
)
INSERT INTO archive.usage_reports SELECT * FROM moved;

-- name: delete_reports
WITH moved AS (
    DELETE FROM usage_reports WHERE inbox_id = ANY($1::bigint[])
    RETURNING chain_id, producer_key, inbox_id
)
INSERT INTO usage_retired_keys (chain_id, producer_key, inbox_id)
SELECT chain_id, producer_key, inbox_id FROM moved;

-- name: rejected_rows
-- Inbox rows rejected at intake before the cutoff ($2), oldest first
-- (usage_inbox_rejected_idx), at most $3. They have no report and their producer key was never
-- accepted, so it is not kept: a corrected row may use it.
SELECT u.id
FROM usage_inbox u
WHERE u.verdict = 'rejected' AND u.validated_at < $2 AND u.chain_id = $1
ORDER BY u.validated_at
LIMIT $3
FOR UPDATE SKIP LOCKED;

-- name: archive_inbox
WITH moved AS (DELETE FROM usage_inbox WHERE id = ANY($1::bigint[]) RETURNING *)
INSERT INTO archive.usage_inbox SELECT * FROM moved;

-- name: delete_inbox
DELETE FROM usage_inbox WHERE id = ANY($1::bigint[]);
