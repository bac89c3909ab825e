-- 0012_l1_fee: the L1 fee of a transaction on an OP-stack chain.
--
-- There a receipt carries `l1Fee`, the cost of posting the transaction to L1, and what the
-- transaction cost is gas_used x effective_gas_price + l1Fee. The transaction manager records
-- it with the receipt; the hourly budget, the gas-spent metric and keeper.tx_pipeline's
-- cost_wei count it. NULL where the chain's receipts have none.
ALTER TABLE intents ADD COLUMN l1_fee numeric(78,0) CHECK (l1_fee >= 0);

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
       i.l1_fee
FROM intents i
LEFT JOIN LATERAL (
    SELECT a.max_fee, a.priority_fee, a.last_error FROM attempts a
    WHERE a.intent_id = i.id ORDER BY a.id DESC LIMIT 1
) la ON true;
