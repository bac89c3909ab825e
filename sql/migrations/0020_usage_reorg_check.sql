-- 0020_usage_reorg_check: a usage reconciliation is undone only after a reorg. Each pass
-- looked for reports reconciled from events no longer indexed, over every report recorded
-- above the finalized block: at a thousand reports a second and a finality window of minutes,
-- hundreds of thousands of rows every pass, when only a reorg (keeper.ingest.store.rollback_to,
-- which records itself in `reorgs` in the transaction that deletes the events) can make one
-- stale. This row holds, per chain, the newest reorg whose effect on usage the planner has
-- undone, written in the transaction that undid it; a pass looks again only when `reorgs`
-- holds a newer one (or when no row is here yet).
CREATE TABLE usage_reorgs_checked (
    chain_id bigint PRIMARY KEY,
    reorg_id bigint NOT NULL
);
