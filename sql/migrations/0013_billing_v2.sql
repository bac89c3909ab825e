-- 0013_billing_v2: StreamManager v2 — priced endpoints, notice periods, closing streams and the
-- packed UsageRecorded event.
--
-- Event tables: StreamOpened says whether the stream bills at its payee's price list,
-- UsagePriceSet when the price takes effect (now for an increase, after the notice period for
-- a decrease), UsageRecorded the endpoint and the price it charged. New events: EndpointAdded,
-- EndpointPriceSet, StreamCloseRequested and NoticePeriodSet. Rows indexed from the first
-- StreamManager get what those events meant there: no price list, a price in force at once,
-- endpoint 0 and the price charged + shortfall = units x price.
--
-- Projections: a stream is `closing` between the payer's close request and its close (rate 0,
-- close_at set), and keeps an announced lower price beside the price in force; `endpoints`
-- holds the payees' price lists; contract_params the notice period. The usage inbox takes an
-- endpoint name per row, and a report keeps the endpoint and the price it was charged.
--
-- Views: keeper.price_list, price_history, pending_terms, usage_by_endpoint_daily and
-- usage_estimates are new; stream_balances shows closing streams and the price in force at the
-- head, streams_due leaves closing streams out, usage_affordability prices per endpoint, and
-- the usage views show each report's endpoint. The new views are readable by keeper_reader
-- through 0010's default privileges.

-- ------------------------------------------------------------------------- event tables

ALTER TABLE stream_opened ADD COLUMN price_list boolean NOT NULL DEFAULT false;

ALTER TABLE usage_price_set ADD COLUMN effective_at bigint;
UPDATE usage_price_set SET effective_at = block_time;
ALTER TABLE usage_price_set ALTER COLUMN effective_at SET NOT NULL;

ALTER TABLE usage_recorded ADD COLUMN endpoint numeric(78,0), ADD COLUMN price numeric(78,0);
UPDATE usage_recorded
SET endpoint = 0,
    price = CASE WHEN units > 0 THEN div(charged + shortfall, units) ELSE 0 END;
ALTER TABLE usage_recorded
    ALTER COLUMN endpoint SET NOT NULL,
    ALTER COLUMN price SET NOT NULL;

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
);
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
);
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
);
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
);

-- ------------------------------------------------------------------------- projections

ALTER TABLE streams
    ADD COLUMN price_list boolean NOT NULL DEFAULT false,
    ADD COLUMN close_at bigint,
    ADD COLUMN price_pending numeric(78,0),
    ADD COLUMN price_effective_at bigint,
    DROP CONSTRAINT streams_status_check,
    ADD CONSTRAINT streams_status_check CHECK (status IN ('open', 'closing', 'closed')),
    ADD CONSTRAINT streams_close_at_check CHECK ((status = 'closing') = (close_at IS NOT NULL)),
    ADD CONSTRAINT streams_pending_check
        CHECK ((price_pending IS NULL) = (price_effective_at IS NULL));

ALTER TABLE contract_params ADD COLUMN notice_period bigint;

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

CREATE OR REPLACE FUNCTION delete_events_after(p_chain bigint, p_block bigint) RETURNS bigint
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

-- ------------------------------------------------------------------------- usage inbox

-- The endpoint's name as its payee published it (NULL or empty: none).
ALTER TABLE usage_inbox ADD COLUMN endpoint text;
-- The endpoint a report is charged at (0: none), its name, and the price it was charged
-- (set when recorded).
ALTER TABLE usage_reports
    ADD COLUMN endpoint numeric(78,0) NOT NULL DEFAULT 0,
    ADD COLUMN endpoint_name text,
    ADD COLUMN price numeric(78,0);

-- ------------------------------------------------------------------------- views

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
CREATE OR REPLACE VIEW keeper.stream_balances AS
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

-- Streams the next settle pass would settle (see 0006): open or depleted ones only, a closing
-- stream accrues nothing more.
CREATE OR REPLACE VIEW keeper.streams_due AS
SELECT b.chain_id,
       b.stream_id,
       b.payer,
       b.payee,
       b.accrued_now,
       b.balance,
       b.rate,
       b.as_of - b.settled_at AS seconds_since_settled,
       b.runway_seconds,
       CASE WHEN b.runway_seconds <= ps.settle_horizon THEN 'depleting'
            WHEN b.accrued_now >= ps.settle_min_amount THEN 'min_amount'
            ELSE 'max_interval' END AS reason,
       COALESCE(b.runway_seconds <= ps.settle_horizon, false) AS urgent,
       b.as_of_block,
       b.as_of
FROM keeper.stream_balances b
JOIN planner_settings ps ON ps.chain_id = b.chain_id
WHERE b.status IN ('open', 'depleted')
  AND b.accrued_now > 0
  AND (b.runway_seconds <= ps.settle_horizon
       OR b.accrued_now >= ps.settle_min_amount
       OR b.as_of - b.settled_at >= ps.settle_max_interval)
  AND NOT EXISTS (SELECT 1 FROM keeper.items_in_flight f
                  WHERE f.chain_id = b.chain_id AND f.kind = 'settle'
                    AND f.item = b.stream_id::text)
  AND NOT EXISTS (SELECT 1 FROM keeper.items_backed_off o
                  WHERE o.chain_id = b.chain_id AND o.kind = 'settle'
                    AND o.item = b.stream_id::text);

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
CREATE OR REPLACE VIEW keeper.usage_affordability AS
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

-- ------------------------------------------------------------------------- usage views

-- The usage views show each report's endpoint (its name as the inbox row gave it, its number
-- and the price charged, once recorded; usage intents' items carry the endpoint fourth), and
-- keeper.usage_daily counts the reports skipped for an endpoint the payee does not list
-- (UsageSkipped reason 7). keeper.usage_pending and usage_rejected are recreated unchanged to
-- show the new columns of keeper.usage.
CREATE OR REPLACE VIEW keeper.usage_in_flight AS
SELECT i.chain_id,
       (item.value ->> 0)::numeric(78,0) AS stream_id,
       (item.value ->> 2)::numeric(78,0) AS seq,
       (item.value ->> 1)::numeric(78,0) AS units,
       i.id AS intent_id,
       i.key AS intent_key,
       i.state AS intent_state,
       (item.value ->> 3)::numeric(78,0) AS endpoint
FROM intents i
LEFT JOIN ingest_cursor c ON c.chain_id = i.chain_id
CROSS JOIN LATERAL jsonb_array_elements(i.items) AS item (value)
WHERE i.kind = 'usage'
  AND (i.state IN ('planned', 'assigned', 'mined')
       OR (i.state IN ('confirmed', 'final')
           AND i.block_number > COALESCE(c.indexed_block, -1)));

CREATE OR REPLACE VIEW keeper.usage AS
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

CREATE OR REPLACE VIEW keeper.usage_pending AS
SELECT * FROM keeper.usage WHERE status IN ('received', 'pending', 'sending');

CREATE OR REPLACE VIEW keeper.usage_rejected AS
SELECT * FROM keeper.usage WHERE status = 'rejected';

CREATE OR REPLACE VIEW keeper.usage_daily AS
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
