-- 0010_reader_role: `keeper_reader`, a role that reads the operator views and nothing else.
--
-- The role is NOLOGIN: operators grant it to the login roles of people and dashboards
-- (`GRANT keeper_reader TO grafana;`). It gets USAGE on schema keeper and SELECT on its views
-- (a view reads its tables with its owner's rights, so no table is granted), EXECUTE on the
-- keeper.* functions the views use, and default privileges so that views and functions later
-- migrations create in schema keeper are readable too. PUBLIC loses EXECUTE on the functions in
-- schema public (delete_events_after deletes rows; the trigger functions are never called
-- directly), and on any this role creates later: the keeper itself runs as their owner.
--
-- What a member can still do, through PUBLIC's defaults: connect, create temporary tables in
-- its own session, read the system catalogs, and call the built-in functions, advisory locks
-- included (holding a keeper lock key would stall the daemon's election or a signer's nonce
-- lane; those functions belong to the superuser). Grant the role to roles you trust that far.
--
-- Roles belong to the server while migrations run per database: every database on the server
-- comes here, possibly at the same moment, so the role is created only when missing and a
-- concurrent creation is no error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keeper_reader') THEN
        CREATE ROLE keeper_reader NOLOGIN;
    END IF;
EXCEPTION
    -- A concurrent CREATE ROLE that committed first fails this one on pg_authid's unique index.
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the role keeper_reader does not exist and % may not create it',
            current_user
            USING HINT = 'as a superuser, run CREATE ROLE keeper_reader NOLOGIN; '
                         'then migrate again';
END
$$;

-- keeper.settlement_totals calls keeper.first_block_since, which reads the event tables: a
-- function in a view runs with the rights of whoever reads the view, so it runs with its
-- owner's instead. It only reads, and what it returns (a block number) the view shows anyway.
ALTER FUNCTION keeper.first_block_since(bigint, bigint, bigint, bigint)
    SECURITY DEFINER SET search_path = public, pg_temp;

GRANT USAGE ON SCHEMA keeper TO keeper_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA keeper TO keeper_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA keeper TO keeper_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA keeper GRANT SELECT ON TABLES TO keeper_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA keeper GRANT EXECUTE ON FUNCTIONS TO keeper_reader;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
