-- 0003_views: the operator views, in schema `keeper`. These are the stable SQL surface (README
-- "Operator views" documents every column); the tables underneath may change, the views keep
-- their columns. Addresses and hashes are lowercase 0x-hex text, money is numeric(78,0) in
-- token base units, times are unix seconds with a timestamptz twin where it helps.
--
-- "Now" is chain time: the timestamp of the last indexed block (ingest_cursor.indexed_timestamp),
-- never the wall clock, so the views agree with what the contracts would compute in that block
-- and with the planners. A view row is `final` when the block that last changed it is at or
-- below the finalized block; otherwise it is `pending` and a reorg may still change it.
--
-- The functions restate keeper/accrual.py in integer arithmetic on numeric (the tests hold the
-- two equal). They are plain SQL expressions, IMMUTABLE and not STRICT, so the planner inlines
-- them into the views; NULL inputs still give NULL (never a made-up 0) because every branch
-- avoids LEAST/GREATEST, which skip NULLs.

CREATE SCHEMA keeper;

-- 0x-hex text of raw bytes (addresses, hashes).
CREATE FUNCTION keeper.hex(b bytea) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '0x' || encode(b, 'hex');

-- Unix seconds as timestamptz; 'infinity' past year 9999 (a depletion time can be ~2^96).
CREATE FUNCTION keeper.to_time(seconds numeric) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN seconds > 253402300799 THEN 'infinity'::timestamptz
    WHEN seconds < -62135596800 THEN '-infinity'::timestamptz
    ELSE to_timestamp(seconds::double precision)
END;

-- StreamManager's accrual: min(balance, rate * (now - settled_at)), 0 when nothing can accrue.
CREATE FUNCTION keeper.accrued(balance numeric, rate numeric, settled_at bigint, now bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN balance <= 0 OR rate <= 0 OR now <= settled_at THEN 0
    WHEN rate * (now - settled_at) < balance THEN rate * (now - settled_at)
    WHEN rate * (now - settled_at) >= balance THEN balance
END;

-- The platform fee on an amount, rounded down as the contract does (amounts are never negative).
CREATE FUNCTION keeper.fee_of(amount numeric, bps integer) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN div(amount * bps, 10000);

-- First second at which the whole balance has accrued: settled_at + ceil(balance / rate).
-- NULL when the rate is 0 (never depletes). numeric, not bigint: 2^96 / 1 overflows bigint.
CREATE FUNCTION keeper.depletion_time(balance numeric, rate numeric, settled_at bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN rate IS NULL OR rate <= 0 THEN NULL
    WHEN balance <= 0 THEN settled_at
    ELSE settled_at + div(balance + rate - 1, rate)
END;

-- Every stream, valued at the indexed head's timestamp.
CREATE VIEW keeper.stream_balances AS
SELECT s.chain_id,
       s.stream_id,
       keeper.hex(s.payer) AS payer,
       keeper.hex(s.payee) AS payee,
       CASE WHEN s.status = 'closed' THEN 'closed'
            WHEN s.balance - a.accrued_now = 0 THEN 'depleted'
            ELSE 'open' END AS status,
       s.rate,
       s.balance,
       s.settled_at,
       keeper.to_time(s.settled_at) AS settled_at_time,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of,
       keeper.to_time(c.indexed_timestamp) AS as_of_time,
       a.accrued_now::numeric(78,0) AS accrued_now,
       p.fee_bps,
       (a.accrued_now - keeper.fee_of(a.accrued_now, p.fee_bps))::numeric(78,0) AS claimable,
       (s.balance - a.accrued_now)::numeric(78,0) AS balance_after_settle,
       CASE WHEN d.depletion_time > c.indexed_timestamp
                THEN d.depletion_time - c.indexed_timestamp
            WHEN d.depletion_time <= c.indexed_timestamp THEN 0
       END::numeric(78,0) AS runway_seconds,
       d.depletion_time::numeric(78,0) AS depletion_time,
       keeper.to_time(d.depletion_time) AS depletion_at,
       s.usage_seq,
       s.price,
       s.opened_block,
       s.updated_block,
       COALESCE(s.updated_block <= c.finalized_block, false) AS final,
       NOT COALESCE(s.updated_block <= c.finalized_block, false) AS pending
FROM streams s
LEFT JOIN ingest_cursor c ON c.chain_id = s.chain_id
LEFT JOIN contract_params p ON p.chain_id = s.chain_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.status = 'open'
                THEN keeper.accrued(s.balance, s.rate, s.settled_at, c.indexed_timestamp)
                ELSE 0 END AS accrued_now
) a
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.status = 'open'
                THEN keeper.depletion_time(s.balance, s.rate, s.settled_at) END AS depletion_time
) d;

-- Every escrow, with whether it can be refunded by refundExpired at the indexed head.
CREATE VIEW keeper.escrows AS
SELECT e.chain_id,
       e.escrow_id,
       keeper.hex(e.payer) AS payer,
       keeper.hex(e.payee) AS payee,
       e.amount,
       e.status,
       e.expires_at,
       keeper.to_time(e.expires_at) AS expires_at_time,
       COALESCE(e.status = 'open' AND e.expires_at <= c.indexed_timestamp, false) AS expired,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of,
       e.created_block,
       e.updated_block,
       COALESCE(e.updated_block <= c.finalized_block, false) AS final,
       NOT COALESCE(e.updated_block <= c.finalized_block, false) AS pending
FROM escrows e
LEFT JOIN ingest_cursor c ON c.chain_id = e.chain_id;

-- Open escrows whose expiry has passed in chain time: what the refund planner works on.
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
       NOT COALESCE(e.updated_block <= c.finalized_block, false) AS pending
FROM escrows e
JOIN ingest_cursor c ON c.chain_id = e.chain_id
WHERE e.status = 'open' AND e.expires_at <= c.indexed_timestamp;

-- Usage per stream and UTC day (of the block's timestamp): applied reports from UsageRecorded
-- and skipped ones from UsageSkipped, in one row. One GROUP BY over a UNION ALL (not a join of
-- two aggregates) so a filter on chain_id, stream_id or day reaches both event tables' indexes.
CREATE VIEW keeper.usage_daily AS
SELECT u.chain_id,
       u.stream_id,
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
GROUP BY u.chain_id, u.stream_id, date '1970-01-01' + (u.block_time / 86400)::integer;

-- What each account can claim() from StreamManager now, and what it has claimed so far.
CREATE VIEW keeper.payee_ledger AS
SELECT l.chain_id,
       keeper.hex(l.account) AS account,
       l.credited,
       COALESCE(l.account = p.fee_recipient, false) AS fee_recipient,
       COALESCE(cl.total_claimed, 0)::numeric(78,0) AS total_claimed,
       COALESCE(cl.claims, 0) AS claims,
       cl.last_claim_block,
       cl.last_claim_at,
       keeper.to_time(cl.last_claim_at) AS last_claim_time,
       l.first_block
FROM payee_ledger l
LEFT JOIN contract_params p ON p.chain_id = l.chain_id
LEFT JOIN LATERAL (
    SELECT sum(x.amount) AS total_claimed, count(*) AS claims,
           max(x.block_number) AS last_claim_block, max(x.block_time) AS last_claim_at
    FROM claimed x
    WHERE x.chain_id = l.chain_id AND x.payee = l.account
) cl ON true;

-- Deposit balances in EscrowVault.
CREATE VIEW keeper.vault_accounts AS
SELECT v.chain_id,
       keeper.hex(v.account) AS account,
       v.available,
       v.locked,
       (v.available + v.locked)::numeric(78,0) AS total,
       v.updated_block,
       COALESCE(v.updated_block <= c.finalized_block, false) AS final,
       NOT COALESCE(v.updated_block <= c.finalized_block, false) AS pending
FROM vault_accounts v
LEFT JOIN ingest_cursor c ON c.chain_id = v.chain_id;

-- How far each chain is indexed and how it has been reorganised.
CREATE VIEW keeper.indexer_status AS
SELECT c.chain_id,
       ch.name AS chain_name,
       c.start_block,
       c.head_block,
       c.head_timestamp,
       keeper.to_time(c.head_timestamp) AS head_time,
       c.indexed_block,
       keeper.hex(c.indexed_hash) AS indexed_hash,
       c.indexed_timestamp,
       keeper.to_time(c.indexed_timestamp) AS indexed_time,
       c.finalized_block,
       c.head_block - c.indexed_block AS lag_blocks,
       c.head_timestamp - c.indexed_timestamp AS lag_seconds,
       floor(extract(epoch FROM now()))::bigint - c.indexed_timestamp AS wall_lag_seconds,
       c.indexed_block - c.finalized_block AS unfinalized_blocks,
       c.backfill_done,
       COALESCE(r.reorgs_total, 0) AS reorgs_total,
       r.last_reorg_at,
       r.last_reorg_depth,
       r.max_reorg_depth,
       c.updated_at
FROM ingest_cursor c
LEFT JOIN chains ch ON ch.chain_id = c.chain_id
LEFT JOIN LATERAL (
    SELECT count(*) AS reorgs_total,
           max(x.detected_at) AS last_reorg_at,
           (array_agg(x.depth ORDER BY x.detected_at DESC, x.id DESC))[1] AS last_reorg_depth,
           max(x.depth) AS max_reorg_depth
    FROM reorgs x
    WHERE x.chain_id = c.chain_id
) r ON true;

-- Reorg history, hashes in hex.
CREATE VIEW keeper.reorgs AS
SELECT r.id,
       r.chain_id,
       r.detected_at,
       r.depth,
       r.ancestor_block,
       r.old_head_block,
       keeper.hex(r.old_head_hash) AS old_head_hash,
       r.new_head_block,
       keeper.hex(r.new_head_hash) AS new_head_hash,
       r.events_removed
FROM reorgs r;
