-- Named queries of the transaction manager's outbox (keeper.db.outbox). $1 is the chain id.

-- name: insert_intent
-- ON CONFLICT DO NOTHING: an existing key means "already planned" (no row returned).
INSERT INTO intents (chain_id, kind, key, target, calldata, value, urgent)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (chain_id, key) DO NOTHING
RETURNING id;

-- name: insert_intents
-- Intents in request order, one array per column (ids ascend with it, as one INSERT each would
-- give them). ON CONFLICT DO NOTHING: a key that exists, or one an earlier request of the same
-- statement took, means "already planned" (no row returned for it).
INSERT INTO intents (chain_id, kind, key, target, calldata, value, urgent)
SELECT $1, r.kind, r.key, r.target, r.calldata, r.value::numeric, r.urgent
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::text[], $7::boolean[])
     WITH ORDINALITY AS r (kind, key, target, calldata, value, urgent, n)
ORDER BY r.n
ON CONFLICT (chain_id, key) DO NOTHING
RETURNING id, key;

-- name: insert_items
-- New batch intents' items, one array per column: the intent, the item's position in its
-- calldata, the kind, then keeper.kinds.item_columns; each array an array literal in one text
-- parameter (keeper.db.array_literal).
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, seq, units, endpoint)
SELECT r.intent_id, r.position, $1, r.kind, r.entity, r.seq, r.units, r.endpoint
FROM unnest($2::text::bigint[], $3::text::integer[], $4::text::text[], $5::text::numeric[],
            $6::text::numeric[], $7::text::numeric[], $8::text::numeric[])
     AS r (intent_id, position, kind, entity, seq, units, endpoint);

-- name: items_of_intents
-- The items still in their batches (not taken out for reverting), per intent, in order.
SELECT intent_id, kind, entity, seq, units, endpoint
FROM batch_items
WHERE chain_id = $1 AND intent_id = ANY($2::bigint[]) AND outcome IS DISTINCT FROM 'reverted'
ORDER BY intent_id, position;

-- name: intents_by_keys
SELECT id, key, state FROM intents WHERE chain_id = $1 AND key = ANY($2::text[]);

-- name: get_intent
SELECT * FROM intents WHERE id = $1;

-- name: planned_intents
-- Oldest first, urgent work ahead of the rest. (Only the leader runs a manager; assign_intent's
-- `state = 'planned'` condition still makes a second one harmless.)
SELECT id, kind, key, target, calldata, value, urgent
FROM intents
WHERE chain_id = $1 AND state = 'planned'
ORDER BY urgent DESC, id
LIMIT $2;

-- name: assign_intent
UPDATE intents
SET state = 'assigned', signer = $2, nonce = $3, gas_limit = $4, assigned_at = now()
WHERE id = $1 AND state = 'planned';

-- name: fail_intent
UPDATE intents SET state = 'failed', reason = $2 WHERE id = $1;

-- name: lane_next_nonce
-- The next nonce of a signer's lane according to the outbox (live intents only).
SELECT COALESCE(max(nonce) + 1, 0) FROM intents
WHERE chain_id = $1 AND signer = $2 AND nonce IS NOT NULL AND state <> 'replan';

-- name: lane_in_flight
-- Assigned-but-unmined intents per signer: the in-flight load that least-loaded assignment uses.
SELECT signer, count(*) AS in_flight FROM intents
WHERE chain_id = $1 AND state = 'assigned'
GROUP BY signer;

-- name: insert_attempt
INSERT INTO attempts (intent_id, chain_id, signer, nonce, max_fee, priority_fee, legacy,
                      gas_limit, raw, tx_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id;

-- name: mark_broadcast
UPDATE attempts
SET state = CASE WHEN state = 'signed' THEN 'broadcast' ELSE state END,
    broadcast_at = COALESCE(broadcast_at, now()), broadcast_block = COALESCE(broadcast_block, $2),
    broadcasts = broadcasts + 1, last_error = $3, last_outcome = $4
WHERE id = $1;

-- name: attempts_of
SELECT id, tx_hash, raw, state, max_fee, priority_fee, legacy, gas_limit, broadcast_block,
       broadcasts
FROM attempts WHERE intent_id = $1 ORDER BY id;

-- name: open_intents
-- Everything sent but not final: the confirmation loop's work list.
SELECT id, kind, key, signer, nonce, state, gas_limit, tx_hash, block_number, block_hash, urgent,
       target, calldata, value
FROM intents
WHERE chain_id = $1 AND state IN ('assigned', 'mined', 'confirmed')
ORDER BY signer, nonce;

-- name: mark_mined
UPDATE intents
SET state = 'mined', tx_hash = $2, block_number = $3, block_hash = $4, receipt_status = $5,
    gas_used = $6, effective_gas_price = $7, l1_fee = $8, mined_at = now()
WHERE id = $1 AND state = 'assigned';

-- name: attempt_mined
UPDATE attempts SET state = 'mined' WHERE tx_hash = $1;

-- name: attempts_superseded
-- The other attempts of an intent whose receipt was found can never be mined.
UPDATE attempts SET state = 'superseded'
WHERE intent_id = $1 AND tx_hash <> $2 AND state IN ('signed', 'broadcast');

-- name: unmine
-- The receipt's block was reorged out: back to assigned, to be rebroadcast.
UPDATE intents
SET state = 'assigned', tx_hash = NULL, block_number = NULL, block_hash = NULL,
    receipt_status = NULL, gas_used = NULL, effective_gas_price = NULL, l1_fee = NULL,
    mined_at = NULL,
    confirmed_at = NULL, effects_checked_at = NULL
WHERE id = $1 AND state = $2 AND state IN ('mined', 'confirmed');

-- name: forget_effects
-- The checked effects of an unmined intent belonged to the orphaned block.
UPDATE batch_items SET outcome = NULL, detail = NULL, checked_at = NULL
WHERE intent_id = $1 AND outcome IN ('effect', 'no_effect', 'skipped');

-- name: unmine_attempts
-- Superseded attempts stay so: the receipt search looks at every attempt's hash anyway.
UPDATE attempts SET state = 'broadcast' WHERE intent_id = $1 AND state = 'mined';

-- name: mark_confirmed
UPDATE intents SET state = 'confirmed', confirmed_at = now() WHERE id = $1 AND state = 'mined';

-- name: mark_final
UPDATE intents SET state = 'final' WHERE id = $1 AND state = 'confirmed';

-- name: mark_replan
UPDATE intents SET state = 'replan', reason = $2 WHERE id = $1 AND state = 'assigned';

-- name: spent_since
-- Gas spent (gas_used * effective price, plus an L2's L1 fee) by mined intents since $2: the
-- hourly budget.
SELECT COALESCE(sum(gas_used::numeric * effective_gas_price + COALESCE(l1_fee, 0)), 0)
FROM intents
WHERE chain_id = $1 AND mined_at >= $2 AND gas_used IS NOT NULL;

-- name: unsent_attempts
-- Signed but never broadcast (a crash between storing and sending): send these bytes first.
SELECT a.id, a.raw, a.tx_hash, a.intent_id, a.signer, a.nonce, i.key
FROM attempts a JOIN intents i ON i.id = a.intent_id
WHERE a.chain_id = $1 AND a.state = 'signed' AND i.state = 'assigned'
ORDER BY a.signer, a.nonce, a.id;

-- name: latest_attempts
-- The newest attempt of every assigned intent (what is rebroadcast or bumped).
-- first_broadcast_block: when the intent's first attempt went out (the purge threshold counts
-- from there, not from the latest bump).
SELECT DISTINCT ON (a.intent_id) a.id, a.intent_id, a.signer, a.nonce, a.raw, a.tx_hash,
       a.max_fee, a.priority_fee, a.legacy, a.gas_limit, a.broadcast_block, i.target,
       i.calldata, i.value, i.key, i.kind,
       (SELECT min(f.broadcast_block) FROM attempts f WHERE f.intent_id = a.intent_id)
           AS first_broadcast_block
FROM attempts a JOIN intents i ON i.id = a.intent_id
WHERE a.chain_id = $1 AND i.state = 'assigned'
ORDER BY a.intent_id, a.id DESC;

-- name: all_attempt_hashes
-- Every attempt hash of the open intents: receipts are looked for across all of them.
SELECT a.intent_id, a.tx_hash FROM attempts a JOIN intents i ON i.id = a.intent_id
WHERE a.chain_id = $1 AND i.state IN ('assigned', 'mined', 'confirmed');

-- name: record_send_error
-- A refused send (insufficient funds, underpriced, ...): keep the node's answer on the attempt
-- without changing its state; a 'signed' attempt stays signed and is sent again next pass.
UPDATE attempts SET last_error = $2, last_outcome = $3 WHERE id = $1;

-- name: in_flight_worst_case
-- The most the assigned-but-unmined intents can still cost: gas_limit * max_fee of each one's
-- latest attempt (the other half of the hourly budget, next to spent_since).
SELECT COALESCE(sum(l.gas_limit::numeric * l.max_fee), 0) FROM (
    SELECT DISTINCT ON (a.intent_id) a.gas_limit, a.max_fee
    FROM attempts a JOIN intents i ON i.id = a.intent_id
    WHERE a.chain_id = $1 AND i.state = 'assigned'
    ORDER BY a.intent_id, a.id DESC
) l;

-- name: supersede_attempts
-- Every unmined attempt of an intent whose nonce was given to a purge.
UPDATE attempts SET state = 'superseded'
WHERE intent_id = $1 AND state IN ('signed', 'broadcast');

-- name: rewrite_batch
-- A batch made smaller (its items' changes follow: item_outcome, drop_items); only before
-- anything was signed.
UPDATE intents SET calldata = $2, reason = $3
WHERE id = $1 AND state = 'planned'
RETURNING kind;

-- name: drop_items
-- The unchecked items of a rewritten batch that are not among the kept ones ($2, $3: their
-- entities and sequence numbers): planned again.
DELETE FROM batch_items b
WHERE b.intent_id = $1 AND b.outcome IS NULL
  AND NOT EXISTS (SELECT 1 FROM unnest($2::numeric[], $3::numeric[]) AS k (entity, seq)
                  WHERE k.entity = b.entity AND k.seq IS NOT DISTINCT FROM b.seq);

-- name: note_planned
-- Why a planned intent is waiting (a simulation that could not run, ...); it stays planned.
UPDATE intents SET reason = $2 WHERE id = $1 AND state = 'planned';

-- name: item_outcome
UPDATE batch_items SET outcome = $4, detail = $5, checked_at = now()
WHERE intent_id = $1 AND entity = $2 AND seq IS NOT DISTINCT FROM $3;

-- name: effects_due
-- Confirmed batches whose items were not checked yet, once the indexer has their block (and
-- does not hold a different block at that height: it may still be on the other side of a
-- reorg).
SELECT i.id, i.kind, i.key, i.tx_hash, i.block_number
FROM intents i
JOIN ingest_cursor c ON c.chain_id = i.chain_id
WHERE i.chain_id = $1 AND i.state IN ('confirmed', 'final') AND i.effects_checked_at IS NULL
  AND i.kind IN ('settle', 'refund', 'usage') AND i.receipt_status = 1
  AND i.block_number <= c.indexed_block
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.chain_id = i.chain_id AND b.number = i.block_number
                    AND b.hash <> i.block_hash)
ORDER BY i.id
LIMIT 100;

-- name: mark_effects_checked
UPDATE intents SET effects_checked_at = now() WHERE id = $1;

-- name: settle_effects
-- Per item of a settle batch ($2): settled, or skipped with the contract's reason, in the
-- intent's own transaction.
SELECT b.entity, b.seq,
       EXISTS (SELECT 1 FROM stream_settled e
               WHERE e.chain_id = $1 AND e.stream_id = b.entity
                 AND e.block_number = i.block_number AND e.tx_hash = i.tx_hash) AS effect,
       (SELECT s.reason FROM settle_skipped s
        WHERE s.chain_id = $1 AND s.stream_id = b.entity AND s.block_number = i.block_number
          AND s.tx_hash = i.tx_hash
        LIMIT 1) AS skip_reason
FROM batch_items b
JOIN intents i ON i.id = b.intent_id
WHERE b.intent_id = $2 AND b.outcome IS DISTINCT FROM 'reverted'
ORDER BY b.position;

-- name: refund_effects
SELECT b.entity, b.seq,
       EXISTS (SELECT 1 FROM escrow_refunded e
               WHERE e.chain_id = $1 AND e.escrow_id = b.entity
                 AND e.block_number = i.block_number AND e.tx_hash = i.tx_hash) AS effect,
       (SELECT s.reason FROM refund_skipped s
        WHERE s.chain_id = $1 AND s.escrow_id = b.entity AND s.block_number = i.block_number
          AND s.tx_hash = i.tx_hash
        LIMIT 1) AS skip_reason
FROM batch_items b
JOIN intents i ON i.id = b.intent_id
WHERE b.intent_id = $2 AND b.outcome IS DISTINCT FROM 'reverted'
ORDER BY b.position;

-- name: usage_effects
-- Per (stream id, seq) report of a usage batch.
SELECT b.entity, b.seq,
       EXISTS (SELECT 1 FROM usage_recorded e
               WHERE e.chain_id = $1 AND e.stream_id = b.entity AND e.seq = b.seq
                 AND e.block_number = i.block_number AND e.tx_hash = i.tx_hash) AS effect,
       (SELECT s.reason FROM usage_skipped s
        WHERE s.chain_id = $1 AND s.stream_id = b.entity AND s.seq = b.seq
          AND s.block_number = i.block_number AND s.tx_hash = i.tx_hash
        LIMIT 1) AS skip_reason
FROM batch_items b
JOIN intents i ON i.id = b.intent_id
WHERE b.intent_id = $2 AND b.outcome IS DISTINCT FROM 'reverted'
ORDER BY b.position;

-- name: unsure_attempts
-- Attempts (of still-assigned intents) whose last send had an unsure answer: sent again.
SELECT a.id, a.raw, a.tx_hash, a.intent_id, a.signer, a.nonce, i.key
FROM attempts a JOIN intents i ON i.id = a.intent_id
WHERE a.chain_id = $1 AND a.id = ANY($2::bigint[]) AND a.state = 'broadcast'
  AND i.state = 'assigned'
ORDER BY a.signer, a.nonce, a.id;

-- name: upsert_signer_state
INSERT INTO signer_state (chain_id, signer, balance, low_balance) VALUES ($1, $2, $3, $4)
ON CONFLICT (chain_id, signer) DO UPDATE
SET balance = EXCLUDED.balance, low_balance = EXCLUDED.low_balance, updated_at = now();

-- name: lock_lane
-- A signer's nonce lane, locked to the end of the transaction (see keeper.db.outbox.lane_lock_key).
SELECT pg_advisory_xact_lock($1::bigint);

-- name: record_fault
-- An unexpected error while handling one intent (keeper.tx_faults): the latest, counted.
INSERT INTO tx_faults (intent_id, chain_id, stage, error, failures, retry_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
ON CONFLICT (intent_id) DO UPDATE
SET stage = EXCLUDED.stage, error = EXCLUDED.error, failures = EXCLUDED.failures,
    last_at = now(), retry_at = EXCLUDED.retry_at;

-- name: clear_fault
DELETE FROM tx_faults WHERE intent_id = $1 AND stage = $2;
