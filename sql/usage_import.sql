-- Named queries of `keeper usage import` (keeper.ops.usage_import).

-- name: transaction_time
-- now() is the transaction's start: the received_at of every row this import writes. Lines
-- that cannot be read are rejected as they arrive, so it is their validated_at too.
SELECT now();
