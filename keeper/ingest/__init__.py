"""Chain -> Postgres: the event catalog, the indexer (backfill and follow with reorg
handling), the event store and its projections."""
