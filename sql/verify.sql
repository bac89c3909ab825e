-- Queries of `keeper verify` (keeper/ops/verify.py): the projections of one chain, read in one
-- REPEATABLE READ transaction so that they and the cursor describe one indexed block.

-- name: cursor
SELECT indexed_block, indexed_hash, indexed_timestamp
FROM ingest_cursor
WHERE chain_id = $1;

-- name: streams
-- `price` as getStream reports it: the own price in force at the indexed block (0 on a price
-- list). $2 is the indexed block's timestamp.
SELECT stream_id, payer, payee, balance, rate, settled_at, usage_seq,
       CASE WHEN price_list THEN 0
            ELSE keeper.price_in_force(price, price_pending, price_effective_at, $2) END
           AS price,
       status
FROM streams
WHERE chain_id = $1;

-- name: endpoints
SELECT payee, endpoint, name, price, price_pending, price_effective_at
FROM endpoints
WHERE chain_id = $1;

-- name: escrows
SELECT escrow_id, payer, payee, amount, expires_at, status
FROM escrows
WHERE chain_id = $1;

-- name: ledger
SELECT account, credited
FROM payee_ledger
WHERE chain_id = $1;

-- name: vault_accounts
SELECT account, available, locked
FROM vault_accounts
WHERE chain_id = $1;

-- name: contract_params
SELECT fee_bps, fee_recipient, manager_paused, vault_paused, notice_period
FROM contract_params
WHERE chain_id = $1;
