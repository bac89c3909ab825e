-- Named queries of the indexer (keeper.ingest.store). $1 is always the chain id.
--
-- Projections are recomputed per entity from the events (each event carries the post-state
-- it leaves, so "current state" is "the latest event of each kind"): the same statements
-- serve ingest (entities touched by new events) and reorgs (entities touched by orphaned
-- events), so the two paths cannot drift apart.
--
-- The rollback of the event tables themselves (every table's rows after a block) is not here:
-- keeper.ingest.catalog.rollback_query builds it from the catalog, which names every table.

-- name: get_cursor
SELECT chain_id, start_block, indexed_block, indexed_hash, indexed_timestamp, head_block,
       head_timestamp, finalized_block, backfill_done
FROM ingest_cursor WHERE chain_id = $1;

-- name: init_cursor
-- First start: nothing indexed yet, the next block to read is start_block.
INSERT INTO ingest_cursor (chain_id, start_block, indexed_block)
VALUES ($1, $2::bigint, $2::bigint - 1)
ON CONFLICT (chain_id) DO NOTHING;

-- name: claim_cursor
-- First statement of every write: locks the cursor row and checks nobody moved it since it was
-- read ($2 = the indexed block the write builds on). Zero rows: another writer got there first.
UPDATE ingest_cursor SET updated_at = now()
WHERE chain_id = $1 AND indexed_block = $2
RETURNING indexed_block;

-- name: advance_cursor
UPDATE ingest_cursor
SET indexed_block = $2, indexed_hash = $3, indexed_timestamp = $4,
    head_block = GREATEST(COALESCE(head_block, $2), $2),
    backfill_done = backfill_done OR $5, updated_at = now()
WHERE chain_id = $1;

-- name: observe_head
-- What the node said about its head and finalized block (for the views and lag metrics).
UPDATE ingest_cursor
SET head_block = $2, head_timestamp = $3, finalized_block = $4, updated_at = now()
WHERE chain_id = $1;

-- name: rewind_cursor
UPDATE ingest_cursor
SET indexed_block = $2, indexed_hash = $3, indexed_timestamp = $4, updated_at = now()
WHERE chain_id = $1;

-- name: ensure_event_partitions
-- The partitions of blocks [$2, $3] of every event table ($4 blocks each); returns the end
-- (exclusive) of the range holding $3. Its own short transaction: see the function.
SELECT ensure_event_partitions($1, $2, $3, $4);

-- name: upsert_block
INSERT INTO blocks (chain_id, number, hash, parent_hash, timestamp)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (chain_id, number) DO UPDATE
SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, timestamp = EXCLUDED.timestamp;

-- name: get_block
SELECT number, hash, parent_hash, timestamp FROM blocks WHERE chain_id = $1 AND number = $2;

-- name: blocks_from
-- Stored blocks at or above $2, newest first (the reorg walk-back compares them one by one).
SELECT number, hash, parent_hash, timestamp FROM blocks
WHERE chain_id = $1 AND number >= $2 ORDER BY number DESC;

-- name: delete_blocks_after
DELETE FROM blocks WHERE chain_id = $1 AND number > $2;

-- name: prune_blocks
-- Keep the unfinalized window and a margin below it; older rows are only history.
DELETE FROM blocks WHERE chain_id = $1 AND number < $2;

-- name: record_reorg
INSERT INTO reorgs (chain_id, depth, ancestor_block, old_head_block, old_head_hash,
                    new_head_block, new_head_hash, events_removed)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id;

-- name: refresh_streams
-- Recompute the streams in $2 from their events (delete those with no StreamOpened left).
-- Own prices: a UsagePriceSet is in force from its effective_at, and one not in force yet is
-- replaced by the next (the contract keeps one pending change and folds it in when its time
-- has come). So a price set came into force iff its effective_at is at or before the next
-- price event's block time (its own for the last one): `price` is the last that did, and the
-- last event, when it did not, is the pending change.
WITH ids AS (SELECT DISTINCT unnest($2::numeric[]) AS stream_id),
opened AS (
    SELECT o.stream_id, o.payer, o.payee, o.price_list, o.block_number
    FROM stream_opened o JOIN ids USING (stream_id)
    WHERE o.chain_id = $1
),
balance AS (
    SELECT DISTINCT ON (stream_id) stream_id, balance_after
    FROM (
        SELECT stream_id, deposit AS balance_after, block_number, log_index
        FROM stream_opened WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, balance_after, block_number, log_index
        FROM stream_settled WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, balance_after, block_number, log_index
        FROM stream_topped_up WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, balance_after, block_number, log_index
        FROM usage_recorded WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, 0, block_number, log_index
        FROM stream_closed WHERE chain_id = $1 AND stream_id = ANY($2)
    ) e
    ORDER BY stream_id, block_number DESC, log_index DESC
),
settled AS (
    -- settledAt moves only with StreamSettled (and starts at StreamOpened).
    SELECT DISTINCT ON (stream_id) stream_id, block_time
    FROM (
        SELECT stream_id, block_time, block_number, log_index
        FROM stream_opened WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, block_time, block_number, log_index
        FROM stream_settled WHERE chain_id = $1 AND stream_id = ANY($2)
    ) e
    ORDER BY stream_id, block_number DESC, log_index DESC
),
rate AS (
    SELECT DISTINCT ON (stream_id) stream_id, rate
    FROM (
        SELECT stream_id, rate, block_number, log_index
        FROM stream_opened WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        SELECT stream_id, rate, block_number, log_index
        FROM stream_rate_updated WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL
        -- A close request stops the accrual: the rate is 0 from there.
        SELECT stream_id, 0, block_number, log_index
        FROM stream_close_requested WHERE chain_id = $1 AND stream_id = ANY($2)
    ) e
    ORDER BY stream_id, block_number DESC, log_index DESC
),
price_events AS (
    SELECT stream_id, price, effective_at, block_time,
           lead(block_time) OVER (PARTITION BY stream_id
                                  ORDER BY block_number, log_index) AS next_time,
           row_number() OVER (PARTITION BY stream_id
                              ORDER BY block_number DESC, log_index DESC) AS from_last
    FROM usage_price_set WHERE chain_id = $1 AND stream_id = ANY($2)
),
price AS (
    SELECT DISTINCT ON (stream_id) stream_id, price
    FROM price_events
    WHERE effective_at <= COALESCE(next_time, block_time)
    ORDER BY stream_id, from_last
),
pending AS (
    SELECT stream_id, price, effective_at
    FROM price_events
    WHERE from_last = 1 AND effective_at > block_time
),
close_requested AS (
    SELECT DISTINCT ON (stream_id) stream_id, close_at
    FROM stream_close_requested WHERE chain_id = $1 AND stream_id = ANY($2)
    ORDER BY stream_id, block_number DESC, log_index DESC
),
seq AS (
    SELECT stream_id, max(seq) AS seq
    FROM usage_recorded WHERE chain_id = $1 AND stream_id = ANY($2)
    GROUP BY stream_id
),
closed AS (
    SELECT DISTINCT stream_id FROM stream_closed WHERE chain_id = $1 AND stream_id = ANY($2)
),
updated AS (
    SELECT stream_id, max(block_number) AS block_number
    FROM (
        SELECT stream_id, block_number FROM stream_opened
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM stream_settled
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM stream_topped_up
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM stream_rate_updated
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM stream_closed
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM stream_close_requested
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM usage_price_set
        WHERE chain_id = $1 AND stream_id = ANY($2)
        UNION ALL SELECT stream_id, block_number FROM usage_recorded
        WHERE chain_id = $1 AND stream_id = ANY($2)
    ) e
    GROUP BY stream_id
),
gone AS (
    DELETE FROM streams s
    WHERE s.chain_id = $1 AND s.stream_id = ANY($2)
      AND NOT EXISTS (SELECT 1 FROM opened o WHERE o.stream_id = s.stream_id)
)
INSERT INTO streams AS s (chain_id, stream_id, payer, payee, rate, balance, settled_at,
                          usage_seq, price, status, opened_block, updated_block, price_list,
                          close_at, price_pending, price_effective_at)
SELECT $1, o.stream_id, o.payer, o.payee, r.rate, b.balance_after, st.block_time,
       COALESCE(q.seq, 0), COALESCE(p.price, 0),
       CASE WHEN c.stream_id IS NOT NULL THEN 'closed'
            WHEN cr.stream_id IS NOT NULL THEN 'closing'
            ELSE 'open' END,
       o.block_number, u.block_number, o.price_list,
       CASE WHEN c.stream_id IS NULL THEN cr.close_at END, pe.price, pe.effective_at
FROM opened o
JOIN balance b USING (stream_id)
JOIN settled st USING (stream_id)
JOIN rate r USING (stream_id)
JOIN updated u USING (stream_id)
LEFT JOIN price p USING (stream_id)
LEFT JOIN pending pe USING (stream_id)
LEFT JOIN seq q USING (stream_id)
LEFT JOIN closed c USING (stream_id)
LEFT JOIN close_requested cr USING (stream_id)
ON CONFLICT (chain_id, stream_id) DO UPDATE
SET payer = EXCLUDED.payer, payee = EXCLUDED.payee, rate = EXCLUDED.rate,
    balance = EXCLUDED.balance, settled_at = EXCLUDED.settled_at,
    usage_seq = EXCLUDED.usage_seq, price = EXCLUDED.price, status = EXCLUDED.status,
    opened_block = EXCLUDED.opened_block, updated_block = EXCLUDED.updated_block,
    price_list = EXCLUDED.price_list, close_at = EXCLUDED.close_at,
    price_pending = EXCLUDED.price_pending, price_effective_at = EXCLUDED.price_effective_at;

-- name: delete_gone_endpoints
-- The endpoints of the keys ($2 payees, $3 endpoint ids) whose EndpointAdded is gone (a reorg).
DELETE FROM endpoints e
USING unnest($2::bytea[], $3::numeric[]) AS k (payee, endpoint)
WHERE e.chain_id = $1 AND e.payee = k.payee AND e.endpoint = k.endpoint
  AND NOT EXISTS (SELECT 1 FROM endpoint_added a
                  WHERE a.chain_id = $1 AND a.payee = k.payee AND a.endpoint = k.endpoint);

-- name: refresh_endpoints
-- Recompute the endpoints of the keys ($2 payees, $3 endpoint ids) from their events, prices as
-- in refresh_streams: EndpointAdded is in force at once, an EndpointPriceSet from its
-- effective_at unless the next change comes first.
WITH keys AS (
    SELECT DISTINCT payee, endpoint FROM unnest($2::bytea[], $3::numeric[]) AS k (payee, endpoint)
),
events AS (
    SELECT a.payee, a.endpoint, a.price, a.block_time AS effective_at, a.block_time,
           a.block_number, a.log_index
    FROM endpoint_added a JOIN keys k ON k.payee = a.payee AND k.endpoint = a.endpoint
    WHERE a.chain_id = $1
    UNION ALL
    SELECT p.payee, p.endpoint, p.price, p.effective_at, p.block_time, p.block_number,
           p.log_index
    FROM endpoint_price_set p JOIN keys k ON k.payee = p.payee AND k.endpoint = p.endpoint
    WHERE p.chain_id = $1
),
ordered AS (
    SELECT payee, endpoint, price, effective_at, block_time, block_number,
           lead(block_time) OVER (PARTITION BY payee, endpoint
                                  ORDER BY block_number, log_index) AS next_time,
           row_number() OVER (PARTITION BY payee, endpoint
                              ORDER BY block_number DESC, log_index DESC) AS from_last
    FROM events
),
price AS (
    SELECT DISTINCT ON (payee, endpoint) payee, endpoint, price
    FROM ordered
    WHERE effective_at <= COALESCE(next_time, block_time)
    ORDER BY payee, endpoint, from_last
),
pending AS (
    SELECT payee, endpoint, price, effective_at
    FROM ordered
    WHERE from_last = 1 AND effective_at > block_time
),
updated AS (
    SELECT payee, endpoint, max(block_number) AS block_number FROM events GROUP BY payee, endpoint
)
INSERT INTO endpoints AS e (chain_id, payee, endpoint, name, price, price_pending,
                            price_effective_at, added_block, updated_block)
SELECT $1, a.payee, a.endpoint, endpoint_name(a.name), p.price, pe.price, pe.effective_at,
       a.block_number, u.block_number
FROM endpoint_added a
JOIN keys k ON k.payee = a.payee AND k.endpoint = a.endpoint
JOIN price p ON p.payee = a.payee AND p.endpoint = a.endpoint
JOIN updated u ON u.payee = a.payee AND u.endpoint = a.endpoint
LEFT JOIN pending pe ON pe.payee = a.payee AND pe.endpoint = a.endpoint
WHERE a.chain_id = $1
ON CONFLICT (chain_id, payee, endpoint) DO UPDATE
SET name = EXCLUDED.name, price = EXCLUDED.price, price_pending = EXCLUDED.price_pending,
    price_effective_at = EXCLUDED.price_effective_at, added_block = EXCLUDED.added_block,
    updated_block = EXCLUDED.updated_block;

-- name: refresh_escrows
WITH created AS (
    SELECT escrow_id, payer, payee, amount, expires_at, block_number
    FROM escrow_created WHERE chain_id = $1 AND escrow_id = ANY($2)
),
released AS (
    SELECT escrow_id, max(block_number) AS block_number
    FROM escrow_released WHERE chain_id = $1 AND escrow_id = ANY($2) GROUP BY escrow_id
),
refunded AS (
    SELECT escrow_id, max(block_number) AS block_number
    FROM escrow_refunded WHERE chain_id = $1 AND escrow_id = ANY($2) GROUP BY escrow_id
),
gone AS (
    DELETE FROM escrows e
    WHERE e.chain_id = $1 AND e.escrow_id = ANY($2)
      AND NOT EXISTS (SELECT 1 FROM created c WHERE c.escrow_id = e.escrow_id)
)
INSERT INTO escrows AS e (chain_id, escrow_id, payer, payee, amount, expires_at, status,
                          created_block, updated_block)
SELECT $1, c.escrow_id, c.payer, c.payee, c.amount, c.expires_at,
       CASE WHEN rl.escrow_id IS NOT NULL THEN 'released'
            WHEN rf.escrow_id IS NOT NULL THEN 'refunded'
            ELSE 'open' END,
       c.block_number, GREATEST(c.block_number, rl.block_number, rf.block_number)
FROM created c
LEFT JOIN released rl USING (escrow_id)
LEFT JOIN refunded rf USING (escrow_id)
ON CONFLICT (chain_id, escrow_id) DO UPDATE
SET payer = EXCLUDED.payer, payee = EXCLUDED.payee, amount = EXCLUDED.amount,
    expires_at = EXCLUDED.expires_at, status = EXCLUDED.status,
    created_block = EXCLUDED.created_block, updated_block = EXCLUDED.updated_block;

-- name: refresh_vault_accounts
-- $2: accounts named by vault events; $3: escrow ids whose payer's `locked` may have moved.
WITH ids AS (
    SELECT unnest($2::bytea[]) AS account
    UNION
    SELECT payer FROM escrow_created WHERE chain_id = $1 AND escrow_id = ANY($3)
),
avail AS (
    SELECT DISTINCT ON (account) account, available, block_number
    FROM (
        SELECT account, available_after AS available, block_number, log_index
        FROM vault_deposited WHERE chain_id = $1 AND account IN (SELECT account FROM ids)
        UNION ALL
        SELECT account, available_after, block_number, log_index
        FROM vault_withdrawn WHERE chain_id = $1 AND account IN (SELECT account FROM ids)
        UNION ALL
        SELECT payer, payer_available_after, block_number, log_index
        FROM escrow_created WHERE chain_id = $1 AND payer IN (SELECT account FROM ids)
        UNION ALL
        SELECT payee, payee_available_after, block_number, log_index
        FROM escrow_released WHERE chain_id = $1 AND payee IN (SELECT account FROM ids)
        UNION ALL
        SELECT payer, payer_available_after, block_number, log_index
        FROM escrow_refunded WHERE chain_id = $1 AND payer IN (SELECT account FROM ids)
    ) e
    ORDER BY account, block_number DESC, log_index DESC
),
locked AS (
    SELECT payer AS account, sum(amount) AS locked
    FROM escrows
    WHERE chain_id = $1 AND status = 'open' AND payer IN (SELECT account FROM ids)
    GROUP BY payer
),
gone AS (
    DELETE FROM vault_accounts v
    WHERE v.chain_id = $1 AND v.account IN (SELECT account FROM ids)
      AND NOT EXISTS (SELECT 1 FROM avail a WHERE a.account = v.account)
)
INSERT INTO vault_accounts AS v (chain_id, account, available, locked, updated_block)
SELECT $1, a.account, a.available, COALESCE(l.locked, 0), a.block_number
FROM avail a LEFT JOIN locked l USING (account)
ON CONFLICT (chain_id, account) DO UPDATE
SET available = EXCLUDED.available, locked = EXCLUDED.locked,
    updated_block = EXCLUDED.updated_block;

-- name: apply_ledger_range
-- Add ($4 = 1) or subtract ($4 = -1) what the events of blocks ($2, $3] did to each
-- account's claimable credit. Payees come from StreamOpened (a stream's payee never changes).
-- Existing rows are UPDATEd and only new ones INSERTed: an INSERT ... ON CONFLICT would check
-- `credited >= 0` on the proposed row (a range's bare delta, negative after a claim) first.
WITH d AS (
    SELECT account, sum(delta) AS delta, min(block_number) AS first_block
    FROM (
        SELECT o.payee AS account, e.amount - e.fee AS delta, e.block_number
        FROM stream_settled e
        JOIN stream_opened o ON o.chain_id = e.chain_id AND o.stream_id = e.stream_id
        WHERE e.chain_id = $1 AND e.block_number > $2 AND e.block_number <= $3
        UNION ALL
        SELECT o.payee, e.charged - e.fee, e.block_number
        FROM usage_recorded e
        JOIN stream_opened o ON o.chain_id = e.chain_id AND o.stream_id = e.stream_id
        WHERE e.chain_id = $1 AND e.block_number > $2 AND e.block_number <= $3
        UNION ALL
        SELECT recipient, amount, block_number
        FROM fees_credited WHERE chain_id = $1 AND block_number > $2 AND block_number <= $3
        UNION ALL
        SELECT payee, -amount, block_number
        FROM claimed WHERE chain_id = $1 AND block_number > $2 AND block_number <= $3
    ) x
    GROUP BY account
),
updated AS (
    UPDATE payee_ledger l
    SET credited = l.credited + $4 * d.delta,
        first_block = LEAST(l.first_block, d.first_block)
    FROM d
    WHERE l.chain_id = $1 AND l.account = d.account
    RETURNING l.account
)
INSERT INTO payee_ledger (chain_id, account, credited, first_block)
SELECT $1, d.account, $4 * d.delta, d.first_block
FROM d
WHERE d.account NOT IN (SELECT account FROM updated);

-- name: drop_ledger_rows_after
-- After subtracting a rolled-back range: accounts first credited in it no longer exist.
DELETE FROM payee_ledger WHERE chain_id = $1 AND first_block > $2;

-- name: refresh_contract_params
WITH fee AS (
    SELECT fee_bps, block_number FROM fee_updated WHERE chain_id = $1
    ORDER BY block_number DESC, log_index DESC LIMIT 1
),
recipient AS (
    SELECT recipient, block_number FROM fee_recipient_updated WHERE chain_id = $1
    ORDER BY block_number DESC, log_index DESC LIMIT 1
),
manager AS (
    SELECT event = 'Paused' AS paused, block_number FROM contract_events
    WHERE chain_id = $1 AND contract = 'StreamManager' AND event IN ('Paused', 'Unpaused')
    ORDER BY block_number DESC, log_index DESC LIMIT 1
),
vault AS (
    SELECT event = 'Paused' AS paused, block_number FROM contract_events
    WHERE chain_id = $1 AND contract = 'EscrowVault' AND event IN ('Paused', 'Unpaused')
    ORDER BY block_number DESC, log_index DESC LIMIT 1
),
notice AS (
    SELECT notice_period, block_number FROM notice_period_set WHERE chain_id = $1
    ORDER BY block_number DESC, log_index DESC LIMIT 1
),
gone AS (
    DELETE FROM contract_params
    WHERE chain_id = $1
      AND NOT EXISTS (SELECT 1 FROM fee) AND NOT EXISTS (SELECT 1 FROM recipient)
      AND NOT EXISTS (SELECT 1 FROM manager) AND NOT EXISTS (SELECT 1 FROM vault)
      AND NOT EXISTS (SELECT 1 FROM notice)
)
INSERT INTO contract_params AS p (chain_id, fee_bps, fee_recipient, manager_paused,
                                  vault_paused, notice_period, updated_block)
SELECT $1, (SELECT fee_bps FROM fee), (SELECT recipient FROM recipient),
       COALESCE((SELECT paused FROM manager), false),
       COALESCE((SELECT paused FROM vault), false),
       (SELECT notice_period FROM notice),
       GREATEST((SELECT block_number FROM fee), (SELECT block_number FROM recipient),
                (SELECT block_number FROM manager), (SELECT block_number FROM vault),
                (SELECT block_number FROM notice))
WHERE EXISTS (SELECT 1 FROM fee) OR EXISTS (SELECT 1 FROM recipient)
   OR EXISTS (SELECT 1 FROM manager) OR EXISTS (SELECT 1 FROM vault)
   OR EXISTS (SELECT 1 FROM notice)
ON CONFLICT (chain_id) DO UPDATE
SET fee_bps = EXCLUDED.fee_bps, fee_recipient = EXCLUDED.fee_recipient,
    manager_paused = EXCLUDED.manager_paused, vault_paused = EXCLUDED.vault_paused,
    notice_period = EXCLUDED.notice_period, updated_block = EXCLUDED.updated_block;

-- name: touched_after
-- Entities that events after block $2 touched, before those events are deleted.
SELECT
    ARRAY(SELECT stream_id FROM stream_opened WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM stream_settled WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM stream_topped_up WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM stream_rate_updated WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM stream_closed WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM stream_close_requested
                WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM usage_price_set WHERE chain_id = $1 AND block_number > $2
          UNION SELECT stream_id FROM usage_recorded WHERE chain_id = $1 AND block_number > $2
    ) AS streams,
    ARRAY(SELECT escrow_id FROM escrow_created WHERE chain_id = $1 AND block_number > $2
          UNION SELECT escrow_id FROM escrow_released WHERE chain_id = $1 AND block_number > $2
          UNION SELECT escrow_id FROM escrow_refunded WHERE chain_id = $1 AND block_number > $2
    ) AS escrows,
    ARRAY(SELECT account FROM vault_deposited WHERE chain_id = $1 AND block_number > $2
          UNION SELECT account FROM vault_withdrawn WHERE chain_id = $1 AND block_number > $2
          UNION SELECT payer FROM escrow_created WHERE chain_id = $1 AND block_number > $2
          UNION SELECT payee FROM escrow_released WHERE chain_id = $1 AND block_number > $2
          UNION SELECT payer FROM escrow_refunded WHERE chain_id = $1 AND block_number > $2
    ) AS accounts;

-- name: endpoints_touched_after
-- Endpoint keys that events after block $2 touched, before those events are deleted.
SELECT payee, endpoint FROM endpoint_added WHERE chain_id = $1 AND block_number > $2
UNION
SELECT payee, endpoint FROM endpoint_price_set WHERE chain_id = $1 AND block_number > $2;

-- name: merge_streams
-- The fast path of ingest: apply the post-state the new events carry (one row per stream,
-- folded in log order by keeper.ingest.projections) without reading history. NULL means "not changed by
-- these events". New streams (opened in these events) are inserted; refresh_streams, the full
-- recompute, is what a rollback uses, and the reorg tests hold the two equal. Prices are not
-- merged: a stream with a UsagePriceSet among the events is recomputed by refresh_streams
-- after this (whether a price came into force depends on the next one's time).
WITH u AS (
    SELECT *
    FROM unnest($2::numeric[], $3::bytea[], $4::bytea[], $5::bigint[], $6::numeric[],
                $7::numeric[], $8::bigint[], $9::numeric[], $10::boolean[], $11::boolean[],
                $12::bigint[], $13::bigint[])
         AS u(stream_id, payer, payee, opened_block, rate, balance, settled_at, usage_seq,
              price_list, closed, close_at, updated_block)
),
updated AS (
    UPDATE streams s
    SET rate = COALESCE(u.rate, s.rate),
        balance = COALESCE(u.balance, s.balance),
        settled_at = COALESCE(u.settled_at, s.settled_at),
        usage_seq = GREATEST(s.usage_seq, COALESCE(u.usage_seq, 0)),
        status = CASE WHEN u.closed THEN 'closed'
                      WHEN u.close_at IS NOT NULL THEN 'closing'
                      ELSE s.status END,
        close_at = CASE WHEN u.closed THEN NULL ELSE COALESCE(u.close_at, s.close_at) END,
        updated_block = GREATEST(s.updated_block, u.updated_block)
    FROM u
    WHERE s.chain_id = $1 AND s.stream_id = u.stream_id
    RETURNING s.stream_id
)
INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at, usage_seq,
                     price, status, opened_block, updated_block, price_list, close_at)
SELECT $1, u.stream_id, u.payer, u.payee, u.rate, u.balance, u.settled_at,
       COALESCE(u.usage_seq, 0), 0,
       CASE WHEN u.closed THEN 'closed'
            WHEN u.close_at IS NOT NULL THEN 'closing'
            ELSE 'open' END,
       u.opened_block, u.updated_block, COALESCE(u.price_list, false),
       CASE WHEN u.closed THEN NULL ELSE u.close_at END
FROM u
WHERE u.payer IS NOT NULL AND u.stream_id NOT IN (SELECT stream_id FROM updated);

-- name: stream_payees
SELECT stream_id, payee FROM streams WHERE chain_id = $1 AND stream_id = ANY($2::numeric[]);

-- name: merge_ledger
-- Ingest's fast path for the ledger: per-account deltas summed from the new events in Python
-- (apply_ledger_range computes the same in SQL, for rollbacks).
WITH d AS (
    SELECT * FROM unnest($2::bytea[], $3::numeric[], $4::bigint[]) AS d(account, delta, first_block)
),
updated AS (
    UPDATE payee_ledger l
    SET credited = l.credited + d.delta, first_block = LEAST(l.first_block, d.first_block)
    FROM d
    WHERE l.chain_id = $1 AND l.account = d.account
    RETURNING l.account
)
INSERT INTO payee_ledger (chain_id, account, credited, first_block)
SELECT $1, d.account, d.delta, d.first_block
FROM d
WHERE d.account NOT IN (SELECT account FROM updated);
