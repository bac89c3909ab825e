-- 0017_retention: finished outbox rows and reconciled usage rows leave the live tables after
-- `retention.keep_days` (keeper.db.retention), moved into schema `archive` or deleted.
--
-- The archive tables have the live tables' columns, in the live tables' order (LIKE), so that
-- a batch moves with `WITH moved AS (DELETE ... RETURNING *) INSERT INTO archive.x SELECT *
-- FROM moved`; no CHECK, default or foreign key comes along (what was valid when it left stays
-- so), only a primary key, so a row can never be archived twice. A later migration that adds
-- a column to one of these tables adds it to its archive table as well.
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

-- The producer keys of retired usage reports, in both modes: the intake refuses a key found in
-- usage_reports or here (sql/usage.sql, accepted_keys), so a row replayed after its original
-- left the live tables is still `duplicate_producer_key`. inbox_id names the original row (in
-- archive.usage_inbox, or gone in delete mode).
CREATE TABLE usage_retired_keys (
    chain_id     bigint NOT NULL,
    producer_key text NOT NULL,
    inbox_id     bigint NOT NULL,
    retired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, producer_key)
);

-- What retention looks for, oldest first, by index: finished intents by the time of their last
-- change, reconciled reports by the time of their reconciliation. (Rejected inbox rows have
-- usage_inbox_rejected_idx.) Without them every run would read the whole kept window.
CREATE INDEX intents_finished_idx ON intents (chain_id, updated_at)
    WHERE state IN ('final', 'failed', 'replan');
CREATE INDEX usage_reports_reconciled_idx ON usage_reports (chain_id, reconciled_at)
    WHERE state <> 'pending';

-- keeper_reader reads the archive (history for dashboards and audits); nothing in it is
-- secret that the chain does not show (calldata and signed bytes were broadcast).
GRANT USAGE ON SCHEMA archive TO keeper_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA archive TO keeper_reader;
