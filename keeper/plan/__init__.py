"""Postgres -> intents: the kinds of batched work, what is due (accrual), the planners of
settlement, refunds and usage reports."""
