-- 0016_due_index: the planners find due work by index, not by evaluating every open stream.
--
-- A stream's accrual is linear in chain time, so the second from which keeper.streams_due
-- lists it (it has accrued something and reaches the minimum, waits the maximum interval or
-- runs out within the horizon) is known whenever its projection changes. streams.due_at holds
-- it, kept by a trigger on every write of the columns it depends on and recomputed for a
-- chain's streams when that chain's thresholds change (planner_settings); keeper.streams_due
-- reads the streams whose due_at has passed, by a partial index, and then applies the same
-- conditions as before to those few. tests/integration/test_due_index.py holds the indexed
-- answer equal to the full-scan definition on random streams, thresholds and times.
--
-- The backed-off checks get the same treatment: keeper.items_backed_off reads the items
-- checked within the backoff window by an index on checked_at (it searched every backed-off
-- item ever), and failed usage intents within their backoff are found by an index on
-- updated_at (sql/usage.sql usage_due), not among every intent.

ALTER TABLE streams ADD COLUMN due_at bigint;

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

UPDATE streams s
SET due_at = stream_due_at(s.status, s.balance, s.rate, s.settled_at, ps.settle_min_amount,
                           ps.settle_max_interval, ps.settle_horizon)
FROM planner_settings ps
WHERE ps.chain_id = s.chain_id;

-- The streams due by a time, and nothing else: most open streams are not due, closed ones
-- never are.
CREATE INDEX streams_due_at_idx ON streams (chain_id, due_at) WHERE due_at IS NOT NULL;

-- Streams the next settle pass would settle (0013's meaning and columns): the streams whose
-- due time has passed at the indexed head, found by streams_due_at_idx from the chain's
-- cursor, then the conditions of the definition, evaluated for those rows only.
CREATE OR REPLACE VIEW keeper.streams_due AS
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

-- The items backed off within the window, by the time they were checked.
CREATE INDEX batch_items_backed_off_at_idx ON batch_items (chain_id, kind, checked_at)
    WHERE outcome IN ('no_effect', 'reverted');

-- Batch items backed off (0006's meaning and columns): the window as a range of checked_at.
CREATE OR REPLACE VIEW keeper.items_backed_off AS
SELECT b.chain_id, b.kind, b.entity AS item, b.outcome, b.detail, b.checked_at,
       b.checked_at + make_interval(secs => ps.backoff_seconds) AS retry_after, b.seq,
       b.intent_id
FROM planner_settings ps
JOIN batch_items b ON b.chain_id = ps.chain_id
WHERE b.outcome IN ('no_effect', 'reverted')
  AND b.checked_at > now() - make_interval(secs => ps.backoff_seconds);

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

-- Usage not charged yet (0007's meaning and columns): the rows not validated and the reports
-- pending, found by their partial indexes (keeper.usage derives every row's status: filtered
-- on it, it read the whole inbox).
CREATE OR REPLACE VIEW keeper.usage_pending AS
SELECT u.*
FROM keeper.usage u
WHERE u.inbox_id IN (SELECT x.id FROM usage_inbox x WHERE x.verdict IS NULL
                     UNION ALL
                     SELECT r.inbox_id FROM usage_reports r WHERE r.state = 'pending')
  AND u.status IN ('received', 'pending', 'sending');

-- An escrow's refund items in every intent that held one (keeper.escrows_expired: its latest
-- refund). Only refunds: 0015's index of every item by entity took a random write into a large
-- index for each of the thousands of items a pass plans, and nothing else read it.
DROP INDEX batch_items_entity_idx;
CREATE INDEX batch_items_refund_idx ON batch_items (chain_id, entity, intent_id)
    WHERE kind = 'refund';

-- A pass writes thousands of items at once, each with its intent in the same statement
-- (keeper.db.outbox plan_all), and nothing deletes an intent before its items (retention
-- moves children first): the per-row foreign-key check cost a third of that insert.
ALTER TABLE batch_items DROP CONSTRAINT batch_items_intent_id_fkey;

-- Items on their way (0006's meaning and columns): a final intent's items by its id, one
-- intent at a time (after a reorg or a resync, the final intents above the indexed block).
CREATE OR REPLACE VIEW keeper.items_in_flight AS
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

