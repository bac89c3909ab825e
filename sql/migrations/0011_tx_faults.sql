-- 0011_tx_faults: errors the transaction manager contained while handling one intent.
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
