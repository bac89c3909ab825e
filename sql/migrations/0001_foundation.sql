-- 0001_foundation: the chains the keeper serves and the contracts it drives on each.
-- The indexer, outbox and views arrive in later migration files; keep sql/schema.sql in step.

CREATE TABLE chains (
    chain_id   bigint PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
    chain_id         bigint NOT NULL REFERENCES chains (chain_id),
    name             text NOT NULL,
    -- Raw 20-byte addresses, not hex text: one canonical form, so no checksum/case mismatches.
    address          bytea NOT NULL CHECK (octet_length(address) = 20),
    deployment_block bigint NOT NULL CHECK (deployment_block >= 0),
    deployed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, name)
);
