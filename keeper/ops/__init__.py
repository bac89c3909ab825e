"""Operator commands over the database and the chain: status, verify, usage import."""
