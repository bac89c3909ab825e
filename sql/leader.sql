-- Leader election (keeper/service/leader.py). The lock is session-level: it lives as long as the
-- connection that took it, so a leader that dies or loses its session frees it.

-- name: try_lock
-- $1 = keeper.service.leader.leader_lock_key(chain_id). True when this session now holds the lock.
SELECT pg_try_advisory_lock($1);

-- name: lock_held
-- True when this session holds the lock ($1, $2 = the key's high and low 32 bits, as
-- pg_locks shows a bigint key); false on a session that does not (a new one after a loss).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = $2::bigint::oid
      AND objsubid = 1 AND granted AND pid = pg_backend_pid()
);

-- name: current_leader
-- The session holding the lock, as pg_stat_activity shows it; no row when no keeper leads.
SELECT a.application_name, a.backend_start, host(a.client_addr) AS client_addr, a.pid
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
