"""`make bench-plan`: the planners at scale and settling 10,000 streams; JSON on the last line.

Three measurements, each on its own fresh database (created and dropped on the server at
KEEPER_BENCH_DATABASE_URL, else KEEPER_TEST_DATABASE_URL, else the local test server; when none
is set and the local server does not answer, an embedded pgserver is started):

1. **planning passes at scale**, at 1,000,000 streams (`--streams`) and first at 100,000
   (`--small-streams`), each on its own database, to show how the cost grows: it should be flat
   in the streams that exist and linear in the work that is due. The state of a keeper that has
   run for a while is written straight into a migrated database by `INSERT ... SELECT` over
   `generate_series` (server-side, deterministic; the foreign-key triggers off while it is
   written, see `synthesize`):
   - N `streams` (plus `ingest_cursor` with the backfill done, `contract_params`, the `[plan]`
     defaults in `planner_settings` as the daemon writes them, which computes every stream's
     due time, and `usage_reorgs_checked` as a first pass leaves it). Every (N / 10,000)-th
     stream is one of 10,000 that will be due (4 % depleting within the horizon, 60 % by the
     accrued minimum, 36 % by the maximum interval; 450 of them in 3 settle intents in flight
     and 50 backed off, so a pass settles 9,500); of the rest, 3 % closed, 5 % emptied, the
     others accruing below every threshold. 1,009 payees, 25,013 payers;
   - 10 x N usage rows: 20 per even stream, each a `usage_inbox` row (accepted), its
     `usage_reports` row (recorded), its `UsageRecorded` event and its item in one of N x 10 / 132
     final usage intents (the last 20 batches above the finalized block, what the search for
     stale reconciliations reads after a reorg);
   - 2 x N more past intents (settle batches of one item: the outbox's indexes see their
     number, not their size): with the usage batches, about 2,075,000 intents and 12,000,000
     batch items at N = 1,000,000;
   - N / 5 escrows, 200 of which expire within the last 8 hours.
   **Steady state** (`steady_pass_s`, goal <= 50 ms): the indexed head is a day earlier, when
   nothing is due: no stream, no escrow, no usage, no inbox row. Then the **worst case**'s work
   is committed on top (`WORK_STEPS`): chain time moves on a day (the 10,000 streams and 200
   escrows are due), 15,000 accepted usage reports are pending (15 for each of 1,000 streams,
   150 of them in a usage intent on its way) and 5,000 new inbox rows wait (97 % good, the
   rest unknown streams, malformed units, duplicate producer keys and closed streams).
   `plan_pass_s` (goal <= 1 s): about 9,500 settle items, 200 refunds, 5,000 rows validated and
   14,850 usage reports, in about 380 batches. For each, after `VACUUM ANALYZE`,
   `Planner.plan_pass` (as built by the daemon, default `[plan]`) runs as the daemon runs it,
   on three connections (`[plan] pass_connections`: the intake, the settle and refund planning
   and the usage planning side by side), once to warm up and then `--passes` times (fewer once
   they have taken `--pass-budget` seconds), with each connection in a transaction that is
   rolled back (and a VACUUM between passes), so every pass sees the same state and does the
   full work (the usage planning never sees the reports the intake beside it accepts: nothing
   is committed); the figures are medians. Where the time went: per phase (due views, intake,
   reconcile, usage due, outbox inserts by kind: they overlap, so their sum exceeds the pass)
   and per named query, means per pass. `--explain` prints EXPLAIN (ANALYZE, BUFFERS) of the
   pass's big queries at the larger scale to stderr (in a transaction that is rolled back).
2. **RSS**: `rss_planner_mb` is the peak RSS (ru_maxrss) of a child process that imports the
   whole daemon (`keeper.service.daemon`), builds its pool and Planner as the daemon does and
   runs two worst-case passes over the 1,000,000-stream database. The real daemon is not
   pointed at that database: its rows are synthetic, and the indexer would find that no chain
   matches them.
   `rss_daemon_mb` is VmHWM of the real `keeper run` of part 3 (start, migrations, backfill of
   the 10,000 streams, planning, sending, confirming). `rss_mb` is the larger (goal <= 250 MB).
3. **settling 10,000 due streams with 4 signers** on anvil. A fresh anvil (block gas limit
   60M, the project's dev setting) gets the contracts, 10,000 streams opened by one payer to
   100 payees (rate 1,000/s, deposit 10^10), ORACLE_ROLE for dev accounts 5-8, an hour of
   chain time (every stream then has 3.6M accrued: due by the minimum, not urgent) and 70
   empty blocks; then the node mines one block per second (interval mining: a block count
   means something) and `python -m keeper run` starts with those 4 signers (systemd
   credentials), the `[plan]`, `[tx]` and `[ingest]` defaults, against a fresh database. The
   bench follows the chain's `StreamSettled` logs until each of the 10,000 streams was settled
   once. `blocks_to_settle_10k` counts the blocks from the one holding the keeper's first
   settle transaction to the one in which the last stream was settled (both included);
   `txs_to_settle_10k` the keeper's transactions that settled them (checked against the
   intents of kind `settle` the keeper recorded as mined); `settle_10k_s` the wall time from
   the daemon's start (a cold Python start, migrations, the backfill and the first planning
   interval included) to the last settlement, `settle.from_first_plan_s` the part after the
   first planning pass (its log line).

Everything has a deadline; the daemon is stopped with SIGTERM (then SIGKILL) in any case.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
from eth_abi.abi import encode as abi_encode
from eth_utils import keccak

from keeper import db
from keeper.chain.deployment import Deployment
from keeper.config import PlanConfig
from keeper.db import Conn
from keeper.db.migrations import migrate
from keeper.db.outbox import AlreadyPlanned, IntentRequest, Outbox, Planned
from keeper.dev.anvil import DEV_CHAIN_ID, dev_key, rpc, running_anvil
from keeper.logs import configure as configure_logs
from keeper.ops.deploy import deploy_all
from keeper.plan.planner import DueItem, PassReport, Planner
from keeper.plan.usage import IntakeReport, UsageItem, UsageOracle
from tests.bench.bench_index import DEFAULT_DSN, TimedConn, Timings, fresh_database
from tests.support.chain import DEV_KEY0
from tests.support.gas import synthetic_address

ROOT = Path(__file__).resolve().parents[2]
GOAL_PASS_S = 1.0
GOAL_STEADY_S = 0.05
GOAL_RSS_MB = 250.0
NOW_TS = 1_750_000_000  # chain time of the synthetic indexed head
HEAD = 20_000_000  # the synthetic indexed (and head) block; finalized is 64 below
FIRST_SIGNER = 5  # dev accounts 5.. sign for the daemon; 0 deploys, 1 pays the streams
SETTLE_RATE = 1_000
SETTLE_DEPOSIT = 10**10
SETTLE_PAYEES = 100
SETTLE_AGE_S = 3_600  # chain time moved on after opening: 3.6M accrued per stream
OPEN_CHUNK = 500  # openStream calls per block while setting up (about 58M gas)
RSS_PASSES = 2  # passes of the planner RSS child (its peak is reached in the first)
# The connections a pass uses, as the daemon's with the default `[plan] pass_connections`.
PASS_CONNECTIONS = PlanConfig().pass_connections
SETTLE_DEADLINE_S = 300.0  # from the daemon's start to the last settlement


def say(line: str) -> None:
    """Progress goes to stderr; stdout ends with the JSON line."""
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- databases


async def _answers(dsn: str) -> bool:
    try:
        conn = await db.connect(dsn, timeout=3)
    except db.DatabaseUnavailable:
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def database_server() -> AsyncIterator[str]:
    """The admin DSN of the server the bench creates its databases on."""
    url = os.environ.get("KEEPER_BENCH_DATABASE_URL") or os.environ.get("KEEPER_TEST_DATABASE_URL")
    if url or await _answers(DEFAULT_DSN):
        yield url or DEFAULT_DSN
        return
    say(f"no PostgreSQL at {DEFAULT_DSN}: starting an embedded one (pgserver)")
    from pgserver.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="keeper-bench-plan-") as tmp:
        server = get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


# ---------------------------------------------------------------------------- the synthetic state

# Run in this order on one session: `bench_params` and the other bench_* tables are
# temporary. Every number is derived from the stream id or the row number, so two runs
# write the same rows (only the wall-clock times differ).
SYNTH_PARAMS = """
CREATE TEMP TABLE bench_params AS
SELECT $1::bigint AS chain_id, $2::bigint AS now_ts, $3::bigint AS head, $4::bigint AS streams,
       $5::bytea AS manager, $6::bytea AS vault,
       $4::bigint / 10000 AS due_stride, $4::bigint / 1000 AS work_stride,
       ($4::bigint * 10 + 131) / 132 AS usage_batches, $4::bigint * 2 AS settle_history
"""

SYNTH_STEPS: list[tuple[str, str]] = [
    (
        "cursor and contract params",
        """
INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_hash, indexed_timestamp,
                           head_block, head_timestamp, finalized_block, backfill_done)
SELECT chain_id, 1, head, sha256('head'::bytea), now_ts - 86400, head, now_ts - 86400,
       head - 64, true
FROM bench_params;
INSERT INTO contract_params (chain_id, fee_bps, fee_recipient, updated_block)
SELECT chain_id, 250, decode('dd' || repeat('00', 19), 'hex'), 1 FROM bench_params;
-- A keeper that has run has looked for stale usage reconciliations once (no reorg since).
INSERT INTO usage_reorgs_checked (chain_id, reorg_id) SELECT chain_id, 0 FROM bench_params;
""",
    ),
    (
        "streams",
        """
INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at, usage_seq,
                     price, status, opened_block, updated_block)
SELECT p.chain_id, g.i,
       decode('aa' || lpad(to_hex(g.i % 25013), 38, '0'), 'hex'),
       decode('bb' || lpad(to_hex((g.i * 7919) % 1009), 38, '0'), 'hex'),
       r.rate, b.balance, p.now_ts - r.elapsed,
       CASE WHEN g.i % 2 = 0 THEN 20 ELSE 0 END,
       CASE WHEN g.i % 2 = 0 THEN 5 + g.i % 20 ELSE 0 END,
       CASE WHEN c.cat = 'closed' THEN 'closed' ELSE 'open' END,
       1 + g.i % (p.head / 2),
       GREATEST(1 + g.i % (p.head / 2), p.head - r.elapsed / 2)
FROM bench_params p
CROSS JOIN generate_series(1, p.streams) AS g (i)
CROSS JOIN LATERAL (
    SELECT CASE WHEN g.i % p.due_stride = 1 THEN
                     CASE WHEN (g.i / p.due_stride) % 100 < 4 THEN 'depleting'
                          WHEN (g.i / p.due_stride) % 100 < 64 THEN 'min_amount'
                          ELSE 'max_interval' END
                WHEN g.i % 1000 < 60 AND g.i % 2 = 1 THEN 'closed'
                WHEN g.i % 1000 BETWEEN 164 AND 213 THEN 'empty'
                ELSE 'idle' END AS cat
) c
CROSS JOIN LATERAL (
    SELECT CASE WHEN c.cat IN ('depleting', 'min_amount') THEN 100 + g.i % 900
                WHEN c.cat = 'max_interval' THEN 1 + g.i % 5
                ELSE 1 + g.i % 50 END AS rate,
           CASE c.cat WHEN 'depleting' THEN 1000 + g.i % 5000
                      WHEN 'min_amount' THEN 10000 + g.i % 50000
                      WHEN 'max_interval' THEN 86400 + (g.i % 7) * 3600
                      WHEN 'idle' THEN (g.i % 600) * 30
                      ELSE g.i % 1000 END AS elapsed
) r
CROSS JOIN LATERAL (
    SELECT CASE c.cat WHEN 'depleting' THEN r.rate * (r.elapsed + g.i % 3600)
                      WHEN 'min_amount' THEN r.rate * (r.elapsed + 7200 + g.i % 100000)
                      WHEN 'max_interval' THEN r.rate * (r.elapsed + 1000000)
                      WHEN 'idle' THEN r.rate * (r.elapsed + 10000 + (g.i % 1000) * 1000)
                      ELSE 0 END AS balance
) b;
""",
    ),
    (
        "usage batches (scratch)",
        """
CREATE TEMP TABLE bench_batches AS
SELECT b.batch,
       CASE WHEN b.batch >= p.usage_batches - 20
            THEN p.head - 40 + (b.batch - (p.usage_batches - 20))
            ELSE p.head / 2 + b.batch * ((p.head / 2 - 200) / p.usage_batches) END AS block,
       sha256(('usage-tx-' || b.batch)::bytea) AS tx_hash
FROM bench_params p
CROSS JOIN generate_series(0, p.usage_batches - 1) AS b (batch);
CREATE UNIQUE INDEX ON bench_batches (batch);
ANALYZE bench_batches;
""",
    ),
    (
        "usage_inbox (accepted)",
        """
INSERT INTO usage_inbox (id, chain_id, stream_id, units, producer_key, label, observed_at,
                         source, received_at, verdict, validated_at)
SELECT u.id, p.chain_id, (2 * ((u.id - 1) % (p.streams / 2) + 1))::text,
       (1 + u.id % 1000)::text, 'req-' || md5(u.id::text),
       (ARRAY['api_calls', 'compute_ms', 'bytes_out'])[1 + u.id % 3],
       (t.received - interval '3 seconds')::text, NULL, t.received, 'accepted',
       t.received + interval '1 second'
FROM bench_params p
CROSS JOIN generate_series(1, p.streams * 10) AS u (id)
CROSS JOIN LATERAL (
    SELECT now() - make_interval(secs => (p.streams * 10 - u.id) * 0.05) AS received
) t;
""",
    ),
    (
        "usage_reports (recorded)",
        """
INSERT INTO usage_reports (inbox_id, chain_id, stream_id, seq, units, producer_key, label,
                           observed_at, accepted_at, state, block_number, tx_hash, charged, fee,
                           shortfall, reconciled_at, price)
SELECT u.id, p.chain_id, s.stream_id, (u.id - 1) / (p.streams / 2) + 1, 1 + u.id % 1000,
       'req-' || md5(u.id::text), (ARRAY['api_calls', 'compute_ms', 'bytes_out'])[1 + u.id % 3],
       t.received - interval '3 seconds', t.received + interval '1 second', 'recorded',
       b.block, b.tx_hash, (1 + u.id % 1000) * s.price,
       div((1 + u.id % 1000) * s.price * 250, 10000), 0, t.received + interval '30 seconds',
       s.price
FROM bench_params p
CROSS JOIN generate_series(1, p.streams * 10) AS u (id)
CROSS JOIN LATERAL (
    SELECT 2 * ((u.id - 1) % (p.streams / 2) + 1) AS stream_id,
           5 + (2 * ((u.id - 1) % (p.streams / 2) + 1)) % 20 AS price
) s
CROSS JOIN LATERAL (
    SELECT now() - make_interval(secs => (p.streams * 10 - u.id) * 0.05) AS received
) t
JOIN bench_batches b ON b.batch = (u.id - 1) / 132;
""",
    ),
    (
        "usage_recorded events",
        """
INSERT INTO usage_recorded (chain_id, block_number, log_index, tx_hash, block_time, stream_id,
                            seq, endpoint, units, charged, fee, shortfall, balance_after, price)
SELECT r.chain_id, r.block_number, ((r.inbox_id - 1) % 132)::integer, r.tx_hash,
       p.now_ts - 86400 - (p.head - r.block_number) * 2, r.stream_id, r.seq, 0, r.units,
       r.charged, r.fee, 0, 1000000000, r.price
FROM bench_params p
JOIN usage_reports r ON r.chain_id = p.chain_id;
""",
    ),
    (
        "intents (history)",
        """
INSERT INTO intents (id, chain_id, kind, key, target, calldata, state, signer, nonce,
                     gas_limit, tx_hash, block_number, block_hash, receipt_status, gas_used,
                     effective_gas_price, created_at, updated_at, assigned_at, mined_at,
                     confirmed_at, effects_checked_at)
SELECT h.id, p.chain_id, h.kind, h.kind || ':history:' || h.id, p.manager,
       decode(repeat('00', CASE h.kind WHEN 'usage' THEN 4 + 32 * (6 + 3 * 132)
                                       ELSE 4 + 32 * (2 + 1) END), 'hex'),
       CASE WHEN h.block <= p.head - 64 THEN 'final' ELSE 'confirmed' END,
       decode('cc' || lpad(to_hex(1 + h.id % 4), 38, '0'), 'hex'), h.id / 4,
       3500000, h.tx_hash, h.block, sha256(('block-' || h.block)::bytea), 1, 2600000,
       1000000000, t.at, t.at + interval '1 minute', t.at, t.at + interval '10 seconds',
       t.at + interval '20 seconds', t.at + interval '30 seconds'
FROM bench_params p
CROSS JOIN LATERAL (
    SELECT b.batch + 1 AS id, 'usage' AS kind, b.block, b.tx_hash FROM bench_batches b
    UNION ALL
    SELECT p.usage_batches + 1 + j, 'settle',
           200 + j * ((p.head / 2 - 400) / p.settle_history),
           sha256(('settle-tx-' || j)::bytea)
    FROM generate_series(0, p.settle_history - 1) AS j
) h
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (p.head - h.block) * 2) AS at) t;
SELECT setval('intents_id_seq', (SELECT max(id) FROM intents));
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, seq, units, endpoint,
                         outcome, checked_at)
SELECT (r.inbox_id - 1) / 132 + 1, ((r.inbox_id - 1) % 132)::integer, r.chain_id, 'usage',
       r.stream_id, r.seq, r.units, 0, 'effect', r.reconciled_at
FROM usage_reports r;
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, outcome, checked_at)
SELECT p.usage_batches + 1 + j, x, p.chain_id, 'settle', ((j * 2 + x) * 7919) % p.streams + 1,
       'effect', now() - make_interval(secs => (p.head - 200 - j * ((p.head / 2 - 400)
                                                                  / p.settle_history)) * 2)
FROM bench_params p
CROSS JOIN generate_series(0, p.settle_history - 1) AS j
CROSS JOIN generate_series(0, 0) AS x;
""",
    ),
    (
        "intents in flight, items backed off",
        """
INSERT INTO intents (chain_id, kind, key, target, calldata, state, signer, nonce,
                     gas_limit, created_at, assigned_at)
SELECT p.chain_id, 'settle', 'settle:' || p.head || ':150:inflight' || k.k, p.manager,
       decode(repeat('00', 4 + 32 * 152), 'hex'),
       'assigned', decode('cc' || lpad(to_hex(k.k + 1), 38, '0'), 'hex'),
       (SELECT max(nonce) + 1 FROM intents
        WHERE signer = decode('cc' || lpad(to_hex(k.k + 1), 38, '0'), 'hex')),
       3500000, now() - interval '5 seconds', now() - interval '4 seconds'
FROM bench_params p
CROSS JOIN generate_series(0, 2) AS k (k);
-- Each holds 150 of the streams due by the minimum.
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity)
SELECT i.id, (row_number() OVER (PARTITION BY i.id ORDER BY s.stream_id) - 1)::integer,
       p.chain_id, 'settle', s.stream_id
FROM bench_params p
CROSS JOIN generate_series(0, 2) AS k (k)
JOIN intents i ON i.chain_id = p.chain_id
              AND i.key = 'settle:' || p.head || ':150:inflight' || k.k
CROSS JOIN LATERAL (
    SELECT g.n * p.due_stride + 1 AS stream_id
    FROM generate_series(0, 9999) AS g (n)
    WHERE g.n % 100 BETWEEN 4 AND 63
    ORDER BY g.n OFFSET k.k * 150 LIMIT 150
) s;
-- Backed off: 50 streams due by the maximum interval, in a settle intent that failed, each
-- reverted in simulation.
INSERT INTO intents (chain_id, kind, key, target, calldata, state, reason)
SELECT p.chain_id, 'settle', 'settle:' || p.head || ':50:backedoff', p.manager, decode('00', 'hex'),
       'failed', 'synthetic: every item reverted in simulation'
FROM bench_params p;
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, outcome, detail,
                         checked_at)
SELECT i.id, (row_number() OVER (ORDER BY s.stream_id) - 1)::integer, p.chain_id, 'settle',
       s.stream_id, 'reverted', 'synthetic: reverted in simulation', now() - interval '1 minute'
FROM bench_params p
JOIN intents i ON i.key = 'settle:' || p.head || ':50:backedoff'
CROSS JOIN LATERAL (
    SELECT g.n * p.due_stride + 1 AS stream_id
    FROM generate_series(0, 9999) AS g (n)
    WHERE g.n % 100 >= 64
    ORDER BY g.n LIMIT 50
) s;
""",
    ),
    (
        "escrows",
        """
INSERT INTO escrows (chain_id, escrow_id, payer, payee, amount, expires_at, status,
                     created_block, updated_block)
SELECT p.chain_id, e,
       decode('aa' || lpad(to_hex(e % 25013), 38, '0'), 'hex'),
       decode('bb' || lpad(to_hex((e * 31) % 1009), 38, '0'), 'hex'),
       1000000 + (e % 1000) * 1000,
       CASE WHEN e % p.work_stride = 7 THEN p.now_ts - 60 * (1 + e % 500)
            WHEN e % 10 >= 7 THEN p.now_ts + 86400 * (1 + e % 7)
            ELSE p.now_ts - 86400 * (2 + e % 30) END,
       CASE WHEN e % p.work_stride = 7 OR e % 10 >= 7 THEN 'open'
            WHEN e % 10 < 5 THEN 'released' ELSE 'refunded' END,
       1 + e % (p.head / 2), 1 + e % (p.head / 2) + 1000
FROM bench_params p
CROSS JOIN generate_series(1, p.streams / 5) AS e;
""",
    ),
]

# The work a worst-case pass finds, added (and committed) after the steady-state passes: chain
# time moves on a day, so the 10,000 streams due (500 of them in flight or backed off) and the
# 200 escrows expired are; 15,000 usage reports accepted and pending (15 for each of 1,000
# streams; 150 of them in a usage intent on its way) and 5,000 new inbox rows (97 % good, the
# rest unknown streams, malformed units, duplicate producer keys and closed streams).
WORK_STEPS: list[tuple[str, str]] = [
    (
        "chain time: a day later",
        """
UPDATE ingest_cursor c
SET indexed_timestamp = p.now_ts, head_timestamp = p.now_ts
FROM bench_params p WHERE c.chain_id = p.chain_id;
""",
    ),
    (
        "pending usage",
        """
CREATE TEMP TABLE bench_pending AS
SELECT p.streams * 10 + row_number() OVER (ORDER BY g.n, q.seq) AS id,
       g.n * p.work_stride + 2 AS stream_id, q.seq, 1 + (g.n * 31 + q.seq) % 500 AS units
FROM bench_params p
CROSS JOIN generate_series(0, 999) AS g (n)
CROSS JOIN generate_series(21, 35) AS q (seq);
INSERT INTO usage_inbox (id, chain_id, stream_id, units, producer_key, label, observed_at,
                         source, received_at, verdict, validated_at)
SELECT b.id, p.chain_id, b.stream_id::text, b.units::text, 'req-p-' || md5(b.id::text),
       'api_calls', (now() - interval '2 minutes')::text, NULL, now() - interval '2 minutes',
       'accepted', now() - interval '1 minute'
FROM bench_params p CROSS JOIN bench_pending b;
INSERT INTO usage_reports (inbox_id, chain_id, stream_id, seq, units, producer_key, label,
                           observed_at, accepted_at, state)
SELECT b.id, p.chain_id, b.stream_id, b.seq, b.units, 'req-p-' || md5(b.id::text),
       'api_calls', now() - interval '2 minutes', now() - interval '1 minute', 'pending'
FROM bench_params p CROSS JOIN bench_pending b;
-- The first 10 streams' reports are on their way, in a usage intent.
INSERT INTO intents (chain_id, kind, key, target, calldata, state, signer, nonce,
                     gas_limit, created_at, assigned_at)
SELECT p.chain_id, 'usage', 'usage:' || p.head || ':150:inflight', p.manager,
       decode(repeat('00', 4 + 32 * (6 + 3 * 150)), 'hex'),
       'assigned', decode('cc' || lpad(to_hex(4), 38, '0'), 'hex'),
       (SELECT max(nonce) + 1 FROM intents
        WHERE signer = decode('cc' || lpad(to_hex(4), 38, '0'), 'hex')),
       3500000, now() - interval '5 seconds', now() - interval '4 seconds'
FROM bench_params p;
INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, seq, units, endpoint)
SELECT i.id, (row_number() OVER (ORDER BY b.id) - 1)::integer, p.chain_id, 'usage',
       b.stream_id, b.seq, b.units, 0
FROM bench_params p
JOIN intents i ON i.key = 'usage:' || p.head || ':150:inflight'
JOIN bench_pending b ON b.stream_id < 10 * p.work_stride;
""",
    ),
    (
        "usage_inbox (unvalidated)",
        """
INSERT INTO usage_inbox (id, chain_id, stream_id, units, producer_key, label, observed_at,
                         source, received_at)
SELECT p.streams * 10 + 15000 + n, NULL,
       CASE WHEN n % 100 = 1 THEN (p.streams * 2 + n)::text
            WHEN n % 200 = 3 THEN (1000 * (n % (p.streams / 1000)) + 1 + 2 * (n % 30))::text
            ELSE (2 * (1 + (n * 7919) % (p.streams / 2)))::text END,
       CASE WHEN n % 100 = 2 THEN 'lots' ELSE (1 + n % 500)::text END,
       CASE WHEN n % 200 = 5 THEN 'req-' || md5((1 + (n * 13) % (p.streams * 10))::text)
            ELSE 'new-' || md5(n::text) END,
       'api_calls', (now() - interval '11 minutes')::text, 'usage.csv:' || n,
       now() - interval '10 minutes'
FROM bench_params p
CROSS JOIN generate_series(1, 5000) AS n;
SELECT setval('usage_inbox_id_seq', (SELECT max(id) FROM usage_inbox));
""",
    ),
]

SYNTH_COUNTS = """
SELECT (SELECT count(*) FROM streams) AS streams,
       (SELECT count(*) FROM usage_reports) AS usage_rows,
       (SELECT count(*) FROM usage_reports WHERE state = 'recorded') AS usage_recorded,
       (SELECT count(*) FROM usage_reports WHERE state = 'pending') AS usage_pending,
       (SELECT count(*) FROM usage_inbox WHERE verdict IS NULL) AS inbox_unvalidated,
       (SELECT count(*) FROM usage_recorded) AS usage_events,
       (SELECT count(*) FROM intents) AS intents,
       (SELECT count(*) FROM batch_items) AS batch_items,
       (SELECT count(*) FROM escrows) AS escrows,
       (SELECT count(*) FROM keeper.streams_due WHERE chain_id = $1) AS streams_due,
       (SELECT count(*) FROM keeper.streams_due WHERE chain_id = $1 AND urgent) AS urgent,
       pg_database_size(current_database()) AS db_bytes
"""

SYNTH_MANAGER = "0x" + "5e" * 20
SYNTH_VAULT = "0x" + "e5" * 20


def build_planner(chain_id: int, cls: type[Planner] = Planner) -> Planner:
    """The Planner as keeper.service.daemon builds it with the default `[plan]` section."""
    from keeper.config import PlanConfig

    return cls(
        chain_id,
        stream_manager=SYNTH_MANAGER,
        escrow_vault=SYNTH_VAULT,
        settings=PlanConfig(),
        usage=True,
    )


async def _run_steps(conn: Conn, steps: Sequence[tuple[str, str]], streams: int) -> None:
    """`bench_params` for this session, then each step, timed."""
    await conn.execute(
        SYNTH_PARAMS,
        DEV_CHAIN_ID,
        NOW_TS,
        HEAD,
        streams,
        bytes.fromhex(SYNTH_MANAGER[2:]),
        bytes.fromhex(SYNTH_VAULT[2:]),
    )
    for label, sql in steps:
        t0 = time.perf_counter()
        await conn.execute(sql)
        say(f"  {label}: {time.perf_counter() - t0:.1f} s")


async def _vacuum_and_count(conn: Conn, tables: str) -> dict[str, int]:
    """VACUUM ANALYZE `tables` (all when empty), then let the writes settle: a CHECKPOINT (when
    the role may) and, with the server on this machine, the OS's dirty pages written out, so
    the passes timed next do not share the disk with the flush of gigabytes just written (a
    running keeper's database was not bulk-loaded a moment ago). Then the row counts."""
    t0 = time.perf_counter()
    await conn.execute(f"VACUUM ANALYZE {tables}")
    say(f"  VACUUM ANALYZE: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")
    os.sync()
    say(f"  CHECKPOINT and sync: {time.perf_counter() - t0:.1f} s")
    row = await conn.fetchrow(SYNTH_COUNTS, DEV_CHAIN_ID)
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def synthesize(dsn: str, streams: int) -> dict[str, int]:
    """Write the steady state (nothing due) into the migrated database at `dsn`; row counts.
    The rows are written with the foreign-key triggers off (session_replication_role): they
    are consistent by construction, and the checks would double the time at 10M usage rows.
    The planner's thresholds go in last, with the triggers on: that computes every stream's
    due time, as a change of thresholds does on a live database."""
    conn = await db.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await _run_steps(conn, SYNTH_STEPS, streams)
        await conn.execute("RESET session_replication_role")
        t0 = time.perf_counter()
        await build_planner(DEV_CHAIN_ID).store_settings(conn)
        say(f"  thresholds (due times of every stream): {time.perf_counter() - t0:.1f} s")
        return await _vacuum_and_count(conn, "")
    finally:
        await conn.close()


async def add_work(dsn: str, streams: int) -> dict[str, int]:
    """Commit the worst case's work (WORK_STEPS) onto the steady state; row counts."""
    conn = await db.connect(dsn)
    try:
        await _run_steps(conn, WORK_STEPS, streams)
        return await _vacuum_and_count(
            conn, "ingest_cursor, usage_inbox, usage_reports, intents, batch_items"
        )
    finally:
        await conn.close()


async def synthetic_counts(dsn: str) -> dict[str, int]:
    """Row counts of a database synthesized earlier."""
    conn = await db.connect(dsn)
    try:
        row = await conn.fetchrow(SYNTH_COUNTS, DEV_CHAIN_ID)
        assert row is not None
        return {k: int(v) for k, v in row.items()}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scale_database(
    admin_dsn: str, args: argparse.Namespace, streams: int
) -> AsyncIterator[tuple[str, bool]]:
    """(DSN, whether it is new and empty) of the database of one scale: `--reuse-db` (the
    largest scale only), or a fresh one, dropped afterwards unless `--keep-db`."""
    if args.reuse_db and streams == args.streams:
        await migrate(args.reuse_db)  # written by an older checkout, perhaps
        yield args.reuse_db, False
        return
    name = f"keeper_bench_plan_{os.getpid()}_{streams}"
    if not args.keep_db:
        async with fresh_database(admin_dsn, name) as dsn:
            yield dsn, True
        return
    admin = await db.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))
    await migrate(dsn)
    say(f"keeping the scale database: --reuse-db {dsn}")
    yield dsn, True


# ---------------------------------------------------------------------------- timed passes


class TimedUsage(UsageOracle):
    """UsageOracle timing its three steps."""

    def __init__(self, chain_id: int, settings: PlanConfig, timings: Timings) -> None:
        super().__init__(
            chain_id,
            intake_per_pass=settings.usage_intake_per_pass,
            unknown_stream_grace=settings.unknown_stream_grace,
        )
        self.timings = timings

    async def intake(self, conn: Conn) -> IntakeReport:
        t0 = time.perf_counter()
        try:
            return await super().intake(conn)
        finally:
            self.timings.add("usage intake", time.perf_counter() - t0)

    async def reconcile(self, conn: Conn) -> dict[str, int]:
        t0 = time.perf_counter()
        try:
            return await super().reconcile(conn)
        finally:
            self.timings.add("usage reconcile", time.perf_counter() - t0)

    async def due(self, conn: Conn, per_stream: int) -> list[list[UsageItem]]:
        t0 = time.perf_counter()
        try:
            return await super().due(conn, per_stream)
        finally:
            self.timings.add("usage due", time.perf_counter() - t0)


class TimedOutbox(Outbox):
    """Outbox timing its inserts."""

    def __init__(self, chain_id: int, timings: Timings) -> None:
        super().__init__(chain_id)
        self.timings = timings

    async def plan_all(
        self, conn: Conn, reqs: Sequence[IntentRequest]
    ) -> list[Planned | AlreadyPlanned]:
        t0 = time.perf_counter()
        try:
            return await super().plan_all(conn, reqs)
        finally:
            kinds = ", ".join(sorted({r.kind for r in reqs}))
            self.timings.add(f"outbox inserts ({kinds})", time.perf_counter() - t0)


class TimedPlanner(Planner):
    """Planner timing its due views; its usage oracle and outbox are the timed ones."""

    timings: Timings

    async def due(self, conn: Conn) -> tuple[int | None, list[DueItem], list[DueItem]]:
        t0 = time.perf_counter()
        try:
            return await super().due(conn)
        finally:
            self.timings.add("due views (settle, refund)", time.perf_counter() - t0)


def timed_planner(chain_id: int, timings: Timings) -> TimedPlanner:
    """A TimedPlanner recording into `timings`."""
    planner = build_planner(chain_id, TimedPlanner)
    assert isinstance(planner, TimedPlanner)
    planner.timings = timings
    planner.usage = TimedUsage(chain_id, planner.settings, timings)
    planner.outbox = TimedOutbox(chain_id, timings)
    return planner


def query_names(planner: Planner) -> dict[str, str]:
    """SQL text -> name of every named query a pass may run."""
    names = {sql: name for name, sql in planner.q.items()}
    assert planner.usage is not None
    names.update({sql: name for name, sql in planner.usage.q.items()})
    names.update({sql: name for name, sql in planner.outbox.q.items()})
    return names


async def rolled_back_pass(
    planner: Planner, conns: Sequence[Conn], via: Sequence[Conn] | None = None
) -> tuple[float, PassReport]:
    """One pass as the daemon runs it, on `conns[0]` with the others spare (`[plan]
    pass_connections`), each connection in a transaction that is rolled back afterwards (the
    pass itself runs through `via`, proxies of `conns`, when given); (seconds, report). With
    nothing committed, the usage planning never sees the reports the intake accepts beside it:
    a pass plans the reports that were pending, as the daemon's does when its intake finishes
    last."""
    async with AsyncExitStack() as stack:
        for conn in conns:
            tr = conn.transaction()
            await tr.start()
            stack.push_async_callback(tr.rollback)
        first, *spare = via or conns
        t0 = time.perf_counter()
        report = await planner.plan_pass(first, spare=spare)
        return time.perf_counter() - t0, report


@dataclass
class PassResult:
    """The measured passes."""

    seconds: list[float]
    first_s: float
    report: PassReport
    phases: Timings
    queries: Timings

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def describe_report(report: PassReport) -> dict[str, Any]:
    """What a pass found and planned."""
    kinds = Counter(b.kind for b in report.planned)
    items = Counter[str]()
    for b in report.planned:
        items[b.kind] += len(b.items)
    intake = report.intake or IntakeReport()
    return {
        "due": report.due,
        "batches": dict(kinds),
        "items": dict(items),
        "already_planned": report.already_planned,
        "intake": {
            "accepted": intake.accepted,
            "rejected": intake.rejected,
            "waiting": intake.waiting,
        },
        "reconciled": report.reconciled,
    }


async def time_passes(dsn: str, passes: int, budget: float) -> PassResult:
    """A warm-up pass, then `passes` timed passes (fewer once they have taken `budget`
    seconds, at least one), each rolled back, VACUUM between them."""
    phases, queries = Timings(), Timings()
    planner = timed_planner(DEV_CHAIN_ID, phases)
    names = query_names(planner)
    pool = await db.create_pool(dsn, min_size=PASS_CONNECTIONS, max_size=PASS_CONNECTIONS)
    try:
        async with AsyncExitStack() as stack:
            raws = [
                await stack.enter_async_context(pool.acquire()) for _ in range(PASS_CONNECTIONS)
            ]
            conns = [cast(Conn, raw) for raw in raws]
            first_s, report = await rolled_back_pass(planner, conns)
            say(f"  warm-up pass: {first_s:.3f} s, {describe_report(report)}")
            seconds: list[float] = []
            phases.seconds.clear()
            phases.calls.clear()
            for i in range(passes):
                if i and sum(seconds) > budget:
                    say(f"  pass budget of {budget:.0f} s used up after {i} passes")
                    break
                await raws[0].execute("VACUUM usage_inbox, usage_reports, intents")
                timed = [cast(Conn, TimedConn(raw, queries, names)) for raw in raws]
                s, report = await rolled_back_pass(planner, conns, timed)
                seconds.append(s)
                say(f"  pass {i + 1}/{passes}: {s:.3f} s")
    finally:
        await pool.close()
    return PassResult(seconds, first_s, report, phases, queries)


def per_pass(timings: Timings, passes: int, total: float | None = None) -> dict[str, float]:
    """Mean seconds per pass, by label, largest first; with `total` (seconds of all passes),
    also what the labels leave out."""
    out = {
        k: round(v / passes, 4)
        for k, v in sorted(timings.seconds.items(), key=lambda kv: -kv[1])
        if k != "db.commit"
    }
    if total is not None:
        rest = total - sum(timings.seconds.values())
        # On several connections the parts overlap and their sum exceeds the pass.
        if rest > 0:
            out["rest (batches, calldata)"] = round(rest / passes, 4)
    return out


# ---------------------------------------------------------------------------- EXPLAIN


async def explain(dsn: str) -> dict[str, float]:
    """EXPLAIN (ANALYZE, BUFFERS) of the pass's big queries, in the order a pass runs them
    (intake runs for real in between, so the reconcile and usage queries see its rows), all
    in one transaction that is rolled back. Plans go to stderr; returns execution ms."""
    planner = build_planner(DEV_CHAIN_ID)
    usage = planner.usage
    assert usage is not None
    uq = usage.q
    out: dict[str, float] = {}
    conn = await db.connect(dsn)
    try:
        tr = conn.transaction()
        await tr.start()
        try:

            async def show(name: str, sql: str, *args: Any) -> None:
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                lines = [r[0] for r in rows]
                say(f"--- EXPLAIN ANALYZE {name}\n" + "\n".join(lines))
                for line in lines:
                    if line.startswith("Execution Time:"):
                        out[name] = float(line.split()[2])

            await show("streams_due", planner.q["streams_due"], DEV_CHAIN_ID)
            await show("escrows_refundable", planner.q["escrows_refundable"], DEV_CHAIN_ID)
            await show("unvalidated", uq["unvalidated"], DEV_CHAIN_ID, usage.intake_per_pass)
            await usage.intake(conn)
            finalized = await conn.fetchval(uq["finalized_block"], DEV_CHAIN_ID)
            await show(
                "unreconcile_reorged",
                uq["unreconcile_reorged"],
                DEV_CHAIN_ID,
                -1 if finalized is None else finalized,
            )
            await show("reconcile_recorded", uq["reconcile_recorded"], DEV_CHAIN_ID)
            await show("reconcile_closed", uq["reconcile_closed"], DEV_CHAIN_ID)
            await show("usage_due", uq["usage_due"], DEV_CHAIN_ID, usage.due_per_pass)
        finally:
            await tr.rollback()
    finally:
        await conn.close()
    return out


# ---------------------------------------------------------------------------- planner RSS


def rss_child(dsn: str, passes: int) -> int:
    """`--rss-child DSN`: the daemon's imports, pool and Planner, `passes` passes (rolled back);
    prints {"rss_mb", "passes_s"} and exits."""
    import keeper.service.daemon  # noqa: F401 - the daemon's whole import footprint
    from keeper.config import DatabaseConfig

    async def go() -> list[float]:
        cfg = DatabaseConfig(url=dsn)
        pool = await db.create_pool(dsn, min_size=cfg.pool_min, max_size=cfg.pool_max)
        planner = build_planner(DEV_CHAIN_ID)
        seconds = []
        try:
            async with AsyncExitStack() as stack:
                conns = [
                    cast(Conn, await stack.enter_async_context(pool.acquire()))
                    for _ in range(PASS_CONNECTIONS)
                ]
                for _ in range(passes):
                    s, _report = await rolled_back_pass(planner, conns)
                    seconds.append(round(s, 3))
        finally:
            await pool.close()
        return seconds

    seconds = anyio.run(go)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rss_mb": round(rss_kib / 1024, 1), "passes_s": seconds}))
    return 0


def planner_rss(dsn: str, passes: int) -> dict[str, Any]:
    """Run `rss_child` in a fresh interpreter; its JSON."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.bench_plan",
            "--rss-child",
            dsn,
            "--passes",
            str(passes),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"RSS child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- settling on anvil


def call_data(signature: str, types: list[str], args: list[Any]) -> str:
    """ABI-encoded call as 0x-hex."""
    return "0x" + (keccak(text=signature)[:4] + abi_encode(types, args)).hex()


def rpc_batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """One JSON-RPC batch (set-up only); the results in call order, or raise on any error."""
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    )
    req = urllib.request.Request(  # noqa: S310 - url is our own local node
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
        replies = sorted(json.loads(resp.read()), key=lambda r: int(r["id"]))
    errors = [r["error"] for r in replies if "error" in r]
    if errors:
        raise AssertionError(f"set-up batch: {len(errors)} calls failed, e.g. {errors[0]}")
    return [r["result"] for r in replies]


def _nonce(url: str, who: str, tag: str) -> int:
    return int(str(rpc(url, "eth_getTransactionCount", [who, tag])), 16)


def _mine_until(url: str, sender: str, nonce: int) -> None:
    """Mine blocks until `sender`'s transactions below `nonce` are in; fail if blocks stop
    taking them (a transaction the pool dropped leaves a gap no block fills)."""
    idle = 0
    while (done := _nonce(url, sender, "latest")) < nonce:
        rpc(url, "evm_mine", [])
        idle = idle + 1 if _nonce(url, sender, "latest") == done else 0
        if idle >= 3:
            raise AssertionError(
                f"set-up stalled at nonce {done} of {nonce}: {rpc(url, 'txpool_status')}"
            )


def _send_all(url: str, sender: str, calls: Sequence[tuple[str, str]], gas: int) -> None:
    """Send `(to, data)` calls from `sender` (an unlocked dev account), OPEN_CHUNK per block
    (automine off meanwhile), and fail unless every one of them succeeded."""
    first = _nonce(url, sender, "pending")
    rpc(url, "evm_setAutomine", [False])
    hashes: list[str] = []
    try:
        for start in range(0, len(calls), OPEN_CHUNK):
            chunk = calls[start : start + OPEN_CHUNK]
            hashes += rpc_batch(
                url,
                [
                    (
                        "eth_sendTransaction",
                        [
                            {
                                "from": sender,
                                "to": to,
                                "data": data,
                                "nonce": hex(first + start + k),
                                "gas": hex(gas),
                            }
                        ],
                    )
                    for k, (to, data) in enumerate(chunk)
                ],
            )
            # Each chunk mined before the next is sent: with thousands waiting, anvil's pool
            # drops some, and the rest then wait behind the gap forever.
            _mine_until(url, sender, first + start + len(chunk))
    finally:
        rpc(url, "evm_setAutomine", [True])
    for start in range(0, len(hashes), 1000):
        receipts = rpc_batch(
            url, [("eth_getTransactionReceipt", [h]) for h in hashes[start : start + 1000]]
        )
        failed = [r for r in receipts if r is None or int(r["status"], 16) != 1]
        if failed:
            raise AssertionError(f"{len(failed)} set-up transactions failed")


@dataclass
class SettleChain:
    """The deployed chain with its streams, ready for the daemon."""

    deployment: Deployment
    stream_ids: list[int]
    start_block: int  # the first block after the set-up
    block_gas_limit: int


def prepare_chain(url: str, n: int, signers: Sequence[str]) -> SettleChain:
    """Deploy, grant the signers ORACLE_ROLE, open `n` streams, move time on, mine 70 blocks."""
    dep = deploy_all(url, DEV_KEY0)
    accounts = rpc(url, "eth_accounts")
    assert isinstance(accounts, list)
    admin, payer = str(accounts[0]), str(accounts[1])
    manager = dep.stream_manager
    first = int(
        str(
            rpc(
                url,
                "eth_call",
                [{"to": manager, "data": call_data("nextStreamId()", [], [])}, "latest"],
            )
        ),
        16,
    )
    role = keccak(text="ORACLE_ROLE")
    setup = [
        (
            dep.token,
            call_data("mint(address,uint256)", ["address", "uint256"], [payer, SETTLE_DEPOSIT * n]),
        )
    ]
    setup += [
        (manager, call_data("grantRole(bytes32,address)", ["bytes32", "address"], [role, s]))
        for s in signers
    ]
    _send_all(url, admin, setup, 200_000)
    approve = call_data("approve(address,uint256)", ["address", "uint256"], [manager, 2**256 - 1])
    opens = [
        (
            manager,
            call_data(
                "openStream(address,uint256,uint256)",
                ["address", "uint256", "uint256"],
                [synthetic_address(0xB7, i % SETTLE_PAYEES), SETTLE_RATE, SETTLE_DEPOSIT],
            ),
        )
        for i in range(n)
    ]
    _send_all(url, payer, [(dep.token, approve), *opens], 300_000)
    opened = (
        int(
            str(
                rpc(
                    url,
                    "eth_call",
                    [{"to": manager, "data": call_data("nextStreamId()", [], [])}, "latest"],
                )
            ),
            16,
        )
        - first
    )
    if opened != n:
        raise AssertionError(f"{opened} of {n} streams opened")
    rpc(url, "evm_increaseTime", [SETTLE_AGE_S])
    rpc(url, "anvil_mine", [hex(70)])
    head = rpc(url, "eth_getBlockByNumber", ["latest", False])
    assert isinstance(head, dict)
    return SettleChain(
        deployment=dep,
        stream_ids=list(range(first, first + n)),
        start_block=int(head["number"], 16) + 1,
        block_gas_limit=int(head["gasLimit"], 16),
    )


def write_config(tmp: Path, chain: SettleChain, rpc_url: str, dsn: str, signers: int) -> Path:
    """`keeper run` configuration: signers as systemd credentials under `tmp/creds`, every
    tuning section at its defaults."""
    deployment_file = tmp / "deployment.json"
    chain.deployment.write(deployment_file)
    creds = tmp / "creds"
    creds.mkdir()
    entries = ""
    for index in range(FIRST_SIGNER, FIRST_SIGNER + signers):
        (creds / f"signer-{index}").write_text(dev_key(index).reveal_hex() + "\n")
        entries += f'\n[[signers]]\ncredential = "signer-{index}"\n'
    config = tmp / "keeper.toml"
    config.write_text(
        f"""[chain]
rpc_url = "{rpc_url}"
deployment_file = "{deployment_file}"

[database]
url = "{dsn}"

[log]
level = "info"
format = "json"
{entries}""",
        encoding="utf-8",
    )
    return config


SETTLED_TOPIC = "0x" + keccak(text="StreamSettled(uint256,uint256,uint256,uint256)").hex()


@dataclass
class SettleWatch:
    """The first StreamSettled of each stream, as the chain reports them."""

    ids: set[int]
    first: dict[int, tuple[int, str]] = field(default_factory=dict)  # id -> (block, tx)
    again: int = 0  # settlements of a stream already settled
    next_block: int = 0

    def poll(self, url: str, manager: str) -> None:
        head = int(str(rpc(url, "eth_blockNumber")), 16)
        if head < self.next_block:
            return
        logs = rpc(
            url,
            "eth_getLogs",
            [
                {
                    "address": manager,
                    "topics": [SETTLED_TOPIC],
                    "fromBlock": hex(self.next_block),
                    "toBlock": hex(head),
                }
            ],
            timeout=60,
        )
        assert isinstance(logs, list)
        for lg in logs:
            sid = int(lg["data"][2:66], 16)  # StreamSettled(id, ...): id not indexed
            if sid not in self.ids:
                continue
            if sid in self.first:
                self.again += 1
            else:
                self.first[sid] = (int(lg["blockNumber"], 16), str(lg["transactionHash"]))
        self.next_block = head + 1

    @property
    def done(self) -> bool:
        return len(self.first) == len(self.ids)


def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in KiB (empty if it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


@contextlib.contextmanager
def keeper_process(
    config: Path, log_file: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m keeper run --config`; SIGTERM (then SIGKILL) on the way out."""
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeper", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


UNMINED_SETTLES = "SELECT count(*) FROM intents WHERE kind = 'settle' AND block_number IS NULL"
SETTLE_INTENTS = """
SELECT count(*) AS planned, count(block_number) AS mined, min(block_number) AS first_block,
       max(block_number) AS last_block,
       sum((SELECT count(*) FROM batch_items b WHERE b.intent_id = intents.id))
           FILTER (WHERE block_number IS NOT NULL) AS items_mined,
       sum(gas_used) AS gas_used,
       bool_and(receipt_status = 1) FILTER (WHERE block_number IS NOT NULL) AS all_succeeded
FROM intents WHERE kind = 'settle'
"""
SETTLES_PER_SIGNER = """
SELECT count(*) AS n FROM intents WHERE kind = 'settle' AND block_number IS NOT NULL
GROUP BY signer ORDER BY 1
"""


def log_times(path: Path, events: Sequence[str]) -> dict[str, float]:
    """Unix time of the first line of each of `events` in the daemon's JSON log."""
    found: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            name = entry["event"]
            if name in events and name not in found:
                found[name] = datetime.fromisoformat(entry["timestamp"]).timestamp()
    return found


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def settle_run(admin_dsn: str, n: int, signers: int) -> dict[str, Any]:
    """Part 3: the daemon settles `n` due streams with `signers` signers on anvil."""
    signer_addresses = [dev_key(FIRST_SIGNER + i).address for i in range(signers)]
    with running_anvil(accounts=FIRST_SIGNER + signers, extra_args=["--prune-history"]) as node:
        t0 = time.perf_counter()
        chain = prepare_chain(node.url, n, signer_addresses)
        say(f"  {n} streams opened and due in {time.perf_counter() - t0:.1f} s")
        rpc(node.url, "anvil_setIntervalMining", [1])
        db_name = f"keeper_bench_plan_settle_{os.getpid()}"
        async with fresh_database(admin_dsn, db_name) as dsn:
            with tempfile.TemporaryDirectory(prefix="keeper-bench-plan-") as tmp_name:
                tmp = Path(tmp_name)
                config = write_config(tmp, chain, node.url, dsn, signers)
                log_file = tmp / "keeper.log"
                env = {**os.environ, "CREDENTIALS_DIRECTORY": str(tmp / "creds")}
                env["PYTHONUNBUFFERED"] = "1"
                watch = SettleWatch(set(chain.stream_ids), next_block=chain.start_block)
                manager = chain.deployment.stream_manager
                started = time.perf_counter()
                started_at = time.time()
                with keeper_process(config, log_file, env) as proc:
                    status: dict[str, int] = {}
                    shown = 0
                    while not watch.done:
                        if time.perf_counter() - started > SETTLE_DEADLINE_S:
                            raise AssertionError(
                                f"{len(watch.first)}/{n} settled after {SETTLE_DEADLINE_S} s\n"
                                + _tail(log_file)
                            )
                        if proc.poll() is not None:
                            raise AssertionError(
                                f"keeper exited ({proc.returncode})\n" + _tail(log_file)
                            )
                        await anyio.sleep(0.5)
                        watch.poll(node.url, manager)
                        status = _proc_status(proc.pid) or status
                        if len(watch.first) != shown:
                            shown = len(watch.first)
                            say(f"  {shown}/{n} settled ({time.perf_counter() - started:.1f} s)")
                    seconds = time.perf_counter() - started
                    done_at = time.time()
                    # The chain has every settlement; wait until the keeper has recorded the
                    # receipts of all its settle intents too (its passes are a second apart).
                    conn = await db.connect(dsn)
                    try:
                        with anyio.fail_after(60):
                            while True:
                                if not await conn.fetchval(UNMINED_SETTLES):
                                    break
                                await anyio.sleep(0.5)
                        intents = await conn.fetchrow(SETTLE_INTENTS)
                        per_signer = await conn.fetch(SETTLES_PER_SIGNER)
                    finally:
                        await conn.close()
                    assert intents is not None
                    status = _proc_status(proc.pid) or status
                    proc.send_signal(signal.SIGTERM)
                    exit_status = proc.wait(timeout=15)
                events = log_times(log_file, ("keeper_started", "plan_pass"))
    blocks = [b for b, _ in watch.first.values()]
    txs = {tx for _, tx in watch.first.values()}
    first_block = int(intents["first_block"])
    last_block = max(blocks)
    mined = int(intents["mined"])
    first_plan = events.get("plan_pass")
    return {
        "blocks": last_block - first_block + 1,
        "txs": len(txs),
        "seconds": seconds,
        "from_first_plan_s": round(done_at - first_plan, 1) if first_plan else None,
        "daemon_start_to_first_plan_s": round(first_plan - started_at, 1) if first_plan else None,
        "first_block": first_block,
        "last_block": last_block,
        "intents_planned": int(intents["planned"]),
        "intents_mined": mined,
        "items_mined": int(intents["items_mined"] or 0),
        "all_succeeded": bool(intents["all_succeeded"]),
        "settled_twice": watch.again,
        "blocks_with_settlements": len(set(blocks)),
        "gas_per_stream": int(intents["gas_used"]) // n if intents["gas_used"] else None,
        "txs_per_signer": [int(r["n"]) for r in per_signer],
        "block_gas_limit": chain.block_gas_limit,
        "rss_daemon_mb": round(status.get("VmHWM", 0) / 1024, 1),
        "rss_daemon_end_mb": round(status.get("VmRSS", 0) / 1024, 1),
        "daemon_exit_status": exit_status,
        "verified": watch.done and watch.again == 0 and mined == len(txs),
    }


# ---------------------------------------------------------------------------- main


async def measure_scale(
    admin_dsn: str, args: argparse.Namespace, streams: int, last: bool
) -> dict[str, Any]:
    """Steady-state and worst-case passes at one scale (and, for the `last` one, EXPLAIN and
    the planner's RSS)."""
    out: dict[str, Any] = {}
    async with scale_database(admin_dsn, args, streams) as (dsn, fresh):
        if fresh:
            t0 = time.perf_counter()
            say(f"synthesizing {streams:,} streams, {streams * 10:,} usage rows")
            counts = await synthesize(dsn, streams)
            out["synthesis_s"] = round(time.perf_counter() - t0, 1)
            say(f"synthesized in {out['synthesis_s']} s: {counts}")
            if args.synthesize_only:
                out["synthetic"] = counts
                return out
        else:
            counts = await synthetic_counts(dsn)
        # A reused database is in its steady state until the work has been added.
        if counts["usage_pending"] == 0:
            say("steady-state passes (nothing due) ...")
            steady = await time_passes(dsn, args.passes, args.pass_budget)
            out["steady_pass_s"] = round(steady.median, 4)
            out["steady_pass_max_s"] = round(max(steady.seconds), 4)
            out["steady_pass_work"] = describe_report(steady.report)
            out["steady_pass_queries_s"] = per_pass(steady.queries, len(steady.seconds))
            say("adding the worst case's work ...")
            counts = await add_work(dsn, streams)
        out["synthetic"] = counts
        say(f"worst-case passes ({args.passes} timed) ...")
        result = await time_passes(dsn, args.passes, args.pass_budget)
        out.update(
            {
                "plan_pass_s": round(result.median, 3),
                "plan_pass_max_s": round(max(result.seconds), 3),
                "plan_pass_first_s": round(result.first_s, 3),
                "plan_passes_s": [round(s, 3) for s in result.seconds],
                "plan_pass_phases_s": per_pass(
                    result.phases, len(result.seconds), sum(result.seconds)
                ),
                "plan_pass_queries_s": per_pass(result.queries, len(result.seconds)),
                "plan_pass_work": describe_report(result.report),
            }
        )
        say(f"{streams:,} streams: steady {out.get('steady_pass_s')} s, worst {result.median} s")
        if last:
            if args.explain:
                out["explain_ms"] = await explain(dsn)
            say("planner RSS (child process) ...")
            child = planner_rss(dsn, min(args.passes, RSS_PASSES))
            out["rss_planner_mb"] = child["rss_mb"]
            out["rss_planner_passes_s"] = child["passes_s"]
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """All parts; the JSON object."""
    load_at_start = os.getloadavg()[0]
    out: dict[str, Any] = {}
    async with database_server() as admin_dsn:
        if not args.skip_scale:
            if args.small_streams:
                small = await measure_scale(admin_dsn, args, args.small_streams, last=False)
                out["plan_pass_100k_s"] = small.get("plan_pass_s")
                out["steady_pass_100k_s"] = small.get("steady_pass_s")
                out["scale_100k"] = small
            big = await measure_scale(admin_dsn, args, args.streams, last=True)
            out["streams"] = big["synthetic"]["streams"]
            out["usage_rows"] = big["synthetic"]["usage_rows"]
            out["intents"] = big["synthetic"]["intents"]
            out.update(big)
        if not args.skip_settle:
            say(
                f"settling {args.settle_streams:,} streams with {args.signers} signers on anvil ..."
            )
            settled = await settle_run(admin_dsn, args.settle_streams, args.signers)
            say(
                f"settled {args.settle_streams:,} streams in {settled['blocks']} blocks, "
                f"{settled['txs']} transactions, {settled['seconds']:.1f} s; daemon peak RSS "
                f"{settled['rss_daemon_mb']} MB"
            )
            out.update(
                {
                    "blocks_to_settle_10k": settled["blocks"],
                    "txs_to_settle_10k": settled["txs"],
                    "settle_10k_s": round(settled["seconds"], 1),
                    "rss_daemon_mb": settled["rss_daemon_mb"],
                    "settle": {k: v for k, v in settled.items() if k != "seconds"},
                }
            )
    rss = [v for v in (out.get("rss_planner_mb"), out.get("rss_daemon_mb")) if v is not None]
    if rss:
        out["rss_mb"] = max(rss)
    out["goals"] = {
        "plan_pass_s": out["plan_pass_s"] <= GOAL_PASS_S if "plan_pass_s" in out else None,
        "steady_pass_s": (
            out["steady_pass_s"] <= GOAL_STEADY_S if out.get("steady_pass_s") is not None else None
        ),
        "rss_mb": out["rss_mb"] <= GOAL_RSS_MB if "rss_mb" in out else None,
    }
    out["loadavg_1m"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON object is the last line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1_000_000, help="synthetic streams")
    parser.add_argument(
        "--small-streams",
        type=int,
        default=100_000,
        help="the same passes at this many streams first (0: skip)",
    )
    parser.add_argument("--passes", type=int, default=5, help="timed planning passes")
    parser.add_argument(
        "--pass-budget",
        type=float,
        default=120.0,
        help="stop timing passes once they took this many seconds (at least one)",
    )
    parser.add_argument("--settle-streams", type=int, default=10_000, help="streams to settle")
    parser.add_argument("--signers", type=int, default=4, help="signers of the settling daemon")
    parser.add_argument("--skip-scale", action="store_true", help="only the settle part")
    parser.add_argument("--skip-settle", action="store_true", help="only the scale part")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE to stderr")
    parser.add_argument("--keep-db", action="store_true", help="keep the scale database")
    parser.add_argument(
        "--reuse-db",
        metavar="DSN",
        help="a kept database of the larger scale (no synthesis; the steady-state passes only "
        "if its work has not been added yet)",
    )
    parser.add_argument(
        "--synthesize-only",
        action="store_true",
        help="stop after writing the steady state (with --keep-db: a database to reuse)",
    )
    parser.add_argument("--rss-child", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="warning", help="keeper log level (stderr)")
    args = parser.parse_args(argv)
    for n in (args.streams, args.small_streams or 100_000):
        if n < 100_000 or n % 100_000:
            parser.error("--streams and --small-streams: multiples of 100,000")
    configure_logs(args.log_level)
    if args.rss_child:
        return rss_child(args.rss_child, args.passes)
    out = anyio.run(bench, args)
    print(json.dumps(out))
    settle = out.get("settle")
    return 0 if settle is None or settle["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
