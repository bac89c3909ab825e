-- Named queries of `keeper status`, /status, /readyz and the gauges /metrics reads from the
-- database (keeper.status, keeper.service.health). Only SELECTs: the health port changes nothing.
-- The queries of `keeper status` read the operator views only; those of /metrics (which runs
-- in the daemon, as the keeper's own role) may read tables where a view would be too slow.
-- $1 is the chain id unless said otherwise.

-- name: chains
-- Only views here and below (never the tables under them), so that `keeper status` also runs
-- as a member of keeper_reader (0010_reader_role).
SELECT chain_id FROM keeper.indexer_status ORDER BY chain_id;

-- name: database_now
SELECT now();

-- name: indexer_status
SELECT chain_name, head_block, head_time, indexed_block, indexed_time, finalized_block, lag_blocks,
       lag_seconds, wall_lag_seconds, unfinalized_blocks, backfill_done, reorgs_total,
       max_reorg_depth, updated_at
FROM keeper.indexer_status
WHERE chain_id = $1;

-- name: work_due
-- What the next planning pass would take up (the planners read the same views).
SELECT sd.streams_due, sd.streams_urgent, er.escrows_refundable
FROM (SELECT count(*) AS streams_due, count(*) FILTER (WHERE urgent) AS streams_urgent
      FROM keeper.streams_due WHERE chain_id = $1) sd
CROSS JOIN (SELECT count(*) AS escrows_refundable
            FROM keeper.escrows_refundable WHERE chain_id = $1) er;

-- name: pending_terms
-- What is announced and not in force yet (keeper.pending_terms): closing streams and price
-- changes, with the seconds to the nearest deadline still ahead.
SELECT count(*) FILTER (WHERE kind = 'close') AS closing,
       count(*) FILTER (WHERE kind <> 'close') AS price_changes,
       min(seconds_left) FILTER (WHERE seconds_left > 0) AS next_in
FROM keeper.pending_terms
WHERE chain_id = $1;

-- name: usage_pending
-- Rows not validated yet may have no chain (NULL: the chain of the keeper that validates them).
SELECT status, count(*) AS n
FROM keeper.usage_pending
WHERE chain_id = $1 OR chain_id IS NULL
GROUP BY status;

-- name: intents_open
SELECT kind, state, count(*) AS n
FROM keeper.tx_pipeline
WHERE chain_id = $1 AND state IN ('planned', 'assigned', 'mined', 'confirmed')
GROUP BY kind, state
ORDER BY kind, state;

-- name: signers
SELECT address, balance, low_balance, next_nonce, in_flight, confirmed, updated_at
FROM keeper.signers
WHERE chain_id = $1
ORDER BY address;

-- name: can_read_role_events
-- The role events are in a table, not a view: the read-only role keeper_reader cannot read them.
SELECT has_table_privilege('contract_events', 'SELECT');

-- name: signers_without_oracle_role
-- The signers the transaction manager has seen that hold no ORACLE_ROLE on StreamManager as of
-- the indexed block: their latest RoleGranted / RoleRevoked for it (topics: the event, the
-- role, the account as a 32-byte word, the sender) is missing or a revocation. $2: ORACLE_ROLE.
SELECT s.address
FROM keeper.signers s
WHERE s.chain_id = $1
  AND NOT COALESCE((
      SELECT e.event = 'RoleGranted'
      FROM contract_events e
      WHERE e.chain_id = $1 AND e.contract = 'StreamManager'
        AND e.event IN ('RoleGranted', 'RoleRevoked') AND e.topics[2] = $2
        AND e.topics[3] = decode(lpad(substr(s.address, 3), 64, '0'), 'hex')
      ORDER BY e.block_number DESC, e.log_index DESC
      LIMIT 1), false)
ORDER BY s.address;

-- name: last_reorg
SELECT detected_at, depth, ancestor_block, old_head_block, new_head_block, events_removed
FROM keeper.reorgs
WHERE chain_id = $1
ORDER BY detected_at DESC, id DESC
LIMIT 1;

-- name: last_failed_intent
SELECT intent_id, kind, key, reason AS message, updated_at AS at
FROM keeper.tx_pipeline
WHERE chain_id = $1 AND state = 'failed'
ORDER BY updated_at DESC, intent_id DESC
LIMIT 1;

-- name: last_send_error
-- keeper.send_errors, not tx_pipeline: only the intents with a refused attempt are read.
SELECT intent_id, kind, key, message, updated_at AS at
FROM keeper.send_errors
WHERE chain_id = $1
ORDER BY updated_at DESC, intent_id DESC
LIMIT 1;

-- name: totals_24h
-- The `window_name` filter reaches the VALUES list of the view: only this window is counted.
SELECT settlements, settled_amount, usage_reports, usage_charged, refunds, refunded_amount
FROM keeper.settlement_totals
WHERE chain_id = $1 AND window_name = '24h';

-- name: readiness
SELECT backfill_done, lag_seconds FROM keeper.indexer_status WHERE chain_id = $1;

-- name: metrics_gauges
-- One row for the gauges /metrics reads from the database at scrape time. Usage is counted
-- on the base tables' partial indexes: keeper.usage_pending derives each row's status and so
-- reads the whole inbox, too slow to run at every scrape with millions of rows.
SELECT s.head_block, s.indexed_block, s.finalized_block, s.lag_seconds, s.wall_lag_seconds,
       s.indexed_timestamp,
       (SELECT count(*) FROM keeper.streams_due d WHERE d.chain_id = $1) AS settle_due,
       (SELECT count(*) FROM keeper.escrows_refundable e WHERE e.chain_id = $1)
           AS refund_due,
       (SELECT count(*) FROM usage_reports r WHERE r.chain_id = $1 AND r.state = 'pending')
           AS usage_pending,
       (SELECT count(*) FROM usage_inbox u
        WHERE u.verdict IS NULL AND (u.chain_id = $1 OR u.chain_id IS NULL)) AS usage_received,
       t.settled_amount, t.usage_charged, t.refunded_amount
FROM (SELECT $1::bigint AS chain_id) c
LEFT JOIN keeper.indexer_status s ON s.chain_id = c.chain_id
LEFT JOIN keeper.settlement_totals t ON t.chain_id = c.chain_id AND t.window_name = '24h';

-- name: metrics_intents
-- On the base table, through its partial index of unsettled intents (keeper.tx_pipeline would
-- also look up each intent's latest attempt).
SELECT kind, state, count(*) AS n
FROM intents
WHERE chain_id = $1 AND state IN ('planned', 'assigned', 'mined', 'confirmed')
GROUP BY kind, state;

-- name: metrics_signers
-- Per signer the transaction manager has seen: its balance at its last pass, the age of its
-- oldest intent signed and not confirmed yet (assigned: on its way; mined: waiting for its
-- confirmations), in wall-clock seconds, and what its intents mined in the last hour (by the
-- time the keeper saw their receipt) paid: gas used x effective gas price, plus an L2's L1 fee,
-- as the hourly budget counts it (sql/outbox.sql, spent_since). On the base tables, like
-- metrics_intents.
WITH open AS (
    SELECT signer, min(assigned_at) AS oldest
    FROM intents
    WHERE chain_id = $1 AND state IN ('assigned', 'mined')
    GROUP BY signer
),
spent AS (
    SELECT signer, sum(gas_used::numeric * effective_gas_price + COALESCE(l1_fee, 0)) AS wei
    FROM intents
    WHERE chain_id = $1 AND mined_at >= now() - interval '1 hour' AND gas_used IS NOT NULL
    GROUP BY signer
)
SELECT s.signer, s.balance,
       COALESCE(extract(epoch FROM now() - o.oldest), 0)::float8 AS oldest_unconfirmed_seconds,
       COALESCE(sp.wei, 0) AS spent_last_hour
FROM signer_state s
LEFT JOIN open o ON o.signer = s.signer
LEFT JOIN spent sp ON sp.signer = s.signer
WHERE s.chain_id = $1
ORDER BY s.signer;

-- name: unsure_sends
-- Attempts the node answered neither yes nor no (an answer the keeper cannot place, a full pool,
-- a send that did not reach it): sent again from the same bytes after 1, 2, 4, ... blocks while
-- receipts and the pending nonce decide. The newest, with how many there are.
SELECT intent_id, kind, key, latest_send_outcome AS outcome, latest_send_error AS message,
       updated_at AS at, count(*) OVER () AS total
FROM keeper.tx_pipeline
WHERE chain_id = $1 AND state = 'assigned'
  AND latest_send_outcome IN ('unknown', 'pool_full', 'timeout')
ORDER BY updated_at DESC, intent_id DESC
LIMIT 1;

-- name: tx_faults
-- Intents the transaction manager backed off after an unexpected error (the newest first),
-- with how many there are in all.
SELECT intent_id, kind, key, state, stage, error AS message, failures, last_at AS at, retry_at,
       count(*) OVER () AS total
FROM keeper.tx_faults
WHERE chain_id = $1 AND state NOT IN ('final', 'failed', 'replan')
ORDER BY last_at DESC, intent_id DESC
LIMIT 1;
