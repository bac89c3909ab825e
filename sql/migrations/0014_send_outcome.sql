-- 0014_send_outcome: what the node's last answer to an attempt meant, next to its text.
--
-- The transaction manager classifies every answer to eth_sendRawTransaction (keeper.tx.send_errors).
-- An answer it cannot place ("unknown"), a full pool or a send that did not reach the node leaves
-- the attempt waiting to be sent again from the same bytes after 1, 2, 4, ... blocks; keeper status
-- and /status count those attempts from keeper.tx_pipeline's latest_send_outcome.
ALTER TABLE attempts ADD COLUMN last_outcome text;

CREATE OR REPLACE VIEW keeper.tx_pipeline AS
SELECT i.chain_id,
       i.id AS intent_id,
       i.kind,
       i.key,
       i.state,
       i.urgent,
       jsonb_array_length(i.items) AS items,
       keeper.hex(i.signer) AS signer,
       i.nonce,
       (SELECT count(*) FROM attempts a WHERE a.intent_id = i.id) AS attempts,
       la.max_fee AS latest_max_fee,
       la.priority_fee AS latest_priority_fee,
       la.last_error AS latest_send_error,
       i.gas_limit,
       i.gas_used,
       i.effective_gas_price,
       (i.gas_used::numeric * i.effective_gas_price + COALESCE(i.l1_fee, 0))::numeric(78,0)
           AS cost_wei,
       keeper.hex(i.tx_hash) AS tx_hash,
       i.block_number,
       i.receipt_status,
       i.reason,
       i.created_at,
       i.assigned_at,
       i.mined_at,
       i.confirmed_at,
       i.updated_at,
       i.l1_fee,
       la.last_outcome AS latest_send_outcome
FROM intents i
LEFT JOIN LATERAL (
    SELECT a.max_fee, a.priority_fee, a.last_error, a.last_outcome FROM attempts a
    WHERE a.intent_id = i.id ORDER BY a.id DESC LIMIT 1
) la ON true;
