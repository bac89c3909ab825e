-- The declared schema: what the database must look like after every file in sql/migrations/
-- has been applied, written out as plain DDL.
--
-- tests/integration/test_migrations.py builds one database from this file and one with
-- `keeper.migrations.migrate()` and requires their catalogs to be identical, so a change to
-- the schema goes into both places: a new migration file and this file.
-- The bookkeeping table `keeper_migrations` is created by migrate() itself, not declared here.

-- Chains the keeper serves.
CREATE TABLE chains (
    chain_id   bigint PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Contracts the keeper drives, per chain, with the block the indexer starts from.
CREATE TABLE deployments (
    chain_id         bigint NOT NULL REFERENCES chains (chain_id),
    name             text NOT NULL,
    address          bytea NOT NULL CHECK (octet_length(address) = 20),
    deployment_block bigint NOT NULL CHECK (deployment_block >= 0),
    deployed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, name)
);
