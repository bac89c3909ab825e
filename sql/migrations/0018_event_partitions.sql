-- 0018_event_partitions: the event tables are partitioned by chain and block range, so that the
-- ranges of old, finalized blocks can be detached and archived.
--
-- Each event table becomes PARTITION BY RANGE (chain_id, block_number), with the same columns,
-- constraints and indexes. Its partitions live in schema `event_partitions`: one per range of
-- `event_ranges` (created by the indexer before it writes a range: ensure_event_partitions),
-- plus a DEFAULT partition that takes any row no range covers (rows written by hand, and every
-- row that existed before this migration); ensure_event_partitions moves such rows into the
-- range it creates. archive_event_range moves a finalized range into schema `archive`.
--
-- The conversion renames each table away, creates the partitioned one under its name, copies
-- the rows and drops the old table. The views that read the event tables (and a function with a
-- SQL-standard body, keeper.first_block_since) are bound to the old tables, so they are
-- dropped first and created again from their own definitions, with their privileges: whatever
-- the migrations before this one made of them. Schema `archive` is 0017's.

CREATE SCHEMA event_partitions;

-- Every event table, and what archive_event_range keeps attached of an archived range: the
-- rows the projections are recomputed from (keeper.ingest.store refreshes an entity from all
-- its events, on ingest and on rollback). `all`: every row (creations, closes, price and
-- parameter changes, claims: one row per entity or rare); `latest`: per `keep_key`, the newest
-- row with no newer finalized row of the same key (post-state events: balances, rates); `none`:
-- nothing (skips and credits, read only for blocks above the finalized one).
CREATE TABLE event_tables (
    name     text PRIMARY KEY,
    keep     text NOT NULL CHECK (keep IN ('all', 'latest', 'none')),
    keep_key text,
    CHECK ((keep = 'latest') = (keep_key IS NOT NULL))
);
INSERT INTO event_tables (name, keep, keep_key) VALUES
    ('claimed', 'all', NULL),
    ('contract_events', 'all', NULL),
    ('endpoint_added', 'all', NULL),
    ('endpoint_price_set', 'all', NULL),
    ('escrow_created', 'all', NULL),
    ('escrow_refunded', 'all', NULL),
    ('escrow_released', 'all', NULL),
    ('fee_recipient_updated', 'all', NULL),
    ('fee_updated', 'all', NULL),
    ('fees_credited', 'none', NULL),
    ('notice_period_set', 'all', NULL),
    ('refund_skipped', 'none', NULL),
    ('settle_skipped', 'none', NULL),
    ('stream_close_requested', 'all', NULL),
    ('stream_closed', 'all', NULL),
    ('stream_opened', 'all', NULL),
    ('stream_rate_updated', 'latest', 'stream_id'),
    ('stream_settled', 'latest', 'stream_id'),
    ('stream_topped_up', 'latest', 'stream_id'),
    ('usage_price_set', 'all', NULL),
    ('usage_recorded', 'latest', 'stream_id'),
    ('usage_skipped', 'none', NULL),
    ('vault_deposited', 'latest', 'account'),
    ('vault_withdrawn', 'latest', 'account');

DO $$
DECLARE
    tab record;
    vw record;
    fn record;
    grant_ record;
    pending int;
    idx text;
    indexes text[];
BEGIN
    -- What reads the event tables, as it is defined now (before any name changes).
    CREATE TEMP TABLE dependent_views ON COMMIT DROP AS
    WITH RECURSIVE event_oids AS (
        SELECT format('public.%I', name)::regclass::oid AS oid FROM event_tables
    ),
    reads (oid) AS (
        SELECT r.ev_class
        FROM pg_depend d
        JOIN pg_rewrite r ON r.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass
          AND d.refobjid IN (SELECT oid FROM event_oids) AND r.ev_class <> d.refobjid
        UNION
        SELECT r.ev_class
        FROM reads
        JOIN pg_depend d ON d.refobjid = reads.oid AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_rewrite r ON r.oid = d.objid
        WHERE r.ev_class <> d.refobjid
    )
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name,
           -- A constant without a name in a UNION's later branch shows with the cast it was
           -- given ('x' as 'x'::text); created from that text, it would be named after the
           -- type. AS "?column?" keeps the name it had, and so the view's definition.
           regexp_replace(pg_get_viewdef(c.oid),
                          '^(\s+(''(?:[^'']|'''')*''|NULL|-?[0-9.]+)::[a-z][a-z0-9_ ]*(?:\([0-9, ]+\))?)(,?)$',
                          '\1 AS "?column?"\3', 'gn') AS definition,
           c.reloptions, c.relacl, false AS created
    FROM reads
    JOIN pg_class c ON c.oid = reads.oid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'v';

    CREATE TEMP TABLE view_needs ON COMMIT DROP AS
    SELECT DISTINCT v.oid, r.ev_class AS needed_by
    FROM dependent_views v
    JOIN pg_depend d ON d.refobjid = v.oid AND d.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE r.ev_class <> v.oid;

    CREATE TEMP TABLE dependent_functions ON COMMIT DROP AS
    SELECT DISTINCT p.oid, pg_get_functiondef(p.oid) AS definition
    FROM pg_depend d
    JOIN pg_proc p ON p.oid = d.objid
    WHERE d.classid = 'pg_proc'::regclass
      AND d.refobjid IN (SELECT format('public.%I', name)::regclass::oid FROM event_tables);

    IF EXISTS (SELECT FROM dependent_views) THEN
        EXECUTE 'DROP VIEW ' || (SELECT string_agg(name, ', ') FROM dependent_views);
    END IF;

    FOR tab IN SELECT name FROM event_tables ORDER BY name LOOP
        EXECUTE format('ALTER TABLE public.%I RENAME TO %I', tab.name, tab.name || '_unpartitioned');
        EXECUTE format('ALTER INDEX public.%I RENAME TO %I', tab.name || '_pkey',
                       tab.name || '_unpartitioned_pkey');
        EXECUTE format(
            'CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
            'PARTITION BY RANGE (chain_id, block_number)',
            tab.name, tab.name || '_unpartitioned');
        EXECUTE format('ALTER TABLE public.%I ADD PRIMARY KEY (chain_id, block_number, log_index)',
                       tab.name);
        EXECUTE format('CREATE TABLE event_partitions.%I PARTITION OF public.%I DEFAULT',
                       tab.name || '_default', tab.name);
        EXECUTE format('INSERT INTO public.%I SELECT * FROM public.%I',
                       tab.name, tab.name || '_unpartitioned');
    END LOOP;

    -- Bind the functions to the new tables (their text names them), then drop the old ones.
    FOR fn IN SELECT definition FROM dependent_functions LOOP
        EXECUTE fn.definition;
    END LOOP;
    FOR tab IN SELECT name FROM event_tables ORDER BY name LOOP
        SELECT array_agg(pg_get_indexdef(i.indexrelid) ORDER BY c.relname) INTO indexes
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = format('public.%I', tab.name || '_unpartitioned')::regclass
          AND NOT i.indisprimary;
        EXECUTE format('DROP TABLE public.%I', tab.name || '_unpartitioned');
        -- The old definitions name the new table and the old index names, both free again.
        FOREACH idx IN ARRAY coalesce(indexes, '{}') LOOP
            EXECUTE replace(idx, format('ON public.%I ', tab.name || '_unpartitioned'),
                            format('ON public.%I ', tab.name));
        END LOOP;
        -- The new tables have no statistics until autovacuum comes by (and it never analyzes
        -- a partitioned table itself): without them, a pass's lookup of a few events was
        -- planned as a read of every row (10M usage events: 5 s instead of 50 ms).
        EXECUTE format('ANALYZE public.%I', tab.name);
    END LOOP;

    -- The views again, each once every view it reads exists, with its privileges.
    LOOP
        pending := 0;
        FOR vw IN
            SELECT d.* FROM dependent_views d
            WHERE NOT d.created
              AND NOT EXISTS (SELECT FROM view_needs n JOIN dependent_views o ON o.oid = n.oid
                              WHERE n.needed_by = d.oid AND NOT o.created)
        LOOP
            EXECUTE format('CREATE VIEW %s%s AS %s', vw.name,
                           coalesce(' WITH (' || array_to_string(vw.reloptions, ', ') || ')', ''),
                           vw.definition);
            FOR grant_ IN SELECT * FROM aclexplode(vw.relacl) a
                       WHERE a.grantee <> a.grantor LOOP
                EXECUTE format('GRANT %s ON %s TO %s%s', grant_.privilege_type, vw.name,
                               CASE WHEN grant_.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident(pg_get_userbyid(grant_.grantee)) END,
                               CASE WHEN grant_.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            UPDATE dependent_views SET created = true WHERE oid = vw.oid;
            pending := pending + 1;
        END LOOP;
        EXIT WHEN pending = 0;
    END LOOP;
    IF EXISTS (SELECT FROM dependent_views WHERE NOT created) THEN
        RAISE EXCEPTION 'views not recreated: %',
            (SELECT string_agg(name, ', ') FROM dependent_views WHERE NOT created);
    END IF;
END
$$;

-- The block ranges that have partitions, per chain: [from_block, to_block). `archived_at` is set
-- once archive_event_range has moved the range's rows into schema `archive`.
CREATE TABLE event_ranges (
    chain_id    bigint NOT NULL,
    from_block  bigint NOT NULL CHECK (from_block >= 0),
    to_block    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz,
    PRIMARY KEY (chain_id, from_block),
    CHECK (to_block > from_block)
);

-- Make sure every event table has a partition for each block of chain p_chain in
-- [p_from, p_to]. A missing range is created for every event table at once, aligned to
-- multiples of p_size blocks and clipped to the ranges already there (so that a changed size
-- never overlaps them); the DEFAULT partitions' rows in it move into it. Returns the end
-- (exclusive) of the range holding p_to: blocks below it need no further call.
-- One caller at a time (the lock on event_ranges: the indexers of several chains may share a
-- database). Attaching locks the parent briefly and the DEFAULT partition while it is checked,
-- so a lock on them not had within half a second fails the call (lock_not_available) rather
-- than make the daemon's queries queue behind it; the caller tries again.
CREATE FUNCTION ensure_event_partitions(p_chain bigint, p_from bigint, p_to bigint,
                                        p_size bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    b bigint := p_from;
    chunk bigint;
    lo bigint;
    hi bigint;
    t record;
    part text;
BEGIN
    IF p_size IS NULL OR p_size < 1 THEN
        RAISE EXCEPTION 'a partition spans at least 1 block, not %', p_size;
    END IF;
    IF p_from < 0 OR p_to < p_from THEN
        RAISE EXCEPTION 'no block range [%, %]', p_from, p_to;
    END IF;
    LOCK TABLE event_ranges IN SHARE ROW EXCLUSIVE MODE;
    PERFORM set_config('lock_timeout', '500ms', true);
    LOOP
        SELECT r.to_block INTO hi FROM event_ranges r
        WHERE r.chain_id = p_chain AND r.from_block <= b AND r.to_block > b;
        IF NOT FOUND THEN
            chunk := b - b % p_size;
            SELECT greatest(chunk, max(r.to_block)) INTO lo FROM event_ranges r
            WHERE r.chain_id = p_chain AND r.to_block <= b;
            SELECT least(chunk + p_size, min(r.from_block)) INTO hi FROM event_ranges r
            WHERE r.chain_id = p_chain AND r.from_block > b;
            FOR t IN SELECT name FROM event_tables ORDER BY name LOOP
                part := format('%s_%s_%s', t.name, p_chain, lo);
                EXECUTE format('CREATE TABLE event_partitions.%I '
                               '(LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               part, t.name);
                EXECUTE format('WITH moved AS (DELETE FROM event_partitions.%I '
                               'WHERE chain_id = $1 AND block_number >= $2 AND block_number < $3 '
                               'RETURNING *) INSERT INTO event_partitions.%I SELECT * FROM moved',
                               t.name || '_default', part)
                    USING p_chain, lo, hi;
                EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION event_partitions.%I '
                               'FOR VALUES FROM (%s, %s) TO (%s, %s)',
                               t.name, part, p_chain, lo, p_chain, hi);
            END LOOP;
            INSERT INTO event_ranges (chain_id, from_block, to_block) VALUES (p_chain, lo, hi);
        END IF;
        EXIT WHEN hi > p_to;
        b := hi;
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);
    RETURN hi;
END
$$;

-- Archive chain p_chain's event range that starts at block p_from: each event table's partition
-- of it is detached and moved, whole and under its name, into schema `archive`; in its place a
-- new partition keeps the rows `event_tables` says the projections are recomputed from. Only a
-- range wholly at or below the chain's finalized and indexed blocks, which no rollback reaches.
-- The kept rows are gathered first, with no lock that stops the indexer; then the swaps, each
-- a short ACCESS EXCLUSIVE lock on its table (one not had within half a second fails the call,
-- lock_not_available, before a deadlock with the daemon's queries could fail one of them).
-- Returns the rows moved to the archive and the rows kept attached; (0, 0) for a range
-- archived before.
CREATE FUNCTION archive_event_range(p_chain bigint, p_from bigint, OUT archived bigint,
                                    OUT kept bigint)
LANGUAGE plpgsql AS $$
DECLARE
    waited text := current_setting('lock_timeout');
    r event_ranges;
    safe bigint;
    t record;
    part text;
    n bigint;
BEGIN
    archived := 0;
    kept := 0;
    SELECT * INTO r FROM event_ranges WHERE chain_id = p_chain AND from_block = p_from;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chain % has no event range starting at block %', p_chain, p_from;
    END IF;
    IF r.archived_at IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT least(c.finalized_block, c.indexed_block) INTO safe
    FROM ingest_cursor c WHERE c.chain_id = p_chain;
    IF safe IS NULL OR r.to_block - 1 > safe THEN
        RAISE EXCEPTION 'blocks % to % of chain % are not all finalized and indexed (up to %)',
            r.from_block, r.to_block - 1, p_chain, coalesce(safe::text, 'none')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR t IN SELECT * FROM event_tables ORDER BY name LOOP
        part := format('%s_%s_%s', t.name, p_chain, r.from_block);
        EXECUTE format('SELECT count(*) FROM event_partitions.%I', part) INTO n;
        archived := archived + n;
        EXECUTE format('CREATE TABLE event_partitions.%I '
                       '(LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       'archiving_' || t.name, t.name);
        IF t.keep = 'all' THEN
            EXECUTE format('INSERT INTO event_partitions.%I SELECT * FROM event_partitions.%I',
                           'archiving_' || t.name, part);
        ELSIF t.keep = 'latest' THEN
            -- A newer row above the finalized block may still be rolled back: it does not count.
            EXECUTE format('INSERT INTO event_partitions.%1$I SELECT * FROM event_partitions.%2$I p '
                           'WHERE NOT EXISTS (SELECT FROM public.%3$I x '
                           'WHERE x.chain_id = p.chain_id AND x.%4$I = p.%4$I '
                           'AND (x.block_number, x.log_index) > (p.block_number, p.log_index) '
                           'AND x.block_number <= $1)',
                           'archiving_' || t.name, part, t.name, t.keep_key)
                USING safe;
        END IF;
        EXECUTE format('SELECT count(*) FROM event_partitions.%I', 'archiving_' || t.name) INTO n;
        kept := kept + n;
    END LOOP;
    LOCK TABLE event_ranges IN SHARE ROW EXCLUSIVE MODE;
    IF (SELECT archived_at FROM event_ranges
        WHERE chain_id = p_chain AND from_block = p_from) IS NOT NULL THEN
        RAISE EXCEPTION 'blocks % to % of chain % were archived meanwhile',
            r.from_block, r.to_block - 1, p_chain;
    END IF;
    PERFORM set_config('lock_timeout', '500ms', true);
    FOR t IN SELECT * FROM event_tables ORDER BY name LOOP
        part := format('%s_%s_%s', t.name, p_chain, r.from_block);
        EXECUTE format('ALTER TABLE public.%I DETACH PARTITION event_partitions.%I', t.name, part);
        EXECUTE format('ALTER TABLE event_partitions.%I SET SCHEMA archive', part);
        EXECUTE format('ALTER TABLE event_partitions.%I RENAME TO %I', 'archiving_' || t.name, part);
        EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION event_partitions.%I '
                       'FOR VALUES FROM (%s, %s) TO (%s, %s)',
                       t.name, part, p_chain, r.from_block, p_chain, r.to_block);
    END LOOP;
    PERFORM set_config('lock_timeout', waited, true);
    UPDATE event_ranges SET archived_at = now()
    WHERE chain_id = p_chain AND from_block = p_from;
END
$$;
