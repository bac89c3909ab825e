"""Intents -> chain: the outbox, the transaction manager and its rules (fees, node answers,
faults)."""
