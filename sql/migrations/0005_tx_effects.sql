-- 0005_tx_effects: what each batch item came to.
--
-- `intent_items` gains the outcome `reverted`: an item whose simulation reverted on its own
-- was taken out of its batch before signing (its decoded reason in `detail`), and the rest of
-- the batch went out. `intents.effects_checked_at` records when a confirmed batch's items were
-- checked against the indexed events (`effect`, `skipped` with the contract's reason, or
-- `no_effect`); a reorg that unmines the intent clears both, and the check runs again.

ALTER TABLE intents ADD COLUMN effects_checked_at timestamptz;

ALTER TABLE intent_items DROP CONSTRAINT intent_items_outcome_check;
ALTER TABLE intent_items ADD CONSTRAINT intent_items_outcome_check
    CHECK (outcome IN ('effect', 'no_effect', 'skipped', 'reverted'));
CREATE INDEX intent_items_outcome_idx ON intent_items (outcome, checked_at)
    WHERE outcome IN ('no_effect', 'reverted');
