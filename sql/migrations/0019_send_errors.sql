-- 0019_send_errors: the last send error, by index. `keeper status` and the health port's
-- /status showed the newest intent whose latest attempt the node refused by reading
-- keeper.tx_pipeline, which evaluates every intent (4 s at 2,000,000 intents, on every
-- request). Attempts the node refused are few: a partial index lists them, and
-- keeper.send_errors shows each intent whose latest attempt carries an error, from there.
CREATE INDEX attempts_send_error_idx ON attempts (intent_id) WHERE last_error IS NOT NULL;

-- Intents whose latest attempt the node refused (or whose send failed): what tx_pipeline's
-- latest_send_error shows, for those intents only.
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
