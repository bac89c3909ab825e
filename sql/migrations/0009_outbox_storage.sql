-- 0009_outbox_storage: store call data and signed transactions uncompressed.
--
-- A usage batch's call data is ~14 KB; PostgreSQL's default pglz compression of it cost ~3 ms
-- per intent insert (measured by `make bench-plan`), against ~0.5 ms stored out of line as it
-- is. The bytes are written once and read rarely; disk is cheaper than a planning pass.
ALTER TABLE intents ALTER COLUMN calldata SET STORAGE EXTERNAL;
ALTER TABLE attempts ALTER COLUMN raw SET STORAGE EXTERNAL;
