"""Fixtures shared by the integration tests of this directory."""

from tests.support.tx import anvil_args, env, node_kind

# The transaction-manager tests' chain + outbox + manager, and what it runs on.
__all__ = ["anvil_args", "env", "node_kind"]
