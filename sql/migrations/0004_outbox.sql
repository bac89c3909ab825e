-- 0004_outbox: the transaction manager's durable outbox.
--
-- An intent is one on-chain call the keeper wants made (a settle batch, a refund batch, a
-- usage batch, a nonce purge), identified by an idempotency key. An attempt is one signed
-- transaction for it; the signed bytes are stored before they are broadcast, so a restart
-- rebroadcasts exactly what may already be in a mempool and never signs a nonce differently.
-- Replacements (fee bumps) are further attempts at the same nonce.
--
-- Intent states:
--   planned    waiting for a signer and nonce
--   assigned   pinned to (signer, nonce); attempts are signed and broadcast
--   mined      one attempt has a receipt, not yet at the confirmation depth
--   confirmed  the receipt is at the confirmation depth
--   final      the receipt's block is finalized
--   failed     will not be sent again (simulation or receipt reverted), reason recorded
--   replan     its nonce was purged; the planners plan its items again (terminal)

CREATE TABLE intents (
    id                  bigserial PRIMARY KEY,
    chain_id            bigint NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('settle', 'refund', 'usage', 'purge', 'call')),
    key                 text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    target              bytea NOT NULL CHECK (octet_length(target) = 20),
    calldata            bytea NOT NULL,
    value               numeric(78,0) NOT NULL DEFAULT 0 CHECK (value >= 0),
    items               jsonb NOT NULL DEFAULT '[]',
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

-- Per item effects checked after confirmation (a settle batch's streams, a usage batch's
-- reports): an item without its effect is backed off, never retried forever in silence.
CREATE TABLE intent_items (
    intent_id   bigint NOT NULL REFERENCES intents (id),
    item        text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('effect', 'no_effect', 'skipped')),
    detail      text,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (intent_id, item)
);
