-- 0007_usage: the usage oracle's way in, its sequence numbers and its reconciliation.
--
-- Producers INSERT or COPY rows into `usage_inbox` (or run `keeper usage import FILE`). The
-- fields are text on purpose: a malformed value must be kept with its reason, never refused at
-- the door or silently fixed. Numbers and timestamps insert into them as they are (Postgres
-- converts them to text on assignment).
--
-- The keeper's planning pass validates unvalidated rows (verdict NULL) in id order. A rejected
-- row keeps its verdict, a reason code and a detail. An accepted row gets a `usage_reports` row
-- with the stream's next usage sequence number, written in the same transaction as the verdict,
-- before any transaction carrying it is signed. A report then goes out in a recordUsageBatch
-- call and is reconciled from the indexed events: `recorded` (with what was charged, the fee
-- and any shortfall) from UsageRecorded, or `rejected` when the stream was closed before it was
-- recorded. A reconciliation whose block is reorged away is undone by the next pass.

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
SELECT i.chain_id,
       (item.value ->> 0)::numeric(78,0) AS stream_id,
       (item.value ->> 2)::numeric(78,0) AS seq,
       (item.value ->> 1)::numeric(78,0) AS units,
       i.id AS intent_id,
       i.key AS intent_key,
       i.state AS intent_state
FROM intents i
LEFT JOIN ingest_cursor c ON c.chain_id = i.chain_id
CROSS JOIN LATERAL jsonb_array_elements(i.items) AS item (value)
WHERE i.kind = 'usage'
  AND (i.state IN ('planned', 'assigned', 'mined')
       OR (i.state IN ('confirmed', 'final')
           AND i.block_number > COALESCE(c.indexed_block, -1)));

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
       r.reconciled_at
FROM usage_inbox u
LEFT JOIN usage_reports r ON r.inbox_id = u.id
LEFT JOIN LATERAL (
    SELECT x.intent_id, x.intent_key FROM keeper.usage_in_flight x
    WHERE r.state = 'pending' AND x.chain_id = r.chain_id AND x.stream_id = r.stream_id
      AND x.seq = r.seq
    LIMIT 1
) f ON true;

-- Usage not charged yet: received, pending or sending, oldest first.
CREATE VIEW keeper.usage_pending AS
SELECT * FROM keeper.usage WHERE status IN ('received', 'pending', 'sending');

-- Usage rows that will not be charged, with the reason code and a readable detail.
CREATE VIEW keeper.usage_rejected AS
SELECT * FROM keeper.usage WHERE status = 'rejected';

-- Affordability (estimateCost / canAffordUsage): each open stream's accepted, not yet recorded
-- usage priced at its current usage price, against what the stream holds once its accrual is
-- settled. A report costing more than that still records: it charges what is left and
-- reports the shortfall.
CREATE VIEW keeper.usage_affordability AS
SELECT b.chain_id,
       b.stream_id,
       b.payer,
       b.payee,
       p.pending_reports,
       p.pending_units::numeric(78,0) AS pending_units,
       b.price,
       (p.pending_units * b.price)::numeric(78,0) AS pending_cost,
       b.balance_after_settle AS available,
       (p.pending_units * b.price <= b.balance_after_settle) AS can_afford,
       CASE WHEN p.pending_units * b.price > b.balance_after_settle
            THEN p.pending_units * b.price - b.balance_after_settle
            ELSE 0 END::numeric(78,0) AS expected_shortfall,
       b.as_of_block,
       b.as_of
FROM (
    SELECT r.chain_id, r.stream_id, count(*) AS pending_reports, sum(r.units) AS pending_units
    FROM usage_reports r
    WHERE r.state = 'pending'
    GROUP BY r.chain_id, r.stream_id
) p
JOIN keeper.stream_balances b ON b.chain_id = p.chain_id AND b.stream_id = p.stream_id
WHERE b.status <> 'closed';
