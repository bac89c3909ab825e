-- Named queries, loaded by keeper.db.queries: each block starts with `-- name: <query_name>`,
-- and the comment lines right under it say what the query is for.

-- name: create_migrations_table
-- Bookkeeping for keeper.db.migrations; run under the migration lock, so IF NOT EXISTS never races.
CREATE TABLE IF NOT EXISTS keeper_migrations (
    name       text PRIMARY KEY,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: acquire_migration_lock
-- Session-level advisory lock ($1 = keeper.db.migrations.MIGRATION_LOCK_KEY); waits for holders.
SELECT pg_advisory_lock($1);

-- name: release_migration_lock
SELECT pg_advisory_unlock($1);

-- name: applied_migrations
-- Migrations already applied, with the SHA-256 of the file's text when it was applied.
SELECT name, sha256, applied_at
FROM keeper_migrations
ORDER BY name;

-- name: pin_search_path
SET LOCAL search_path TO public;

-- name: record_migration
INSERT INTO keeper_migrations (name, sha256)
VALUES ($1, $2);

-- name: schema_catalog
-- The user-defined schema as normalized (kind, object, definition) text rows, to compare two
-- databases as sets (migrated vs declared). Column order is left out on purpose: ALTER TABLE
-- can only append columns, and the declared schema may list them where they read best.
-- System schemas are skipped: Postgres reserves the pg_ prefix, so `pg\_%` covers pg_catalog,
-- pg_toast and the temporary schemas.
WITH user_schemas AS (
    SELECT oid, nspname
    FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
),
user_relations AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relacl, c.relpartbound, s.nspname,
           quote_ident(s.nspname) || '.' || quote_ident(c.relname) AS qualified
    FROM pg_class c
    JOIN user_schemas s ON s.oid = c.relnamespace
)
SELECT 'schema' AS kind, quote_ident(nspname) AS object, '' AS definition
FROM user_schemas
UNION ALL
SELECT 'extension', extname, ''
FROM pg_extension
WHERE extname <> 'plpgsql'
UNION ALL
SELECT 'relation', r.qualified,
       r.relkind::text || ' ' || r.relpersistence::text || ' acl='
       || coalesce((SELECT string_agg(acl::text, ',' ORDER BY acl::text)
                    FROM unnest(r.relacl) AS acl), '')
       -- A partitioned table's key; a partition's parent and bounds.
       || coalesce(' partition by ' || pg_get_partkeydef(r.oid), '')
       || coalesce((SELECT ' partition of ' || i.inhparent::regclass::text FROM pg_inherits i
                    WHERE i.inhrelid = r.oid), '')
       || coalesce(' ' || pg_get_expr(r.relpartbound, r.oid), '')
FROM user_relations r
UNION ALL
SELECT 'column', r.qualified || '.' || quote_ident(a.attname),
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE a.attidentity WHEN 'a' THEN ' identity always'
                             WHEN 'd' THEN ' identity by default' ELSE '' END
       || CASE a.attgenerated WHEN 's' THEN ' generated stored' ELSE '' END
       || coalesce(' collate ' || co.collname, '')
FROM pg_attribute a
JOIN user_relations r ON r.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND co.collname <> 'default'
WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind <> 'i'
UNION ALL
SELECT 'constraint', r.qualified || '.' || quote_ident(con.conname),
       pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN user_relations r ON r.oid = con.conrelid
UNION ALL
SELECT 'index', r.qualified, pg_get_indexdef(r.oid)
FROM user_relations r
WHERE r.relkind IN ('i', 'I')
UNION ALL
SELECT 'view', r.qualified, pg_get_viewdef(r.oid)
FROM user_relations r
WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'sequence', quote_ident(schemaname) || '.' || quote_ident(sequencename),
       concat_ws(' ', data_type, start_value, min_value, max_value, increment_by, cycle,
                 cache_size)
FROM pg_sequences
WHERE schemaname IN (SELECT nspname FROM user_schemas)
UNION ALL
SELECT 'type', quote_ident(s.nspname) || '.' || quote_ident(t.typname),
       t.typtype::text || ' '
       || CASE t.typtype
              WHEN 'e' THEN (SELECT string_agg(quote_literal(e.enumlabel), ','
                                               ORDER BY e.enumsortorder)
                             FROM pg_enum e WHERE e.enumtypid = t.oid)
              WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                            || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
                            || coalesce(' default ' || t.typdefault, '')
                            || coalesce((SELECT ' ' || string_agg(pg_get_constraintdef(dc.oid),
                                                                 ' ' ORDER BY dc.conname)
                                         FROM pg_constraint dc WHERE dc.contypid = t.oid), '')
              ELSE ''
          END
FROM pg_type t
JOIN user_schemas s ON s.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd')
UNION ALL
SELECT 'function',
       quote_ident(s.nspname) || '.' || quote_ident(p.proname)
       || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       pg_get_functiondef(p.oid)
FROM pg_proc p
JOIN user_schemas s ON s.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p')
  -- Functions that belong to an extension are compared through the 'extension' rows.
  AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                  WHERE dep.classid = 'pg_proc'::regclass AND dep.objid = p.oid
                    AND dep.deptype = 'e')
UNION ALL
SELECT 'trigger', r.qualified || '.' || quote_ident(tg.tgname), pg_get_triggerdef(tg.oid)
FROM pg_trigger tg
JOIN user_relations r ON r.oid = tg.tgrelid
WHERE NOT tg.tgisinternal;

-- name: upsert_chain
-- A chain by id, with a human name for the views.
INSERT INTO chains (chain_id, name) VALUES ($1, $2)
ON CONFLICT (chain_id) DO UPDATE SET name = EXCLUDED.name;

-- name: upsert_deployment
-- A dev chain restarted from genesis reuses its chain id: the new deployment replaces the old.
INSERT INTO deployments (chain_id, name, address, deployment_block) VALUES ($1, $2, $3, $4)
ON CONFLICT (chain_id, name) DO UPDATE
SET address = EXCLUDED.address, deployment_block = EXCLUDED.deployment_block, deployed_at = now();

-- name: deployment_rows
SELECT name, address, deployment_block FROM deployments WHERE chain_id = $1 ORDER BY name;
