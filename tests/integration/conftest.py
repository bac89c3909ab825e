"""Fixtures shared by the integration tests of this directory."""

from tests.integration.tx_support import env

__all__ = ["env"]  # the transaction-manager tests' chain + outbox + manager
