-- 0002_indexer: what the indexer writes. Every table carries chain_id, so several chains can
-- share one database. uint256 values are numeric(78,0); addresses and hashes are raw bytea
-- (the views in schema `keeper` show them as 0x-hex).
--
-- Event tables hold one row per log, keyed by (chain_id, block_number, log_index), a total
-- order of the chain; a reorg deletes the rows of the orphaned blocks. Projections (streams,
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
);

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
);
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
);

-- StreamManager.FeeUpdated(uint256)
CREATE TABLE fee_updated (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    fee_bps      integer NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

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
);
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
);
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
);
CREATE INDEX stream_closed_stream_id_idx ON stream_closed (chain_id, stream_id, block_number, log_index);

-- StreamManager.StreamOpened(uint256,address,address,uint256,uint256)
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
    PRIMARY KEY (chain_id, block_number, log_index)
);
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
);
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
);
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
);
CREATE INDEX stream_topped_up_stream_id_idx ON stream_topped_up (chain_id, stream_id, block_number, log_index);

-- StreamManager.UsagePriceSet(uint256,uint256)
CREATE TABLE usage_price_set (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    price        numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);
CREATE INDEX usage_price_set_stream_id_idx ON usage_price_set (chain_id, stream_id, block_number, log_index);

-- StreamManager.UsageRecorded(uint256,uint256,uint256,uint256,uint256,uint256,uint256)
CREATE TABLE usage_recorded (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    log_index    integer NOT NULL,
    tx_hash      bytea NOT NULL,
    block_time   bigint NOT NULL,
    stream_id    numeric(78,0) NOT NULL,
    seq          numeric(78,0) NOT NULL,
    units        numeric(78,0) NOT NULL,
    charged      numeric(78,0) NOT NULL,
    fee          numeric(78,0) NOT NULL,
    shortfall    numeric(78,0) NOT NULL,
    balance_after numeric(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);
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
);
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
);
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
);
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
);
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
);
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
);
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
);
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
    status        text NOT NULL CHECK (status IN ('open', 'closed')),
    opened_block  bigint NOT NULL,
    updated_block bigint NOT NULL,
    PRIMARY KEY (chain_id, stream_id)
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

-- Contract-wide settings: StreamManager's fee, fee recipient and pause flags.
CREATE TABLE contract_params (
    chain_id       bigint PRIMARY KEY,
    fee_bps        integer,
    fee_recipient  bytea,
    manager_paused boolean NOT NULL DEFAULT false,
    vault_paused   boolean NOT NULL DEFAULT false,
    updated_block  bigint NOT NULL
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
    DELETE FROM refund_skipped WHERE chain_id = p_chain AND block_number > p_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM settle_skipped WHERE chain_id = p_chain AND block_number > p_block;
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
