-- The declared schema: what the database must look like after every file in sql/migrations/
-- has been applied, written out as plain DDL.
--
-- tests/integration/test_migrations.py builds one database from this file and one with
-- `keeper.db.migrations.migrate()` and requires their catalogs to be identical, so a change to
-- the schema goes into both places: a new migration file and this file.
-- The bookkeeping table `keeper_migrations` is created by migrate() itself, not declared here.

-- Chains the keeper serves.
CREATE TABLE chains (
    chain_id   bigint PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Contracts the keeper drives, per chain, with the block the indexer starts from.
CREATE TABLE deployments (
    chain_id         bigint NOT NULL REFERENCES chains (chain_id),
    name             text NOT NULL,
    address          bytea NOT NULL CHECK (octet_length(address) = 20),
    deployment_block bigint NOT NULL CHECK (deployment_block >= 0),
    deployed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, name)
);

-- ================================================================ indexer (0002)

-- What the indexer writes. Every table carries chain_id, so several chains can
-- share one database. uint256 values are numeric(78,0); addresses and hashes are raw bytea
-- (the views in schema `keeper` show them as 0x-hex).
--
-- Event tables hold one row per log, keyed by (chain_id, block_number, log_index), a total
-- order of the chain; a reorg deletes the rows of the orphaned blocks. They are partitioned by
-- (chain_id, block_number) ranges: see the section of 0018. Projections (streams,
-- escrows, vault_accounts, payee_ledger, contract_params) are the current state derived from
-- the events, written in the same transaction as the events that change them.

-- Canonical blocks: every block of the unfinalized window (follow mode), plus the checkpoint
-- blocks backfill ends its ranges on. The parent-hash chain of these rows is what reorg
-- detection compares the node's answers against.
CREATE TABLE blocks (
    chain_id    bigint NOT NULL,
    number      bigint NOT NULL CHECK (number >= 0),
    hash        bytea NOT NULL CHECK (octet_length(hash) = 32),
    parent_hash bytea NOT NULL CHECK (octet_length(parent_hash) = 32),
    timestamp   bigint NOT NULL,
    PRIMARY KEY (chain_id, number)
);

-- How far each chain is indexed. Moves in the same transaction as the rows it covers, which
-- is what makes restarts idempotent.
CREATE TABLE ingest_cursor (
    chain_id          bigint PRIMARY KEY,
    start_block       bigint NOT NULL CHECK (start_block >= 0),
    indexed_block     bigint NOT NULL,
    indexed_hash      bytea,
    indexed_timestamp bigint,
    head_block        bigint,
    head_timestamp    bigint,
    finalized_block   bigint,
    backfill_done     boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (indexed_block >= start_block - 1)
);

CREATE TABLE reorgs (
    id             bigserial PRIMARY KEY,
    chain_id       bigint NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    depth          integer NOT NULL CHECK (depth > 0),
    ancestor_block bigint NOT NULL,
    old_head_block bigint NOT NULL,
    old_head_hash  bytea NOT NULL,
    new_head_block bigint,
    new_head_hash  bytea,
    events_removed bigint NOT NULL DEFAULT 0
);
CREATE INDEX reorgs_chain_idx ON reorgs (chain_id, detected_at);

-- Logs of the keeper's contracts that no typed table interprets (roles, pause), kept raw.
CREATE TABLE contract_events (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    contract     text NOT NULL,
    event        text NOT NULL,
    topics       bytea[] NOT NULL,
    data         bytea NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);

-- StreamManager.Claimed(address,uint256)
CREATE TABLE claimed (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    amount       numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX claimed_payee_idx ON claimed (chain_id, payee, block_number, log_index);

-- StreamManager.FeeRecipientUpdated(address)
CREATE TABLE fee_recipient_updated (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    recipient    bytea NOT NULL CHECK (octet_length(recipient) = 20),
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);

-- StreamManager.FeeUpdated(uint256)
CREATE TABLE fee_updated (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    fee_bps      integer NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);

-- StreamManager.FeesCredited(address,uint256)
CREATE TABLE fees_credited (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    recipient    bytea NOT NULL CHECK (octet_length(recipient) = 20),
    amount       numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX fees_credited_recipient_idx ON fees_credited (chain_id, recipient, block_number, log_index);

-- StreamManager.SettleSkipped(uint256,uint8)
CREATE TABLE settle_skipped (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    reason       smallint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX settle_skipped_stream_id_idx ON settle_skipped (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamClosed(uint256,uint256)
CREATE TABLE stream_closed (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    refunded     numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_closed_stream_id_idx ON stream_closed (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamOpened(uint256,address,address,uint256,uint256,bool)
CREATE TABLE stream_opened (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    payer        bytea NOT NULL CHECK (octet_length(payer) = 20),
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    rate         numeric(78,0) NOT NULL,
    deposit      numeric(78,0) NOT NULL,
    price_list   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_opened_stream_id_idx ON stream_opened (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamRateUpdated(uint256,uint256)
CREATE TABLE stream_rate_updated (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    rate         numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_rate_updated_stream_id_idx ON stream_rate_updated (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamSettled(uint256,uint256,uint256,uint256)
CREATE TABLE stream_settled (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    amount       numeric(78,0) NOT NULL,
    fee          numeric(78,0) NOT NULL,
    balance_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_settled_stream_id_idx ON stream_settled (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamToppedUp(uint256,uint256,uint256)
CREATE TABLE stream_topped_up (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    amount       numeric(78,0) NOT NULL,
    balance_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_topped_up_stream_id_idx ON stream_topped_up (chain_id, stream_id, block_number, log_index);

-- StreamManager.UsagePriceSet(uint256,uint256,uint256)
CREATE TABLE usage_price_set (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    price        numeric(78,0) NOT NULL,
    effective_at bigint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX usage_price_set_stream_id_idx ON usage_price_set (chain_id, stream_id, block_number, log_index);

-- StreamManager.UsageRecorded(uint256,uint256,uint256): three packed words, unpacked by the
-- decoder (keeper.ingest.events); shortfall = units x price - charged.
CREATE TABLE usage_recorded (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    seq          numeric(78,0) NOT NULL,
    endpoint     numeric(78,0) NOT NULL,
    units        numeric(78,0) NOT NULL,
    charged      numeric(78,0) NOT NULL,
    fee          numeric(78,0) NOT NULL,
    shortfall    numeric(78,0) NOT NULL,
    balance_after numeric(78,0) NOT NULL,
    price        numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX usage_recorded_stream_id_idx ON usage_recorded (chain_id, stream_id, block_number, log_index);

-- StreamManager.UsageSkipped(uint256,uint256,uint256,uint8)
CREATE TABLE usage_skipped (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    seq          numeric(78,0) NOT NULL,
    last_seq     numeric(78,0) NOT NULL,
    reason       smallint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX usage_skipped_stream_id_idx ON usage_skipped (chain_id, stream_id, block_number, log_index);

-- EscrowVault.EscrowCreated(uint256,address,address,uint256,uint256,uint256)
CREATE TABLE escrow_created (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    escrow_id    numeric(78,0) NOT NULL,
    payer        bytea NOT NULL CHECK (octet_length(payer) = 20),
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    amount       numeric(78,0) NOT NULL,
    expires_at   bigint NOT NULL,
    payer_available_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX escrow_created_escrow_id_idx ON escrow_created (chain_id, escrow_id, block_number, log_index);
CREATE INDEX escrow_created_payer_idx ON escrow_created (chain_id, payer, block_number, log_index);

-- EscrowVault.EscrowRefunded(uint256,address,uint256,uint256)
CREATE TABLE escrow_refunded (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    escrow_id    numeric(78,0) NOT NULL,
    payer        bytea NOT NULL CHECK (octet_length(payer) = 20),
    amount       numeric(78,0) NOT NULL,
    payer_available_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX escrow_refunded_escrow_id_idx ON escrow_refunded (chain_id, escrow_id, block_number, log_index);
CREATE INDEX escrow_refunded_payer_idx ON escrow_refunded (chain_id, payer, block_number, log_index);

-- EscrowVault.EscrowReleased(uint256,address,uint256,uint256)
CREATE TABLE escrow_released (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    escrow_id    numeric(78,0) NOT NULL,
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    amount       numeric(78,0) NOT NULL,
    payee_available_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX escrow_released_escrow_id_idx ON escrow_released (chain_id, escrow_id, block_number, log_index);
CREATE INDEX escrow_released_payee_idx ON escrow_released (chain_id, payee, block_number, log_index);

-- EscrowVault.RefundSkipped(uint256,uint8)
CREATE TABLE refund_skipped (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    escrow_id    numeric(78,0) NOT NULL,
    reason       smallint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX refund_skipped_escrow_id_idx ON refund_skipped (chain_id, escrow_id, block_number, log_index);

-- EscrowVault.Deposited(address,uint256,uint256)
CREATE TABLE vault_deposited (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    account      bytea NOT NULL CHECK (octet_length(account) = 20),
    amount       numeric(78,0) NOT NULL,
    available_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX vault_deposited_account_idx ON vault_deposited (chain_id, account, block_number, log_index);

-- EscrowVault.Withdrawn(address,uint256,uint256)
CREATE TABLE vault_withdrawn (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    account      bytea NOT NULL CHECK (octet_length(account) = 20),
    amount       numeric(78,0) NOT NULL,
    available_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX vault_withdrawn_account_idx ON vault_withdrawn (chain_id, account, block_number, log_index);

-- ---------------------------------------------------------------- projections

CREATE TABLE streams (
    chain_id      bigint NOT NULL,
    stream_id     numeric(78,0) NOT NULL,
    payer         bytea NOT NULL,
    payee         bytea NOT NULL,
    rate          numeric(78,0) NOT NULL,
    balance       numeric(78,0) NOT NULL,
    settled_at    bigint NOT NULL,
    usage_seq     numeric(78,0) NOT NULL,
    price         numeric(78,0) NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'closing', 'closed')),
    opened_block  bigint NOT NULL,
    updated_block bigint NOT NULL,
    -- 0013: billed at the payee's price list; when a closing stream closes; an own price
    -- announced for later (`price` is the one in force as of the stream's last price event).
    price_list    boolean NOT NULL DEFAULT false,
    close_at      bigint,
    price_pending numeric(78,0),
    price_effective_at bigint,
    -- 0016: the chain time from which keeper.streams_due lists the stream (NULL: never), by
    -- the planner's thresholds; kept by triggers (see stream_due_at below).
    due_at        bigint,
    PRIMARY KEY (chain_id, stream_id),
    CONSTRAINT streams_close_at_check CHECK ((status = 'closing') = (close_at IS NOT NULL)),
    CONSTRAINT streams_pending_check
        CHECK ((price_pending IS NULL) = (price_effective_at IS NULL))
);
CREATE INDEX streams_payee_idx ON streams (chain_id, payee);

CREATE TABLE escrows (
    chain_id      bigint NOT NULL,
    escrow_id     numeric(78,0) NOT NULL,
    payer         bytea NOT NULL,
    payee         bytea NOT NULL,
    amount        numeric(78,0) NOT NULL,
    expires_at    bigint NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'released', 'refunded')),
    created_block bigint NOT NULL,
    updated_block bigint NOT NULL,
    PRIMARY KEY (chain_id, escrow_id)
);
CREATE INDEX escrows_open_expiry_idx ON escrows (chain_id, expires_at) WHERE status = 'open';

-- What each account can claim() from StreamManager (payees and the fee recipient). Kept by
-- adding each block range's credits and subtracting its claims (a Claimed event carries the
-- whole amount it zeroed), so a reorg subtracts exactly what the orphaned blocks added.
CREATE TABLE payee_ledger (
    chain_id    bigint NOT NULL,
    account     bytea NOT NULL,
    credited    numeric(78,0) NOT NULL CHECK (credited >= 0),
    first_block bigint NOT NULL,
    PRIMARY KEY (chain_id, account)
);

-- Deposit balances in EscrowVault.
CREATE TABLE vault_accounts (
    chain_id      bigint NOT NULL,
    account       bytea NOT NULL,
    available     numeric(78,0) NOT NULL,
    locked        numeric(78,0) NOT NULL,
    updated_block bigint NOT NULL,
    PRIMARY KEY (chain_id, account)
);

-- Contract-wide settings: StreamManager's fee, fee recipient, pause flags and notice period.
CREATE TABLE contract_params (
    chain_id       bigint PRIMARY KEY,
    fee_bps        integer,
    fee_recipient  bytea,
    manager_paused boolean NOT NULL DEFAULT false,
    vault_paused   boolean NOT NULL DEFAULT false,
    updated_block  bigint NOT NULL,
    notice_period  bigint
);

-- Delete every event row of blocks after p_block (a reorg's orphaned blocks); returns the
-- number of rows removed. Lists every event table: a new event table is added here too.
CREATE FUNCTION delete_events_after(p_chain bigint, p_block bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint := 0;
    n bigint;
BEGIN
    DELETE FROM claimed WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM contract_events WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM endpoint_added WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM endpoint_price_set WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM escrow_created WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM escrow_refunded WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM escrow_released WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM fee_recipient_updated WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM fee_updated WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM fees_credited WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM notice_period_set WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM refund_skipped WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM settle_skipped WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_close_requested WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_closed WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_opened WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_rate_updated WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_settled WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM stream_topped_up WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM usage_price_set WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM usage_recorded WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM usage_skipped WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM vault_deposited WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM vault_withdrawn WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    RETURN removed;
END
$$;

-- ================================================================ operator views (0003)

-- The operator views, in schema `keeper`. These are the stable SQL surface (README
-- "Operator views" documents every column); the tables underneath may change, the views keep
-- their columns. Addresses and hashes are lowercase 0x-hex text, money is numeric(78,0) in
-- token base units, times are unix seconds with a timestamptz twin where it helps.
--
-- "Now" is chain time: the timestamp of the last indexed block (ingest_cursor.indexed_timestamp),
-- never the wall clock, so the views agree with what the contracts would compute in that block
-- and with the planners. A view row is `final` when the block that last changed it is at or
-- below the finalized block; otherwise it is `pending` and a reorg may still change it.
--
-- The functions restate keeper/plan/accrual.py in integer arithmetic on numeric (the tests hold the
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

-- keeper.stream_balances: in the section of 0013 below (it prices usage with
-- keeper.price_in_force, declared there).

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

-- keeper.escrows_expired and keeper.usage_daily: in the section of 0008 below, which
-- recreated them on intents and usage_reports.

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

-- ================================================================ outbox (0004)

CREATE TABLE intents (
    id                  bigserial PRIMARY KEY,
    chain_id            bigint NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('settle', 'refund', 'usage', 'purge', 'call')),
    key                 text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    target              bytea NOT NULL CHECK (octet_length(target) = 20),
    calldata            bytea NOT NULL,
    value               numeric(78,0) NOT NULL DEFAULT 0 CHECK (value >= 0),
    urgent              boolean NOT NULL DEFAULT false,
    state               text NOT NULL DEFAULT 'planned'
                        CHECK (state IN ('planned', 'assigned', 'mined', 'confirmed', 'final',
                                         'failed', 'replan')),
    reason              text,
    signer              bytea CHECK (octet_length(signer) = 20),
    nonce               bigint CHECK (nonce >= 0),
    gas_limit           bigint CHECK (gas_limit > 0),
    tx_hash             bytea,
    block_number        bigint,
    block_hash          bytea,
    receipt_status      smallint CHECK (receipt_status IN (0, 1)),
    gas_used            bigint,
    effective_gas_price numeric(78,0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    assigned_at         timestamptz,
    mined_at            timestamptz,
    confirmed_at        timestamptz,
    effects_checked_at  timestamptz,
    -- OP-stack chains: the receipt's l1Fee, paid on top of gas_used x effective_gas_price.
    l1_fee              numeric(78,0) CHECK (l1_fee >= 0),
    UNIQUE (chain_id, key),
    CHECK ((signer IS NULL) = (nonce IS NULL)),
    -- Past `planned`, an intent is pinned to its signer and nonce for good.
    CHECK (state IN ('planned', 'failed') OR signer IS NOT NULL),
    -- A mined (or later) intent knows its receipt.
    CHECK (state NOT IN ('mined', 'confirmed', 'final')
           OR (tx_hash IS NOT NULL AND block_number IS NOT NULL AND block_hash IS NOT NULL
               AND receipt_status IS NOT NULL)),
    CHECK (state <> 'failed' OR reason IS NOT NULL)
);

-- One live intent per nonce of a signer (a purged intent gives its nonce to the purge).
CREATE UNIQUE INDEX intents_live_nonce_idx ON intents (chain_id, signer, nonce)
    WHERE nonce IS NOT NULL AND state <> 'replan';
CREATE INDEX intents_open_idx ON intents (chain_id, state, id)
    WHERE state IN ('planned', 'assigned', 'mined', 'confirmed');

CREATE TABLE attempts (
    id              bigserial PRIMARY KEY,
    intent_id       bigint NOT NULL REFERENCES intents (id),
    chain_id        bigint NOT NULL,
    signer          bytea NOT NULL CHECK (octet_length(signer) = 20),
    nonce           bigint NOT NULL CHECK (nonce >= 0),
    max_fee         numeric(78,0) NOT NULL CHECK (max_fee >= 0),
    priority_fee    numeric(78,0) NOT NULL CHECK (priority_fee >= 0),
    legacy          boolean NOT NULL DEFAULT false,
    gas_limit       bigint NOT NULL CHECK (gas_limit > 0),
    raw             bytea NOT NULL,
    tx_hash         bytea NOT NULL UNIQUE CHECK (octet_length(tx_hash) = 32),
    state           text NOT NULL DEFAULT 'signed'
                    CHECK (state IN ('signed', 'broadcast', 'mined', 'superseded')),
    broadcast_at    timestamptz,
    broadcast_block bigint,
    broadcasts      integer NOT NULL DEFAULT 0 CHECK (broadcasts >= 0),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The node's last answer, classified (keeper.tx.send_errors.SendOutcome); NULL: accepted.
    last_outcome    text,
    CHECK (state = 'signed' OR broadcast_at IS NOT NULL OR state = 'superseded'),
    CHECK (priority_fee <= max_fee)
);
CREATE INDEX attempts_intent_idx ON attempts (intent_id, id);
CREATE INDEX attempts_lane_idx ON attempts (chain_id, signer, nonce);

-- Legal state transitions of an intent; anything else is refused by the database itself.
CREATE FUNCTION intents_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.signer IS NOT NULL AND (NEW.signer IS DISTINCT FROM OLD.signer
                                   OR NEW.nonce IS DISTINCT FROM OLD.nonce) THEN
        RAISE EXCEPTION 'intent % is pinned to its signer and nonce', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.state = 'planned' AND NEW.state IN ('assigned', 'failed'))
        OR (OLD.state = 'assigned' AND NEW.state IN ('mined', 'failed', 'replan'))
        OR (OLD.state = 'mined' AND NEW.state IN ('confirmed', 'assigned', 'failed'))
        OR (OLD.state = 'confirmed' AND NEW.state IN ('final', 'assigned', 'failed'))
    ) THEN
        RAISE EXCEPTION 'illegal intent transition % -> % (intent %)', OLD.state, NEW.state, OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER intents_transition BEFORE UPDATE ON intents
    FOR EACH ROW EXECUTE FUNCTION intents_check_transition();

-- Legal state transitions of an attempt.
CREATE FUNCTION attempts_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.raw IS DISTINCT FROM OLD.raw OR NEW.tx_hash IS DISTINCT FROM OLD.tx_hash THEN
        RAISE EXCEPTION 'attempt % bytes are immutable once signed', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.state = 'signed' AND NEW.state IN ('broadcast', 'superseded'))
        OR (OLD.state = 'broadcast' AND NEW.state IN ('mined', 'superseded'))
        OR (OLD.state = 'superseded' AND NEW.state = 'mined')
        OR (OLD.state = 'mined' AND NEW.state IN ('broadcast', 'superseded'))
    ) THEN
        RAISE EXCEPTION 'illegal attempt transition % -> % (attempt %)', OLD.state, NEW.state,
            OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER attempts_transition BEFORE UPDATE ON attempts
    FOR EACH ROW EXECUTE FUNCTION attempts_check_transition();

-- The items of the batch intents (settle, refund, usage), one typed row each, written with
-- the intent: the stream or escrow id (`entity`) and, for a usage report, its sequence
-- number, units and endpoint; `position` is its place in the batch's calldata. chain_id and
-- kind are the intent's, here so the planners find an entity's items by index. `outcome` is
-- NULL while the item is in its batch and unchecked; `reverted` when its simulation reverted
-- on its own and it was taken out of the batch (the reason in `detail`); after confirmation,
-- from the indexed events, `effect`, `skipped` (the contract's skip reason) or `no_effect`.
-- An item without its effect is backed off, never retried forever in silence.
CREATE TABLE batch_items (
    -- The intent's id (0016: no foreign key, see there).
    intent_id   bigint NOT NULL,
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
-- keeper.settlement_totals' windows over the checked items, as range scans.
CREATE INDEX batch_items_checked_idx ON batch_items (checked_at) WHERE checked_at IS NOT NULL;
-- The backed-off items of an entity (few: the planners look them up for every due entity).
CREATE INDEX batch_items_backed_off_idx ON batch_items (chain_id, kind, entity)
    WHERE outcome IN ('no_effect', 'reverted');
-- Final intents above the indexed block (keeper.items_in_flight): after a reorg or a resync.
CREATE INDEX intents_final_block_idx ON intents (chain_id, block_number) WHERE state = 'final';

-- ---------------------------------------------------------------- planners
CREATE TABLE planner_settings (
    chain_id            bigint PRIMARY KEY,
    settle_min_amount   numeric(78,0) NOT NULL CHECK (settle_min_amount >= 0),
    settle_max_interval bigint NOT NULL CHECK (settle_max_interval > 0),
    settle_horizon      bigint NOT NULL CHECK (settle_horizon >= 0),
    backoff_seconds     bigint NOT NULL CHECK (backoff_seconds >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Batch items the keeper has on its way: in an intent that is not settled yet, or mined in a
-- block the indexer has not reached (the projections do not show its effect yet). `item` is
-- the stream or escrow id; a usage report's sequence number, units and endpoint are NULL for
-- the other kinds. Read from the live intents (intents_open_idx, intents_final_block_idx) to
-- their items, never from an entity's whole history: the planners anti-join the few items on
-- their way against every due stream (chain_id and kind are the intent's, so that a filter on
-- them keeps the search on intents). 0016: the final ones' items per intent (OFFSET 0).
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
-- Final intents above the indexed block (usually none), by intents_final_block_idx from each
-- chain's cursor. The bound from above pairs with the one from below into a range, which the
-- planner takes as narrow; alone, `> indexed_block` is guessed a third of every final intent,
-- and every one is then read. OFFSET 0 keeps each subquery a scan of its own: these intents,
-- then the items of each by its id.
CROSS JOIN LATERAL (
    SELECT x.chain_id, x.kind, x.id, x.key, x.state FROM intents x
    WHERE x.chain_id = c.chain_id AND x.state = 'final'
      AND x.block_number > c.indexed_block AND x.block_number < 9223372036854775807
    OFFSET 0
) i
CROSS JOIN LATERAL (
    SELECT x.entity, x.seq, x.units, x.endpoint FROM batch_items x
    WHERE x.intent_id = i.id AND x.outcome IS DISTINCT FROM 'reverted'
    OFFSET 0
) b;

-- Batch items backed off: reverted in simulation or without effect after confirmation, within
-- the backoff window (0016: a range of checked_at, by batch_items_backed_off_at_idx).
CREATE VIEW keeper.items_backed_off AS
SELECT b.chain_id, b.kind, b.entity AS item, b.outcome, b.detail, b.checked_at,
       b.checked_at + make_interval(secs => ps.backoff_seconds) AS retry_after, b.seq,
       b.intent_id
FROM planner_settings ps
JOIN batch_items b ON b.chain_id = ps.chain_id
WHERE b.outcome IN ('no_effect', 'reverted')
  AND b.checked_at > now() - make_interval(secs => ps.backoff_seconds);

-- keeper.streams_due: in the section of 0013 below, on top of keeper.stream_balances.

-- keeper.escrows_refundable: in the section of 0008 below, on top of the
-- keeper.escrows_expired defined there.

-- What the transaction manager last saw of each signer (written every pass).
CREATE TABLE signer_state (
    chain_id      bigint NOT NULL,
    signer        bytea NOT NULL CHECK (octet_length(signer) = 20),
    balance       numeric(78,0) NOT NULL,
    low_balance   boolean NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, signer)
);

-- Intents and their latest attempt: state, gas and cost (with the L1 fee of an L2), newest
-- first.
CREATE VIEW keeper.tx_pipeline AS
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

-- The signer pool: next nonce, work in flight, last known balance.
CREATE VIEW keeper.signers AS
SELECT s.chain_id,
       keeper.hex(s.signer) AS address,
       s.balance,
       s.low_balance,
       (SELECT COALESCE(max(i.nonce) + 1, 0) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer AND i.state <> 'replan')
           AS next_nonce,
       (SELECT count(*) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer AND i.state = 'assigned')
           AS in_flight,
       (SELECT count(*) FROM intents i
        WHERE i.chain_id = s.chain_id AND i.signer = s.signer
          AND i.state IN ('confirmed', 'final')) AS confirmed,
       s.updated_at
FROM signer_state s;

-- ================================================================ usage (0007)

CREATE TABLE usage_inbox (
    id           bigserial PRIMARY KEY,
    -- NULL: the chain of the keeper that validates the row (set it when several chains share
    -- one database).
    chain_id     bigint,
    stream_id    text,
    units        text,
    producer_key text,
    label        text,
    observed_at  text,
    -- Where the row came from, e.g. `usage.csv:17` for `keeper usage import`.
    source       text,
    -- 0013: the endpoint's name as its payee published it (NULL or empty: none).
    endpoint     text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    verdict      text CHECK (verdict IN ('accepted', 'rejected')),
    reason       text,
    detail       text,
    validated_at timestamptz,
    CHECK ((verdict IS NULL) = (validated_at IS NULL)),
    CHECK ((verdict IS NOT DISTINCT FROM 'rejected') = (reason IS NOT NULL))
);
CREATE INDEX usage_inbox_unvalidated_idx ON usage_inbox (id) WHERE verdict IS NULL;
CREATE INDEX usage_inbox_rejected_idx ON usage_inbox (validated_at) WHERE verdict = 'rejected';

CREATE TABLE usage_reports (
    inbox_id      bigint PRIMARY KEY REFERENCES usage_inbox (id),
    chain_id      bigint NOT NULL,
    stream_id     numeric(78,0) NOT NULL,
    seq           numeric(78,0) NOT NULL CHECK (seq > 0),
    units         numeric(78,0) NOT NULL CHECK (units > 0),
    producer_key  text NOT NULL,
    label         text,
    observed_at   timestamptz NOT NULL,
    accepted_at   timestamptz NOT NULL DEFAULT now(),
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'recorded', 'rejected')),
    -- Set when reconciled: the block and transaction of the deciding event.
    block_number  bigint,
    tx_hash       bytea,
    charged       numeric(78,0),
    fee           numeric(78,0),
    shortfall     numeric(78,0),
    reason        text,
    detail        text,
    reconciled_at timestamptz,
    -- 0013: the endpoint charged at (0: none), its name, and the price charged (when recorded).
    endpoint      numeric(78,0) NOT NULL DEFAULT 0,
    endpoint_name text,
    price         numeric(78,0),
    UNIQUE (chain_id, stream_id, seq),
    UNIQUE (chain_id, producer_key),
    CHECK ((state = 'pending') = (block_number IS NULL)),
    CHECK (state <> 'recorded' OR (charged IS NOT NULL AND fee IS NOT NULL
                                   AND shortfall IS NOT NULL AND tx_hash IS NOT NULL)),
    CHECK ((state = 'rejected') = (reason IS NOT NULL))
);
CREATE INDEX usage_reports_pending_idx ON usage_reports (chain_id, stream_id, seq)
    WHERE state = 'pending';
CREATE INDEX usage_reports_block_idx ON usage_reports (chain_id, block_number)
    WHERE block_number IS NOT NULL;

-- Usage reports on their way: in a usage intent that is not settled yet, or mined in a block
-- the indexer has not reached.
CREATE VIEW keeper.usage_in_flight AS
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

-- Every usage row and where it stands: `received` (not validated yet), `rejected` (at intake or
-- after acceptance, with the reason), `pending` (accepted, waiting for a batch), `sending` (in a
-- usage intent on its way) or `recorded` (charged on chain).
CREATE VIEW keeper.usage AS
SELECT u.id AS inbox_id,
       COALESCE(r.chain_id, u.chain_id) AS chain_id,
       COALESCE(r.stream_id::text, u.stream_id) AS stream_id,
       COALESCE(r.units::text, u.units) AS units,
       u.producer_key,
       u.label,
       COALESCE(r.observed_at::text, u.observed_at) AS observed_at,
       u.source,
       u.received_at,
       CASE WHEN u.verdict IS NULL THEN 'received'
            WHEN u.verdict = 'rejected' THEN 'rejected'
            WHEN r.state = 'pending' AND f.intent_id IS NOT NULL THEN 'sending'
            ELSE r.state END AS status,
       r.seq,
       r.charged,
       r.fee,
       r.shortfall,
       COALESCE(u.reason, r.reason) AS reason,
       COALESCE(u.detail, r.detail) AS detail,
       r.block_number,
       keeper.hex(r.tx_hash) AS tx_hash,
       f.intent_key,
       u.validated_at,
       r.reconciled_at,
       COALESCE(r.endpoint_name, u.endpoint) AS endpoint_name,
       r.endpoint,
       r.price
FROM usage_inbox u
LEFT JOIN usage_reports r ON r.inbox_id = u.id
LEFT JOIN LATERAL (
    SELECT x.intent_id, x.intent_key FROM keeper.usage_in_flight x
    WHERE r.state = 'pending' AND x.chain_id = r.chain_id AND x.stream_id = r.stream_id
      AND x.seq = r.seq
    LIMIT 1
) f ON true;

-- Usage not charged yet: received, pending or sending. 0016: the rows not validated and the
-- reports pending, found by their partial indexes, then their status.
CREATE VIEW keeper.usage_pending AS
SELECT u.*
FROM keeper.usage u
WHERE u.inbox_id IN (SELECT x.id FROM usage_inbox x WHERE x.verdict IS NULL
                     UNION ALL
                     SELECT r.inbox_id FROM usage_reports r WHERE r.state = 'pending')
  AND u.status IN ('received', 'pending', 'sending');

-- Usage rows that will not be charged, with the reason code and a readable detail.
CREATE VIEW keeper.usage_rejected AS
SELECT * FROM keeper.usage WHERE status = 'rejected';

-- keeper.usage_affordability: in the section of 0013 below, on top of keeper.usage_estimates.

-- ================================================================ operator views II (0008)

-- The refund intent of each expired escrow, usage per label, settlement totals over windows.
-- keeper.escrows_expired, keeper.escrows_refundable and keeper.usage_daily were first created
-- by 0003 and 0006 and recreated by 0008; they are declared here, after the tables they read.

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
    SELECT i.id, i.key, i.state, i.tx_hash
    FROM batch_items b
    JOIN intents i ON i.id = b.intent_id
    WHERE b.chain_id = e.chain_id AND b.kind = 'refund' AND b.entity = e.escrow_id
      AND b.outcome IS DISTINCT FROM 'reverted'
    ORDER BY b.intent_id DESC
    LIMIT 1
) r ON true
WHERE e.status = 'open' AND e.expires_at <= c.indexed_timestamp;

-- Expired escrows the next refund pass would refund (not on their way, not backed off).
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
       max(u.block_number) AS last_block,
       count(*) FILTER (WHERE u.skip_reason = 7) AS skipped_unknown_endpoint
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
-- had their effect (NULL without items). Items are placed by batch_items.checked_at against
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
    FROM batch_items x
    WHERE x.chain_id = c.chain_id
      AND x.checked_at > now() - make_interval(secs => w.window_seconds)
) it
WHERE c.indexed_timestamp IS NOT NULL
ORDER BY c.chain_id, w.window_seconds;

-- ================================================================ outbox storage (0009)

ALTER TABLE intents ALTER COLUMN calldata SET STORAGE EXTERNAL;
ALTER TABLE attempts ALTER COLUMN raw SET STORAGE EXTERNAL;

-- ================================================================ read-only role (0010)

-- keeper_reader: SELECT on the views and EXECUTE on their functions, nothing on the tables;
-- PUBLIC may not execute the functions in schema public. The role belongs to the server, so it
-- is created only when missing (see the migration for what a member can still do).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keeper_reader') THEN
        CREATE ROLE keeper_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
END
$$;

-- first_block_since reads the event tables for keeper.settlement_totals: with its owner's rights.
ALTER FUNCTION keeper.first_block_since(bigint, bigint, bigint, bigint)
    SECURITY DEFINER SET search_path = public, pg_temp;

GRANT USAGE ON SCHEMA keeper TO keeper_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA keeper TO keeper_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA keeper TO keeper_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA keeper GRANT SELECT ON TABLES TO keeper_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA keeper GRANT EXECUTE ON FUNCTIONS TO keeper_reader;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- ================================================================ tx faults (0011)
--
-- An unexpected error while sending, assigning, confirming, checking, purging or bumping one
-- intent is contained there (keeper.tx_faults): the intent is backed off, the rest of the
-- outbox goes on, and the error is kept here (one row per intent, the latest) for
-- `keeper status`, /status and the view keeper.tx_faults. The row goes when the intent's next
-- attempt at that stage succeeds.
CREATE TABLE tx_faults (
    intent_id bigint PRIMARY KEY REFERENCES intents (id),
    chain_id  bigint NOT NULL,
    stage     text NOT NULL
              CHECK (stage IN ('send', 'assign', 'receipts', 'effects', 'purge', 'bump')),
    error     text NOT NULL,
    failures  integer NOT NULL CHECK (failures > 0),
    first_at  timestamptz NOT NULL DEFAULT now(),
    last_at   timestamptz NOT NULL DEFAULT now(),
    retry_at  timestamptz NOT NULL
);

CREATE INDEX tx_faults_chain ON tx_faults (chain_id, last_at);

CREATE VIEW keeper.tx_faults AS
SELECT f.chain_id,
       f.intent_id,
       i.kind,
       i.key,
       i.state,
       keeper.hex(i.signer) AS signer,
       i.nonce,
       f.stage,
       f.error,
       f.failures,
       f.first_at,
       f.last_at,
       f.retry_at
FROM tx_faults f
JOIN intents i ON i.id = f.intent_id;

-- ================================================================ billing v2 (0013)
--
-- StreamManager v2: priced endpoints, notice periods, closing streams and the packed
-- UsageRecorded event. The new columns of the event tables, streams, contract_params,
-- usage_inbox and usage_reports are declared in their tables above. keeper.stream_balances and
-- keeper.streams_due (0003, 0006) are declared here, as they now read keeper.price_in_force.

-- The price a report is charged at `now`: the pending price once its time has come, else the
-- price (a NULL effective_at or now: the price).
CREATE FUNCTION keeper.price_in_force(price numeric, pending numeric, effective_at bigint,
                                      now bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN effective_at <= now THEN pending ELSE price END;

-- Every stream, valued at the indexed head's timestamp. A closing stream accrues nothing (its
-- rate is 0) and shows `closing` until it is closed; `price` is its own usage price in force
-- at the head, and the price_pending pair a lower price announced for later.
CREATE VIEW keeper.stream_balances AS
SELECT s.chain_id,
       s.stream_id,
       keeper.hex(s.payer) AS payer,
       keeper.hex(s.payee) AS payee,
       CASE WHEN s.status = 'closed' THEN 'closed'
            WHEN s.status = 'closing' THEN 'closing'
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
       keeper.price_in_force(s.price, s.price_pending, s.price_effective_at,
                             c.indexed_timestamp)::numeric(78,0) AS price,
       s.opened_block,
       s.updated_block,
       COALESCE(s.updated_block <= c.finalized_block, false) AS final,
       NOT COALESCE(s.updated_block <= c.finalized_block, false) AS pending,
       s.price_list,
       CASE WHEN s.price_effective_at > c.indexed_timestamp
            THEN s.price_pending END::numeric(78,0) AS price_pending,
       CASE WHEN s.price_effective_at > c.indexed_timestamp
            THEN s.price_effective_at END AS price_effective_at,
       s.close_at,
       keeper.to_time(s.close_at) AS close_at_time
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

-- Streams the next settle pass would settle, with the reason: `depleting` (runs out within the
-- horizon, urgent: the payee is paid before the money runs out and the stream is marked
-- depleted), `min_amount` (accrued at least the minimum) or `max_interval` (not settled for
-- the maximum interval). Streams already on their way or backed off are left out, and so are
-- closing streams (0013: they accrue nothing more). 0016: the streams whose due_at has passed
-- at the indexed head, by streams_due_at_idx; the conditions then hold for those rows only.
CREATE VIEW keeper.streams_due AS
-- As in keeper.escrows_refundable: the streams on their way or backed off, computed once.
WITH held AS MATERIALIZED (
    SELECT f.chain_id, f.item FROM keeper.items_in_flight f WHERE f.kind = 'settle'
    UNION
    SELECT o.chain_id, o.item FROM keeper.items_backed_off o WHERE o.kind = 'settle'
)
SELECT c.chain_id,
       s.stream_id,
       keeper.hex(s.payer) AS payer,
       keeper.hex(s.payee) AS payee,
       a.accrued_now::numeric(78,0) AS accrued_now,
       s.balance,
       s.rate,
       c.indexed_timestamp - s.settled_at AS seconds_since_settled,
       r.runway_seconds::numeric(78,0) AS runway_seconds,
       CASE WHEN r.runway_seconds <= ps.settle_horizon THEN 'depleting'
            WHEN a.accrued_now >= ps.settle_min_amount THEN 'min_amount'
            ELSE 'max_interval' END AS reason,
       COALESCE(r.runway_seconds <= ps.settle_horizon, false) AS urgent,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of
FROM ingest_cursor c
JOIN planner_settings ps ON ps.chain_id = c.chain_id
-- OFFSET 0 keeps this subquery a scan of streams_due_at_idx for each chain's head time: joined
-- freely, a planner that guesses a third of the streams due would read them all instead.
CROSS JOIN LATERAL (
    SELECT x.* FROM streams x
    WHERE x.chain_id = c.chain_id AND x.due_at <= c.indexed_timestamp
    OFFSET 0
) s
CROSS JOIN LATERAL (
    SELECT keeper.accrued(s.balance, s.rate, s.settled_at, c.indexed_timestamp) AS accrued_now
) a
CROSS JOIN LATERAL (
    SELECT CASE WHEN d.t > c.indexed_timestamp THEN d.t - c.indexed_timestamp
                WHEN d.t <= c.indexed_timestamp THEN 0 END AS runway_seconds
    FROM (SELECT keeper.depletion_time(s.balance, s.rate, s.settled_at) AS t) d
) r
WHERE s.status = 'open'
  AND a.accrued_now > 0
  AND (r.runway_seconds <= ps.settle_horizon
       OR a.accrued_now >= ps.settle_min_amount
       OR c.indexed_timestamp - s.settled_at >= ps.settle_max_interval)
  AND NOT EXISTS (SELECT 1 FROM held h WHERE h.chain_id = c.chain_id AND h.item = s.stream_id);

-- StreamManager.StreamCloseRequested(uint256,uint256)
CREATE TABLE stream_close_requested (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    close_at     bigint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX stream_close_requested_stream_id_idx ON stream_close_requested (chain_id, stream_id, block_number, log_index);

-- StreamManager.EndpointAdded(address,uint256,bytes32,uint256)
CREATE TABLE endpoint_added (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    endpoint     numeric(78,0) NOT NULL,
    name         bytea NOT NULL CHECK (octet_length(name) = 32),
    price        numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX endpoint_added_payee_idx ON endpoint_added (chain_id, payee, endpoint, block_number, log_index);

-- StreamManager.EndpointPriceSet(address,uint256,uint256,uint256)
CREATE TABLE endpoint_price_set (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    payee        bytea NOT NULL CHECK (octet_length(payee) = 20),
    endpoint     numeric(78,0) NOT NULL,
    price        numeric(78,0) NOT NULL,
    effective_at bigint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);
CREATE INDEX endpoint_price_set_payee_idx ON endpoint_price_set (chain_id, payee, endpoint, block_number, log_index);

-- StreamManager.NoticePeriodSet(uint256)
CREATE TABLE notice_period_set (
    chain_id      bigint NOT NULL,
    block_number  bigint NOT NULL,
    log_index     integer NOT NULL,
    tx_hash       bytea NOT NULL,
    block_time    bigint NOT NULL,
    notice_period bigint NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
) PARTITION BY RANGE (chain_id, block_number);

-- The payees' price lists: one row per endpoint a payee added. `price` is the price in force as
-- of the endpoint's last event, `price_pending`/`price_effective_at` a change announced for
-- later (NULL when none); keeper.price_list shows the price in force at the indexed head.
CREATE TABLE endpoints (
    chain_id           bigint NOT NULL,
    payee              bytea NOT NULL,
    endpoint           numeric(78,0) NOT NULL,
    name               text NOT NULL,
    price              numeric(78,0) NOT NULL,
    price_pending      numeric(78,0),
    price_effective_at bigint,
    added_block        bigint NOT NULL,
    updated_block      bigint NOT NULL,
    PRIMARY KEY (chain_id, payee, endpoint),
    UNIQUE (chain_id, payee, name),
    CONSTRAINT endpoints_pending_check
        CHECK ((price_pending IS NULL) = (price_effective_at IS NULL))
);

-- An endpoint's bytes32 name as text: trailing NULs stripped, read as UTF-8. A name that is not
-- UTF-8 (or holds a NUL inside) is shown as the 0x-hex of all 32 bytes: 66 characters, longer
-- than any name read as text can be, so two names never map to one text.
CREATE FUNCTION endpoint_name(name bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN convert_from(rtrim(name, '\x00'::bytea), 'UTF8');
EXCEPTION
    WHEN character_not_in_repertoire OR untranslatable_character THEN
        RETURN '0x' || encode(name, 'hex');
END
$$;

-- The payees' price lists at the indexed head: each endpoint's price in force, and a change
-- announced for later (pending_price from effective_at; NULL when none is waiting).
CREATE VIEW keeper.price_list AS
SELECT e.chain_id,
       keeper.hex(e.payee) AS payee,
       e.endpoint,
       e.name,
       keeper.price_in_force(e.price, e.price_pending, e.price_effective_at,
                             c.indexed_timestamp)::numeric(78,0) AS price,
       CASE WHEN e.price_effective_at > c.indexed_timestamp
            THEN e.price_pending END::numeric(78,0) AS pending_price,
       CASE WHEN e.price_effective_at > c.indexed_timestamp
            THEN e.price_effective_at END AS effective_at,
       CASE WHEN e.price_effective_at > c.indexed_timestamp
            THEN keeper.to_time(e.price_effective_at) END AS effective_time,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of,
       e.added_block,
       e.updated_block,
       COALESCE(e.updated_block <= c.finalized_block, false) AS final
FROM endpoints e
LEFT JOIN ingest_cursor c ON c.chain_id = e.chain_id;

-- Every price set: endpoints added and repriced by their payee, and streams' own prices set by
-- their payer, oldest first. `status` says what became of it by the indexed head: `applied`
-- (in force from effective_at, possibly superseded since), `scheduled` (announced, not in
-- force yet) or `replaced` (a later change came before its time, so it never applied).
CREATE VIEW keeper.price_history AS
SELECT h.chain_id,
       h.kind,
       keeper.hex(h.payee) AS payee,
       h.endpoint,
       en.name,
       h.stream_id,
       h.price,
       h.effective_at,
       keeper.to_time(h.effective_at) AS effective_time,
       CASE WHEN h.effective_at <= COALESCE(h.next_time, c.indexed_timestamp) THEN 'applied'
            WHEN h.next_time IS NOT NULL THEN 'replaced'
            ELSE 'scheduled' END AS status,
       h.block_number,
       h.log_index,
       h.block_time,
       keeper.hex(h.tx_hash) AS tx_hash
FROM (
    SELECT x.chain_id, x.kind, x.payee, x.endpoint, NULL::numeric(78,0) AS stream_id, x.price,
           x.effective_at, x.block_number, x.log_index, x.block_time, x.tx_hash,
           lead(x.block_time) OVER (PARTITION BY x.chain_id, x.payee, x.endpoint
                                    ORDER BY x.block_number, x.log_index) AS next_time
    FROM (
        SELECT chain_id, 'endpoint_added' AS kind, payee, endpoint, price,
               block_time AS effective_at, block_number, log_index, block_time, tx_hash
        FROM endpoint_added
        UNION ALL
        SELECT chain_id, 'endpoint_price_set', payee, endpoint, price, effective_at,
               block_number, log_index, block_time, tx_hash
        FROM endpoint_price_set
    ) x
    UNION ALL
    SELECT u.chain_id, 'usage_price_set', o.payee, NULL, u.stream_id, u.price, u.effective_at,
           u.block_number, u.log_index, u.block_time, u.tx_hash,
           lead(u.block_time) OVER (PARTITION BY u.chain_id, u.stream_id
                                    ORDER BY u.block_number, u.log_index)
    FROM usage_price_set u
    LEFT JOIN stream_opened o ON o.chain_id = u.chain_id AND o.stream_id = u.stream_id
) h
LEFT JOIN ingest_cursor c ON c.chain_id = h.chain_id
LEFT JOIN endpoints en
       ON en.chain_id = h.chain_id AND en.payee = h.payee AND en.endpoint = h.endpoint
ORDER BY h.chain_id, h.block_number, h.log_index;

-- What is announced and not yet in force at the indexed head, with its deadline: `close` (a
-- closing stream: usage still applies until close_at, then the stream only finalizes),
-- `stream_price` (a stream's own price lowered from effective_at) and `endpoint_price` (a
-- payee's list price changed from effective_at). seconds_left is 0 once the deadline passed.
CREATE VIEW keeper.pending_terms AS
SELECT t.chain_id,
       t.kind,
       t.stream_id,
       keeper.hex(t.payer) AS payer,
       keeper.hex(t.payee) AS payee,
       t.endpoint,
       t.name,
       t.price::numeric(78,0) AS price,
       t.new_price::numeric(78,0) AS new_price,
       t.deadline,
       keeper.to_time(t.deadline) AS deadline_time,
       CASE WHEN t.deadline > c.indexed_timestamp THEN t.deadline - c.indexed_timestamp
            ELSE 0 END AS seconds_left,
       c.indexed_block AS as_of_block,
       c.indexed_timestamp AS as_of
FROM (
    SELECT s.chain_id, 'close' AS kind, s.stream_id, s.payer, s.payee,
           NULL::numeric AS endpoint, NULL::text AS name, NULL::numeric AS price,
           NULL::numeric AS new_price, s.close_at AS deadline
    FROM streams s
    WHERE s.status = 'closing'
    UNION ALL
    SELECT s.chain_id, 'stream_price', s.stream_id, s.payer, s.payee, NULL, NULL, s.price,
           s.price_pending, s.price_effective_at
    FROM streams s
    JOIN ingest_cursor c ON c.chain_id = s.chain_id
    WHERE s.status <> 'closed' AND s.price_effective_at > c.indexed_timestamp
    UNION ALL
    SELECT e.chain_id, 'endpoint_price', NULL, NULL, e.payee, e.endpoint, e.name, e.price,
           e.price_pending, e.price_effective_at
    FROM endpoints e
    JOIN ingest_cursor c ON c.chain_id = e.chain_id
    WHERE e.price_effective_at > c.indexed_timestamp
) t
LEFT JOIN ingest_cursor c ON c.chain_id = t.chain_id;

-- Usage per stream, endpoint (0: none) and UTC day (of the block's timestamp), from
-- UsageRecorded; the endpoint's name from its payee's price list.
CREATE VIEW keeper.usage_by_endpoint_daily AS
SELECT u.chain_id,
       u.stream_id,
       u.endpoint,
       e.name AS endpoint_name,
       u.day,
       u.reports,
       u.units,
       u.charged,
       u.fee,
       u.payee_credited,
       u.shortfall,
       u.last_block
FROM (
    SELECT r.chain_id,
           r.stream_id,
           r.endpoint,
           date '1970-01-01' + (r.block_time / 86400)::integer AS day,
           count(*) AS reports,
           sum(r.units)::numeric(78,0) AS units,
           sum(r.charged)::numeric(78,0) AS charged,
           sum(r.fee)::numeric(78,0) AS fee,
           sum(r.charged - r.fee)::numeric(78,0) AS payee_credited,
           sum(r.shortfall)::numeric(78,0) AS shortfall,
           max(r.block_number) AS last_block
    FROM usage_recorded r
    GROUP BY r.chain_id, r.stream_id, r.endpoint,
             date '1970-01-01' + (r.block_time / 86400)::integer
) u
LEFT JOIN streams s ON s.chain_id = u.chain_id AND s.stream_id = u.stream_id
LEFT JOIN endpoints e
       ON e.chain_id = u.chain_id AND e.payee = s.payee AND e.endpoint = u.endpoint;

-- estimateCost / canAffordUsage per stream and endpoint at the indexed head: the accepted
-- usage not recorded yet (usage_reports in state pending), priced at what is in force (as
-- priceInForce: an own-price stream's own price, whatever the endpoint; on a price-list stream
-- the endpoint's list price, NULL when its payee has not listed it), against the balance left
-- once the stream's accrual is settled. A report costing more still records: it charges what
-- is left.
CREATE VIEW keeper.usage_estimates AS
SELECT b.chain_id,
       b.stream_id,
       p.endpoint,
       e.name AS endpoint_name,
       b.payer,
       b.payee,
       b.status,
       p.pending_reports,
       p.pending_units::numeric(78,0) AS pending_units,
       x.price::numeric(78,0) AS price,
       (p.pending_units * x.price)::numeric(78,0) AS estimate_cost,
       b.balance_after_settle AS balance_after_settlement,
       (b.balance_after_settle >= p.pending_units * x.price) AS can_afford,
       b.as_of_block,
       b.as_of
FROM (
    SELECT r.chain_id, r.stream_id, r.endpoint, count(*) AS pending_reports,
           sum(r.units) AS pending_units
    FROM usage_reports r
    WHERE r.state = 'pending'
    GROUP BY r.chain_id, r.stream_id, r.endpoint
) p
JOIN streams s ON s.chain_id = p.chain_id AND s.stream_id = p.stream_id
JOIN keeper.stream_balances b ON b.chain_id = p.chain_id AND b.stream_id = p.stream_id
LEFT JOIN endpoints e
       ON e.chain_id = p.chain_id AND e.payee = s.payee AND e.endpoint = p.endpoint
CROSS JOIN LATERAL (
    SELECT CASE WHEN NOT s.price_list THEN b.price
                ELSE keeper.price_in_force(e.price, e.price_pending, e.price_effective_at,
                                           b.as_of)
           END AS price
) x
WHERE s.status <> 'closed';

-- Affordability per stream (see 0007), its pending usage priced per endpoint as in
-- keeper.usage_estimates (usage at a price not known is left out of pending_cost); `price` is
-- the stream's own price in force.
CREATE VIEW keeper.usage_affordability AS
SELECT b.chain_id,
       b.stream_id,
       b.payer,
       b.payee,
       p.pending_reports,
       p.pending_units::numeric(78,0) AS pending_units,
       b.price,
       p.pending_cost::numeric(78,0) AS pending_cost,
       b.balance_after_settle AS available,
       (p.pending_cost <= b.balance_after_settle) AS can_afford,
       CASE WHEN p.pending_cost > b.balance_after_settle
            THEN p.pending_cost - b.balance_after_settle
            ELSE 0 END::numeric(78,0) AS expected_shortfall,
       b.as_of_block,
       b.as_of
FROM (
    SELECT x.chain_id, x.stream_id, sum(x.pending_reports)::bigint AS pending_reports,
           sum(x.pending_units) AS pending_units, COALESCE(sum(x.estimate_cost), 0) AS pending_cost
    FROM keeper.usage_estimates x
    GROUP BY x.chain_id, x.stream_id
) p
JOIN keeper.stream_balances b ON b.chain_id = p.chain_id AND b.stream_id = p.stream_id
WHERE b.status <> 'closed';

-- ================================================================ due index (0016)

-- The chain time from which a stream is due by the planner's thresholds: the first second t
-- at which it has accrued something (t > settled_at) and either has accrued the minimum
-- (rate x (t - settled_at) >= min_amount, when the balance holds that much), has waited the
-- maximum interval (t - settled_at >= max_interval) or runs out within the horizon
-- (depletion_time - t <= horizon). Each condition, once true, stays true as t grows. NULL: never
-- due (not open, an empty balance, a zero rate, or no thresholds). Arithmetic on numeric (a
-- depletion time can be ~2^96); the answer is at most settled_at + max_interval, capped to
-- bigint.
CREATE FUNCTION stream_due_at(status text, balance numeric, rate numeric, settled_at bigint,
                              min_amount numeric, max_interval bigint, horizon bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN status = 'open' AND balance > 0 AND rate > 0 AND max_interval IS NOT NULL THEN
        LEAST(GREATEST(settled_at::numeric + 1,
                       LEAST(keeper.depletion_time(balance, rate, settled_at) - horizon,
                             CASE WHEN balance >= min_amount
                                  THEN settled_at + div(min_amount + rate - 1, rate) END,
                             settled_at::numeric + max_interval)),
              9223372036854775807)::bigint
END;

-- Every write of a stream's accrual terms recomputes its due time, whoever writes it (the
-- indexer's merge and refresh, a rollback's refresh).
CREATE FUNCTION streams_set_due_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.due_at := (SELECT stream_due_at(NEW.status, NEW.balance, NEW.rate, NEW.settled_at,
                                        ps.settle_min_amount, ps.settle_max_interval,
                                        ps.settle_horizon)
                   FROM planner_settings ps
                   WHERE ps.chain_id = NEW.chain_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER streams_due_at BEFORE INSERT OR UPDATE OF status, balance, rate, settled_at
    ON streams FOR EACH ROW EXECUTE FUNCTION streams_set_due_at();

-- New thresholds for a chain: its streams' due times again (only the rows whose due time
-- changes are written). Runs in the transaction that changes them, so no pass sees a mix.
CREATE FUNCTION planner_settings_due_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.settle_min_amount = OLD.settle_min_amount
       AND NEW.settle_max_interval = OLD.settle_max_interval
       AND NEW.settle_horizon = OLD.settle_horizon THEN
        RETURN NULL;
    END IF;
    UPDATE streams s
    SET due_at = d.due_at
    FROM (SELECT x.chain_id, x.stream_id,
                 stream_due_at(x.status, x.balance, x.rate, x.settled_at,
                               NEW.settle_min_amount, NEW.settle_max_interval,
                               NEW.settle_horizon) AS due_at
          FROM streams x
          WHERE x.chain_id = NEW.chain_id) d
    WHERE s.chain_id = d.chain_id AND s.stream_id = d.stream_id
      AND s.due_at IS DISTINCT FROM d.due_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER planner_settings_due_at AFTER INSERT OR UPDATE ON planner_settings
    FOR EACH ROW EXECUTE FUNCTION planner_settings_due_at();

-- The streams due by a time, and nothing else: most open streams are not due, closed ones
-- never are.
CREATE INDEX streams_due_at_idx ON streams (chain_id, due_at) WHERE due_at IS NOT NULL;

-- The items backed off within the window, by the time they were checked.
CREATE INDEX batch_items_backed_off_at_idx ON batch_items (chain_id, kind, checked_at)
    WHERE outcome IN ('no_effect', 'reverted');

-- Failed intents by time: the usage ones within their backoff (sql/usage.sql usage_due), the
-- newest for `keeper status` (sql/status.sql last_failed_intent).
CREATE INDEX intents_failed_idx ON intents (chain_id, updated_at) WHERE state = 'failed';

-- The transaction manager's per-pass reads of past intents, by index: the hourly budget
-- (sql/outbox.sql spent_since, and the metrics' spent_last_hour) reads the intents mined
-- since an hour ago, and the effects check the confirmed or final batches not checked yet.
CREATE INDEX intents_mined_at_idx ON intents (chain_id, mined_at) WHERE gas_used IS NOT NULL;
CREATE INDEX intents_effects_due_idx ON intents (chain_id, id)
    WHERE effects_checked_at IS NULL AND state IN ('confirmed', 'final');

-- keeper.pending_terms (`keeper status`, /status): the closing streams and the prices
-- announced for later, by index.
CREATE INDEX streams_closing_idx ON streams (chain_id) WHERE status = 'closing';
CREATE INDEX streams_price_pending_idx ON streams (chain_id, price_effective_at)
    WHERE price_effective_at IS NOT NULL;

-- An escrow's refund items in every intent that held one (keeper.escrows_expired: its latest
-- refund). Only refunds: an index of every item by entity took a random write into a large
-- index for each of the thousands of items a pass plans.
CREATE INDEX batch_items_refund_idx ON batch_items (chain_id, entity, intent_id)
    WHERE kind = 'refund';

-- ================================================================ retention (0017)
--
-- Finished outbox rows and reconciled usage rows leave the live tables after
-- `retention.keep_days` (keeper.db.retention): moved into schema `archive` (tables with the
-- live tables' columns, LIKE, and a primary key) or deleted. The retired usage reports' producer
-- keys stay in usage_retired_keys, which the intake's duplicate check reads too.
CREATE SCHEMA archive;

CREATE TABLE archive.intents (LIKE public.intents);
ALTER TABLE archive.intents ADD PRIMARY KEY (id);

CREATE TABLE archive.attempts (LIKE public.attempts);
ALTER TABLE archive.attempts ADD PRIMARY KEY (id);
CREATE INDEX attempts_intent_idx ON archive.attempts (intent_id);

CREATE TABLE archive.batch_items (LIKE public.batch_items);
ALTER TABLE archive.batch_items ADD PRIMARY KEY (intent_id, position);

CREATE TABLE archive.tx_faults (LIKE public.tx_faults);
ALTER TABLE archive.tx_faults ADD PRIMARY KEY (intent_id);

CREATE TABLE archive.usage_inbox (LIKE public.usage_inbox);
ALTER TABLE archive.usage_inbox ADD PRIMARY KEY (id);

CREATE TABLE archive.usage_reports (LIKE public.usage_reports);
ALTER TABLE archive.usage_reports ADD PRIMARY KEY (inbox_id);

CREATE TABLE usage_retired_keys (
    chain_id     bigint NOT NULL,
    producer_key text NOT NULL,
    inbox_id     bigint NOT NULL,
    retired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, producer_key)
);

-- Finished intents and reconciled reports, oldest first, by index.
CREATE INDEX intents_finished_idx ON intents (chain_id, updated_at)
    WHERE state IN ('final', 'failed', 'replan');
CREATE INDEX usage_reports_reconciled_idx ON usage_reports (chain_id, reconciled_at)
    WHERE state <> 'pending';

GRANT USAGE ON SCHEMA archive TO keeper_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA archive TO keeper_reader;

-- ================================================================ event partitions (0018)

-- The event tables are partitioned by chain and block range, so that the ranges of old,
-- finalized blocks can be detached and archived. Partitions live in schema `event_partitions`:
-- one per range of `event_ranges` (created by the indexer before it writes a range:
-- ensure_event_partitions), plus a DEFAULT partition that takes any row no range covers;
-- ensure_event_partitions moves such rows into the range it creates. archive_event_range moves
-- a finalized range into schema `archive`.

CREATE SCHEMA event_partitions;

-- Every event table, and what archive_event_range keeps attached of an archived range: the
-- rows the projections are recomputed from (keeper.ingest.store refreshes an entity from all
-- its events, on ingest and on rollback). `all`: every row (creations, closes, price and
-- parameter changes, claims: one row per entity or rare); `latest`: per `keep_key`, the newest
-- row with no newer finalized row of the same key (post-state events: balances, rates); `none`:
-- nothing (skips and credits, read only for blocks above the finalized one).
CREATE TABLE event_tables (
    name     text PRIMARY KEY,
    keep     text NOT NULL CHECK (keep IN ('all', 'latest', 'none')),
    keep_key text,
    CHECK ((keep = 'latest') = (keep_key IS NOT NULL))
);
INSERT INTO event_tables (name, keep, keep_key) VALUES
    ('claimed', 'all', NULL),
    ('contract_events', 'all', NULL),
    ('endpoint_added', 'all', NULL),
    ('endpoint_price_set', 'all', NULL),
    ('escrow_created', 'all', NULL),
    ('escrow_refunded', 'all', NULL),
    ('escrow_released', 'all', NULL),
    ('fee_recipient_updated', 'all', NULL),
    ('fee_updated', 'all', NULL),
    ('fees_credited', 'none', NULL),
    ('notice_period_set', 'all', NULL),
    ('refund_skipped', 'none', NULL),
    ('settle_skipped', 'none', NULL),
    ('stream_close_requested', 'all', NULL),
    ('stream_closed', 'all', NULL),
    ('stream_opened', 'all', NULL),
    ('stream_rate_updated', 'latest', 'stream_id'),
    ('stream_settled', 'latest', 'stream_id'),
    ('stream_topped_up', 'latest', 'stream_id'),
    ('usage_price_set', 'all', NULL),
    ('usage_recorded', 'latest', 'stream_id'),
    ('usage_skipped', 'none', NULL),
    ('vault_deposited', 'latest', 'account'),
    ('vault_withdrawn', 'latest', 'account');

-- Rows no range covers (written by hand, or before 0018).
CREATE TABLE event_partitions.claimed_default PARTITION OF claimed DEFAULT;
CREATE TABLE event_partitions.contract_events_default PARTITION OF contract_events DEFAULT;
CREATE TABLE event_partitions.endpoint_added_default PARTITION OF endpoint_added DEFAULT;
CREATE TABLE event_partitions.endpoint_price_set_default PARTITION OF endpoint_price_set DEFAULT;
CREATE TABLE event_partitions.escrow_created_default PARTITION OF escrow_created DEFAULT;
CREATE TABLE event_partitions.escrow_refunded_default PARTITION OF escrow_refunded DEFAULT;
CREATE TABLE event_partitions.escrow_released_default PARTITION OF escrow_released DEFAULT;
CREATE TABLE event_partitions.fee_recipient_updated_default PARTITION OF fee_recipient_updated DEFAULT;
CREATE TABLE event_partitions.fee_updated_default PARTITION OF fee_updated DEFAULT;
CREATE TABLE event_partitions.fees_credited_default PARTITION OF fees_credited DEFAULT;
CREATE TABLE event_partitions.notice_period_set_default PARTITION OF notice_period_set DEFAULT;
CREATE TABLE event_partitions.refund_skipped_default PARTITION OF refund_skipped DEFAULT;
CREATE TABLE event_partitions.settle_skipped_default PARTITION OF settle_skipped DEFAULT;
CREATE TABLE event_partitions.stream_close_requested_default PARTITION OF stream_close_requested DEFAULT;
CREATE TABLE event_partitions.stream_closed_default PARTITION OF stream_closed DEFAULT;
CREATE TABLE event_partitions.stream_opened_default PARTITION OF stream_opened DEFAULT;
CREATE TABLE event_partitions.stream_rate_updated_default PARTITION OF stream_rate_updated DEFAULT;
CREATE TABLE event_partitions.stream_settled_default PARTITION OF stream_settled DEFAULT;
CREATE TABLE event_partitions.stream_topped_up_default PARTITION OF stream_topped_up DEFAULT;
CREATE TABLE event_partitions.usage_price_set_default PARTITION OF usage_price_set DEFAULT;
CREATE TABLE event_partitions.usage_recorded_default PARTITION OF usage_recorded DEFAULT;
CREATE TABLE event_partitions.usage_skipped_default PARTITION OF usage_skipped DEFAULT;
CREATE TABLE event_partitions.vault_deposited_default PARTITION OF vault_deposited DEFAULT;
CREATE TABLE event_partitions.vault_withdrawn_default PARTITION OF vault_withdrawn DEFAULT;

-- The block ranges that have partitions, per chain: [from_block, to_block). `archived_at` is set
-- once archive_event_range has moved the range's rows into schema `archive`.
CREATE TABLE event_ranges (
    chain_id    bigint NOT NULL,
    from_block  bigint NOT NULL CHECK (from_block >= 0),
    to_block    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz,
    PRIMARY KEY (chain_id, from_block),
    CHECK (to_block > from_block)
);

-- Make sure every event table has a partition for each block of chain p_chain in
-- [p_from, p_to]. A missing range is created for every event table at once, aligned to
-- multiples of p_size blocks and clipped to the ranges already there (so that a changed size
-- never overlaps them); the DEFAULT partitions' rows in it move into it. Returns the end
-- (exclusive) of the range holding p_to: blocks below it need no further call.
-- One caller at a time (the lock on event_ranges: the indexers of several chains may share a
-- database). Attaching locks the parent briefly and the DEFAULT partition while it is checked,
-- so a lock on them not had within half a second fails the call (lock_not_available) rather
-- than make the daemon's queries queue behind it; the caller tries again.
CREATE FUNCTION ensure_event_partitions(p_chain bigint, p_from bigint, p_to bigint,
                                        p_size bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    b bigint := p_from;
    chunk bigint;
    lo bigint;
    hi bigint;
    t record;
    part text;
BEGIN
    IF p_size IS NULL OR p_size < 1 THEN
        RAISE EXCEPTION 'a partition spans at least 1 block, not %', p_size;
    END IF;
    IF p_from < 0 OR p_to < p_from THEN
        RAISE EXCEPTION 'no block range [%, %]', p_from, p_to;
    END IF;
    LOCK TABLE event_ranges IN SHARE ROW EXCLUSIVE MODE;
    PERFORM set_config('lock_timeout', '500ms', true);
    LOOP
        SELECT r.to_block INTO hi FROM event_ranges r
        WHERE r.chain_id = p_chain AND r.from_block <= b AND r.to_block > b;
        IF NOT FOUND THEN
            chunk := b - b % p_size;
            SELECT greatest(chunk, max(r.to_block)) INTO lo FROM event_ranges r
            WHERE r.chain_id = p_chain AND r.to_block <= b;
            SELECT least(chunk + p_size, min(r.from_block)) INTO hi FROM event_ranges r
            WHERE r.chain_id = p_chain AND r.from_block > b;
            FOR t IN SELECT name FROM event_tables ORDER BY name LOOP
                part := format('%s_%s_%s', t.name, p_chain, lo);
                EXECUTE format('CREATE TABLE event_partitions.%I '
                               '(LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               part, t.name);
                EXECUTE format('WITH moved AS (DELETE FROM event_partitions.%I '
                               'WHERE chain_id = $1 AND block_number >= $2 AND block_number < $3 '
                               'RETURNING *) INSERT INTO event_partitions.%I SELECT * FROM moved',
                               t.name || '_default', part)
                    USING p_chain, lo, hi;
                EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION event_partitions.%I '
                               'FOR VALUES FROM (%s, %s) TO (%s, %s)',
                               t.name, part, p_chain, lo, p_chain, hi);
            END LOOP;
            INSERT INTO event_ranges (chain_id, from_block, to_block) VALUES (p_chain, lo, hi);
        END IF;
        EXIT WHEN hi > p_to;
        b := hi;
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);
    RETURN hi;
END
$$;

-- Archive chain p_chain's event range that starts at block p_from: each event table's partition
-- of it is detached and moved, whole and under its name, into schema `archive`; in its place a
-- new partition keeps the rows `event_tables` says the projections are recomputed from. Only a
-- range wholly at or below the chain's finalized and indexed blocks, which no rollback reaches.
-- The kept rows are gathered first, with no lock that stops the indexer; then the swaps, each
-- a short ACCESS EXCLUSIVE lock on its table (one not had within half a second fails the call,
-- lock_not_available, before a deadlock with the daemon's queries could fail one of them).
-- Returns the rows moved to the archive and the rows kept attached; (0, 0) for a range
-- archived before.
CREATE FUNCTION archive_event_range(p_chain bigint, p_from bigint, OUT archived bigint,
                                    OUT kept bigint)
LANGUAGE plpgsql AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    r event_ranges;
    safe bigint;
    t record;
    part text;
    n bigint;
BEGIN
    archived := 0;
    kept := 0;
    SELECT * INTO r FROM event_ranges WHERE chain_id = p_chain AND from_block = p_from;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chain % has no event range starting at block %', p_chain, p_from;
    END IF;
    IF r.archived_at IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT least(c.finalized_block, c.indexed_block) INTO safe
    FROM ingest_cursor c WHERE c.chain_id = p_chain;
    IF safe IS NULL OR r.to_block - 1 > safe THEN
        RAISE EXCEPTION 'blocks % to % of chain % are not all finalized and indexed (up to %)',
            r.from_block, r.to_block - 1, p_chain, coalesce(safe::text, 'none')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR t IN SELECT * FROM event_tables ORDER BY name LOOP
        part := format('%s_%s_%s', t.name, p_chain, r.from_block);
        EXECUTE format('SELECT count(*) FROM event_partitions.%I', part) INTO n;
        archived := archived + n;
        EXECUTE format('CREATE TABLE event_partitions.%I '
                       '(LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       'archiving_' || t.name, t.name);
        IF t.keep = 'all' THEN
            EXECUTE format('INSERT INTO event_partitions.%I SELECT * FROM event_partitions.%I',
                           'archiving_' || t.name, part);
        ELSIF t.keep = 'latest' THEN
            -- A newer row above the finalized block may still be rolled back: it does not count.
            EXECUTE format('INSERT INTO event_partitions.%1$I SELECT * FROM event_partitions.%2$I p '
                           'WHERE NOT EXISTS (SELECT FROM public.%3$I x '
                           'WHERE x.chain_id = p.chain_id AND x.%4$I = p.%4$I '
                           'AND (x.block_number, x.log_index) > (p.block_number, p.log_index) '
                           'AND x.block_number <= $1)',
                           'archiving_' || t.name, part, t.name, t.keep_key)
                USING safe;
        END IF;
        EXECUTE format('SELECT count(*) FROM event_partitions.%I', 'archiving_' || t.name) INTO n;
        kept := kept + n;
    END LOOP;
    LOCK TABLE event_ranges IN SHARE ROW EXCLUSIVE MODE;
    IF (SELECT archived_at FROM event_ranges
        WHERE chain_id = p_chain AND from_block = p_from) IS NOT NULL THEN
        RAISE EXCEPTION 'blocks % to % of chain % were archived meanwhile',
            r.from_block, r.to_block - 1, p_chain;
    END IF;
    PERFORM set_config('lock_timeout', '500ms', true);
    FOR t IN SELECT * FROM event_tables ORDER BY name LOOP
        part := format('%s_%s_%s', t.name, p_chain, r.from_block);
        EXECUTE format('ALTER TABLE public.%I DETACH PARTITION event_partitions.%I', t.name, part);
        EXECUTE format('ALTER TABLE event_partitions.%I SET SCHEMA archive', part);
        EXECUTE format('ALTER TABLE event_partitions.%I RENAME TO %I', 'archiving_' || t.name, part);
        EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION event_partitions.%I '
                       'FOR VALUES FROM (%s, %s) TO (%s, %s)',
                       t.name, part, p_chain, r.from_block, p_chain, r.to_block);
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);
    UPDATE event_ranges SET archived_at = now()
    WHERE chain_id = p_chain AND from_block = p_from;
END
$$;

-- ================================================================ send errors (0019)

CREATE INDEX attempts_send_error_idx ON attempts (intent_id) WHERE last_error IS NOT NULL;

-- Intents whose latest attempt the node refused (or whose send failed): what tx_pipeline's
-- latest_send_error shows, for those intents only (by the partial index: `keeper status` and
-- /status read the newest of them).
CREATE VIEW keeper.send_errors AS
SELECT i.chain_id,
       i.id AS intent_id,
       i.kind,
       i.key,
       i.state,
       la.last_error AS message,
       la.last_outcome AS outcome,
       i.updated_at
FROM (SELECT DISTINCT a.intent_id FROM attempts a WHERE a.last_error IS NOT NULL) e
JOIN intents i ON i.id = e.intent_id
CROSS JOIN LATERAL (
    SELECT a.last_error, a.last_outcome FROM attempts a
    WHERE a.intent_id = i.id ORDER BY a.id DESC LIMIT 1
) la
WHERE la.last_error IS NOT NULL;

-- ================================================================ usage reorg check (0020)

-- Per chain, the newest reorg whose effect on reconciled usage reports the planner has undone
-- (keeper.plan.usage: a pass looks for stale reconciliations only after a newer reorg).
CREATE TABLE usage_reorgs_checked (
    chain_id bigint PRIMARY KEY,
    reorg_id bigint NOT NULL
);
