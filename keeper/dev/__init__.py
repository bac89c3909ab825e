"""Development chains and the demo: a local anvil, contract deployment, the demo workload."""
