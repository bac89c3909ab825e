"""`make bench-index`: indexer throughput and head latency, as one JSON object on the last line.

One run, one machine state:

1. a fresh anvil is filled with >= 200,000 contract events (`tests.bench.index_workload`) and
   65+ empty blocks, so everything is below the node's `finalized` tag;
2. raw rate: `eth_getLogs` + `json.loads` and nothing else, over one kept-alive HTTP connection,
   once in chunks of about 20,000 logs and once in exactly the ranges the backfill used;
3. backfill: `Indexer.backfill` from the deployment block to the finalized block into a fresh,
   migrated database (created and dropped here on the server at KEEPER_BENCH_DATABASE_URL,
   default the local test server); the event rows stored must equal the logs on the chain;
   where the time went is measured on the side (RPC, decode, each COPY, each SQL statement,
   commit; CPU seconds of this process, anvil and Postgres). Decoding happens inside
   write_range, part by part, while the previous part's COPY runs: those two overlap;
4. head latency: anvil mines a block every second; `Indexer.run` follows the head (polling at
   the default interval, and again with the websocket `newHeads` wake-up when the indexer has
   one) while `topUp` transactions are sent; latency = the change visible in
   `keeper.stream_balances` minus the block mined (first receipt seen), both polled every 5 ms.

`ratio` = backfill rate / raw rate over the same ranges. `--profile FILE` adds a second backfill
under cProfile into another fresh database and prints its top functions to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import json
import math
import os
import pstats
import random
import resource
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import anyio
import asyncpg

from keeper import db
from keeper.chain.rpc import BlockHeader, ChainClient
from keeper.config import IngestConfig
from keeper.db.migrations import migrate
from keeper.dev.anvil import Anvil, rpc, running_anvil
from keeper.ingest.events import DecodedBatch, Decoder
from keeper.ingest.indexer import Indexer
from keeper.ingest.store import Store
from keeper.logs import configure as configure_logs
from tests.bench.index_workload import Workload, generate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_LOGS = 20_000  # logs per request of the fixed-chunking raw pass
GOAL_EVENTS_PER_S = 40_000
GOAL_RATIO = 0.6
GOAL_LATENCY_MARGIN_MS = 100.0  # head to view within one poll interval + 100 ms
POLL_EVERY = 0.005


def say(line: str) -> None:
    """Progress goes to stderr; stdout ends with the JSON line."""
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- CPU accounting


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used between start() and stop() by this process, anvil, and the Postgres
    backends serving the benchmark's database (other sessions on the server are left out)."""

    anvil_pid: int
    used: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)
    _backends: dict[int, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {
            "python": time.process_time(),
            "anvil": _proc_cpu(self.anvil_pid),
            "wall": time.perf_counter(),
        }

    def start(self, backends: Iterable[int]) -> None:
        self._backends = {pid: _proc_cpu(pid) for pid in backends}
        self._start = self._read()

    def stop(self, backends: Iterable[int]) -> None:
        end = self._read()
        used = {k: end[k] - self._start[k] for k in end}
        # A backend that started meanwhile began at zero.
        pids = set(self._backends) | set(backends)
        used["postgres"] = sum(_proc_cpu(p) - self._backends.get(p, 0.0) for p in pids)
        self.used = {k: round(v, 3) for k, v in used.items()}


async def backend_pids(conn: Any) -> list[int]:
    """Server process ids of every session on the current database."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    return [int(r["pid"]) for r in rows]


# ---------------------------------------------------------------------------- raw rate


@dataclass
class RawResult:
    """One pass of bare eth_getLogs + json.loads."""

    events: int
    seconds: float
    http_s: float
    parse_s: float
    megabytes: float
    requests: int
    per_block: Counter[int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def raw_get_logs(
    url: str,
    addresses: Sequence[str],
    ranges: Iterable[tuple[int, int]],
    *,
    count_blocks: bool = False,
) -> RawResult:
    """eth_getLogs over `ranges`, one request at a time on one connection, parsed, nothing else."""
    http_s = parse_s = 0.0
    events = size = requests = 0
    per_block: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        for start, end in ranges:
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": requests,
                    "method": "eth_getLogs",
                    "params": [
                        {"address": list(addresses), "fromBlock": hex(start), "toBlock": hex(end)}
                    ],
                }
            )
            t0 = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                payload = await resp.read()
            t1 = time.perf_counter()
            logs = json.loads(payload)["result"]
            t2 = time.perf_counter()
            http_s += t1 - t0
            parse_s += t2 - t1
            size += len(payload)
            events += len(logs)
            requests += 1
            if count_blocks:
                per_block.update(int(lg["blockNumber"], 16) for lg in logs)
            del logs, payload
        seconds = time.perf_counter() - started
    return RawResult(events, seconds, http_s, parse_s, size / 1e6, requests, per_block)


def chunk_by_logs(
    first: int, last: int, per_block: Mapping[int, int], target: int
) -> list[tuple[int, int]]:
    """Consecutive block ranges covering [first, last] holding about `target` logs each."""
    ranges: list[tuple[int, int]] = []
    start, acc = first, 0
    for number in range(first, last + 1):
        acc += per_block.get(number, 0)
        if acc >= target:
            ranges.append((start, number))
            start, acc = number + 1, 0
    if start <= last:
        ranges.append((start, last))
    return ranges


# ---------------------------------------------------------------------------- timed keeper parts


class Timings:
    """Seconds and call counts by label."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] += seconds
        self.calls[label] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            k: {"s": round(v, 3), "calls": self.calls[k]}
            for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        }


class TimedClient(ChainClient):
    """ChainClient that times get_logs/header and records the ranges asked for."""

    def __init__(self, url: str, timings: Timings) -> None:
        super().__init__(url)
        self.timings = timings
        self.ranges: list[tuple[int, int, int]] = []

    async def get_logs(
        self, addresses: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        logs = await super().get_logs(addresses, from_block, to_block)
        self.timings.add("rpc.get_logs (HTTP + anvil + web3 JSON parse)", time.perf_counter() - t0)
        self.ranges.append((from_block, to_block, len(logs)))
        return logs

    async def header(self, block: int | str) -> BlockHeader | None:
        t0 = time.perf_counter()
        result = await super().header(block)
        self.timings.add("rpc.header", time.perf_counter() - t0)
        return result


class TimedDecoder(Decoder):
    """Decoder that times decode()."""

    def __init__(self, chain_id: int, addresses: Mapping[str, str], timings: Timings) -> None:
        super().__init__(chain_id, addresses)
        self.timings = timings

    def decode(
        self, logs: Iterable[Mapping[str, Any]], timestamps: Mapping[int, int]
    ) -> DecodedBatch:
        t0 = time.perf_counter()
        batch = super().decode(logs, timestamps)
        self.timings.add("decode", time.perf_counter() - t0)
        return batch


class TimedStore(Store):
    """Store that times write_range as a whole (its parts are timed by TimedConn)."""

    def __init__(self, chain_id: int, decoder: Decoder, timings: Timings) -> None:
        super().__init__(chain_id, decoder)
        self.timings = timings

    async def write_range(self, conn: Any, batch: Any, *args: Any, **kw: Any) -> int:
        t0 = time.perf_counter()
        events = await super().write_range(conn, batch, *args, **kw)
        self.timings.add("write_range (total)", time.perf_counter() - t0)
        return events


class _TimedTransaction:
    def __init__(self, inner: Any, timings: Timings) -> None:
        self.inner = inner
        self.timings = timings

    async def __aenter__(self) -> Any:
        return await self.inner.__aenter__()

    async def __aexit__(self, *exc: object) -> Any:
        t0 = time.perf_counter()
        result = await self.inner.__aexit__(*exc)
        self.timings.add("db.commit", time.perf_counter() - t0)
        return result


class TimedConn:
    """A connection proxy timing COPY per table, each named statement and the commit."""

    def __init__(self, conn: Any, timings: Timings, names: Mapping[str, str]) -> None:
        self._conn = conn
        self._timings = timings
        self._names = names

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def transaction(self, **kw: Any) -> _TimedTransaction:
        return _TimedTransaction(self._conn.transaction(**kw), self._timings)

    async def copy_records_to_table(self, table: str, **kw: Any) -> Any:
        t0 = time.perf_counter()
        result = await self._conn.copy_records_to_table(table, **kw)
        self._timings.add(f"db.copy {table}", time.perf_counter() - t0)
        return result

    async def copy_to_table(self, table: str, **kw: Any) -> Any:
        t0 = time.perf_counter()
        result = await self._conn.copy_to_table(table, **kw)
        self._timings.add(f"db.copy {table}", time.perf_counter() - t0)
        return result

    async def _timed(self, method: str, query: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        result = await getattr(self._conn, method)(query, *args)
        self._timings.add(f"db.sql {self._names.get(query, 'other')}", time.perf_counter() - t0)
        return result

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._timed("execute", query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._timed("fetch", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._timed("fetchrow", query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._timed("fetchval", query, *args)


class TimedPool:
    """A pool whose connections are TimedConn proxies."""

    def __init__(self, pool: asyncpg.Pool, timings: Timings, names: Mapping[str, str]) -> None:
        self._pool = pool
        self._timings = timings
        self._names = names

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[TimedConn]:
        t0 = time.perf_counter()
        async with self._pool.acquire() as conn:
            self._timings.add("db.acquire", time.perf_counter() - t0)
            yield TimedConn(conn, self._timings, self._names)


# ---------------------------------------------------------------------------- databases


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, name: str) -> AsyncIterator[str]:
    """Create database `name` on the server of `admin_dsn`, migrate it, drop it afterwards."""
    admin = await db.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _with_database(admin_dsn, name)
    try:
        await migrate(dsn)
        yield dsn
    finally:
        with anyio.CancelScope(shield=True):
            admin = await db.connect(admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


async def event_rows(
    conn: Any, tables: Sequence[str], chain_id: int, first: int, last: int
) -> dict[str, int]:
    """Event rows stored for blocks [first, last], by event table (empty tables left out)."""
    rows: dict[str, int] = {}
    for table in tables:
        n = int(
            await conn.fetchval(
                f"SELECT count(*) FROM {table} "  # noqa: S608 - table names from the decoder
                "WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3",
                chain_id,
                first,
                last,
            )
        )
        if n:
            rows[table] = n
    return rows


# ---------------------------------------------------------------------------- backfill


@dataclass
class BackfillResult:
    """One measured backfill."""

    events: int
    blocks: int
    seconds: float
    ranges: list[tuple[int, int, int]]
    timings: Timings
    cpu: dict[str, float]
    rows: dict[str, int]
    streams: int
    balance_mismatches: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def run_backfill(
    node: Anvil,
    wl: Workload,
    dsn: str,
    target: int,
    *,
    settings: IngestConfig | None = None,
    profile: cProfile.Profile | None = None,
) -> BackfillResult:
    """Backfill (deployment block, target] into the database at `dsn` and check what it wrote."""
    dep = wl.deployment
    timings = Timings()
    client = TimedClient(node.url, timings)
    pool = await db.create_pool(dsn)
    try:
        indexer = Indexer(
            client,
            pool,
            chain_id=dep.chain_id,
            addresses=wl.addresses,
            start_block=dep.deployment_block,
            settings=settings,
        )
        indexer.decoder = TimedDecoder(dep.chain_id, wl.addresses, timings)
        store = TimedStore(dep.chain_id, indexer.decoder, timings)
        indexer.store = store
        names = {sql: name for name, sql in store.q.items()}
        indexer.pool = TimedPool(pool, timings, names)  # type: ignore[assignment]
        async with pool.acquire() as conn:
            cursor = await store.cursor(conn, dep.deployment_block)
            await conn.execute("CHECKPOINT")  # start every run from the same WAL state
            meter = CpuMeter(node.process.pid)
            meter.start(await backend_pids(conn))
        if profile is not None:
            profile.enable()
        t0 = time.perf_counter()
        blocks = await indexer.backfill(cursor, target)
        seconds = time.perf_counter() - t0
        if profile is not None:
            profile.disable()
        events = sum(n for _, _, n in client.ranges)
        async with pool.acquire() as conn:
            meter.stop(await backend_pids(conn))
            rows = await event_rows(
                conn, indexer.decoder.tables, dep.chain_id, dep.deployment_block, target
            )
            streams = int(
                await conn.fetchval(
                    "SELECT count(*) FROM streams WHERE chain_id = $1", dep.chain_id
                )
            )
            sample = wl.stream_ids[:: max(1, len(wl.stream_ids) // 25)]
            stored = {
                int(r["stream_id"]): int(r["balance"])
                for r in await conn.fetch(
                    "SELECT stream_id, balance FROM streams "
                    "WHERE chain_id = $1 AND stream_id = ANY($2::numeric[])",
                    dep.chain_id,
                    sample,
                )
            }
        mismatches = 0
        for sid in sample:
            # The blocks after the workload are empty: the chain's state now is its state at
            # `target`.
            on_chain = int(wl.env.manager.functions.getStream(sid).call()[2])
            if stored.get(sid) != on_chain:
                mismatches += 1
        return BackfillResult(
            events=events,
            blocks=blocks,
            seconds=seconds,
            ranges=client.ranges,
            timings=timings,
            cpu=meter.used,
            rows=rows,
            streams=streams,
            balance_mismatches=mismatches,
        )
    finally:
        await client.close()
        await pool.close()


def breakdown(result: BackfillResult) -> dict[str, Any]:
    """Where the backfill's wall time went (the producer overlaps the consumer; inside
    write_range, each part's COPY overlaps the decoding of the next part)."""
    t = result.timings.seconds
    write = t.get("write_range (total)", 0.0)
    decode = t.get("decode", 0.0)
    copy = sum(v for k, v in t.items() if k.startswith("db.copy "))
    db_parts = {k: round(v, 3) for k, v in t.items() if k.startswith("db.")}
    return {
        "wall_s": round(result.seconds, 3),
        "producer": {
            k: round(v, 3) for k, v in t.items() if k.startswith("rpc.")
        },  # overlapped with the consumer (one range of prefetch)
        "consumer": {
            "write_range_s": round(write, 3),
            "decode_s (in write_range)": round(decode, 3),
            "copy_s (in write_range, alongside decode)": round(copy, 3),
            "waiting_for_producer_s": round(max(result.seconds - write, 0.0), 3),
        },
        "db": db_parts,
        "cpu_s": result.cpu,
    }


def print_profile(profile: cProfile.Profile, path: Path) -> None:
    """Dump the stats to `path` and print the top functions to stderr."""
    profile.dump_stats(str(path))
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(35)
    say(out.getvalue())


# ---------------------------------------------------------------------------- head latency


@dataclass
class LatencyResult:
    """Head-to-view latencies of one mode, in ms."""

    mode: str
    samples: list[float]
    failures: int

    def pct(self, p: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 1)


async def _rpc(session: aiohttp.ClientSession, url: str, method: str, params: list[Any]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with session.post(url, json=body) as resp:
        reply = await resp.json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def head_latency(
    node: Anvil,
    wl: Workload,
    dsn: str,
    *,
    samples: int,
    stream_ids: Sequence[int],
    ws_url: str | None,
    rng: random.Random,
) -> LatencyResult:
    """Follow the head with Indexer.run while topUps are sent; latency per topUp, in ms."""
    dep = wl.deployment
    settings = IngestConfig()
    extra: dict[str, Any] = {"ws_url": ws_url} if ws_url else {}
    mode = "ws" if ws_url else "poll"
    pool = await db.create_pool(dsn)
    client = ChainClient(node.url)
    watch = await db.connect(dsn)
    latencies: list[float] = []
    failures = 0
    query = "SELECT balance FROM keeper.stream_balances WHERE chain_id = $1 AND stream_id = $2"
    manager = wl.env.manager
    try:
        indexer = Indexer(
            client,
            pool,
            chain_id=dep.chain_id,
            addresses=wl.addresses,
            start_block=dep.deployment_block,
            settings=settings,
            **extra,
        )
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            await tg.start(indexer.run)
            # Catch up with the head first (the blocks since the backfill's target).
            with anyio.fail_after(120):
                while True:
                    head = int(await _rpc(http, node.url, "eth_blockNumber", []), 16)
                    done = await watch.fetchval(
                        "SELECT indexed_block FROM ingest_cursor WHERE chain_id = $1",
                        dep.chain_id,
                    )
                    if done is not None and int(done) >= head - 1:
                        break
                    await anyio.sleep(0.1)
            say(f"head latency ({mode}): indexer caught up at block {head}; sampling")
            for i in range(samples):
                await anyio.sleep(rng.uniform(0.05, 0.6))
                sid = stream_ids[i % len(stream_ids)]
                before = await watch.fetchval(query, dep.chain_id, sid)
                data = manager.encode_abi("topUp", args=[sid, 1_000 + i])
                tx = {"from": wl.payer, "to": manager.address, "data": data, "gas": hex(200_000)}
                tx_hash = await _rpc(http, node.url, "eth_sendTransaction", [tx])
                mined: list[float] = []
                visible: list[float] = []

                async def poll_receipt(tx_hash: str = tx_hash, mined: list[float] = mined) -> None:
                    while True:
                        r = await _rpc(http, node.url, "eth_getTransactionReceipt", [tx_hash])
                        if r is not None:
                            mined.append(time.perf_counter())
                            return
                        await anyio.sleep(POLL_EVERY)

                async def poll_view(
                    sid: int = sid, before: Any = before, visible: list[float] = visible
                ) -> None:
                    while True:
                        now = await watch.fetchval(query, dep.chain_id, sid)
                        if now != before:
                            visible.append(time.perf_counter())
                            return
                        await anyio.sleep(POLL_EVERY)

                with anyio.move_on_after(15):
                    async with anyio.create_task_group() as g:
                        g.start_soon(poll_receipt)
                        g.start_soon(poll_view)
                if mined and visible:
                    latencies.append((visible[0] - mined[0]) * 1000)
                else:
                    failures += 1
                if (i + 1) % 10 == 0:
                    say(f"  {i + 1}/{samples} samples ({mode})")
            tg.cancel_scope.cancel()
    finally:
        await watch.close()
        await client.close()
        await pool.close()
    return LatencyResult(mode, latencies, failures)


# ---------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = os.environ.get("KEEPER_BENCH_DATABASE_URL", DEFAULT_DSN)
    load_at_start = os.getloadavg()[0]
    tuned: dict[str, int] = {}
    if args.initial_range:
        tuned["initial_range"] = args.initial_range
    if args.max_range:
        tuned["max_range"] = args.max_range
        tuned.setdefault("initial_range", min(args.max_range, IngestConfig().initial_range))
    settings = IngestConfig(**tuned) if tuned else None
    db_name = f"keeper_bench_index_{os.getpid()}"
    # No historical states: anvil would otherwise snapshot its whole state at every block, which
    # makes each of the ~3,000 blocks slower to mine than the last. Logs, blocks and receipts
    # (all the indexer reads) are kept.
    with running_anvil(extra_args=["--prune-history"]) as node:
        wl = generate(
            node.url,
            streams=args.streams,
            settle_rounds=args.rounds,
            progress=say,
        )
        finalized_block = rpc(node.url, "eth_getBlockByNumber", ["finalized", False])
        assert isinstance(finalized_block, dict)
        target = int(finalized_block["number"], 16)
        first = wl.deployment.deployment_block
        addresses = list(wl.addresses.values())

        # Warm-up pass (also counts logs per block for the fixed chunking).
        warm = await raw_get_logs(
            node.url,
            addresses,
            [(a, min(a + 199, target)) for a in range(first, target + 1, 200)],
            count_blocks=True,
        )
        say(f"warm-up: {warm.events} logs in blocks {first}..{target}")
        fixed_ranges = chunk_by_logs(first, target, warm.per_block, TARGET_LOGS)
        raw_fixed = await raw_get_logs(node.url, addresses, fixed_ranges)
        say(
            f"raw (~{TARGET_LOGS} logs/request, {raw_fixed.requests} requests): "
            f"{raw_fixed.rate:,.0f} events/s"
        )

        async with fresh_database(admin_dsn, db_name) as dsn:
            say("backfill ...")
            result = await run_backfill(node, wl, dsn, target, settings=settings)
            say(
                f"backfill: {result.events} events in {result.seconds:.2f} s "
                f"= {result.rate:,.0f} events/s over {len(result.ranges)} ranges"
            )
            raw_same = await raw_get_logs(
                node.url, addresses, [(a, b) for a, b, _ in result.ranges]
            )
            say(f"raw (the backfill's ranges): {raw_same.rate:,.0f} events/s")

            if args.profile:
                async with fresh_database(admin_dsn, db_name + "_prof") as prof_dsn:
                    profile = cProfile.Profile()
                    profiled = await run_backfill(
                        node, wl, prof_dsn, target, settings=settings, profile=profile
                    )
                    say(f"profiled backfill: {profiled.rate:,.0f} events/s (under cProfile)")
                    print_profile(profile, Path(args.profile))

            latency: dict[str, LatencyResult] = {}
            if args.samples > 0:
                rpc(node.url, "anvil_setIntervalMining", [1])
                rng = random.Random(1)
                tail = wl.stream_ids[-args.samples * 2 :]
                latency["poll"] = await head_latency(
                    node, wl, dsn, samples=args.samples, stream_ids=tail, ws_url=None, rng=rng
                )
                if "ws_url" in inspect.signature(Indexer).parameters:
                    latency["ws"] = await head_latency(
                        node,
                        wl,
                        dsn,
                        samples=args.samples,
                        stream_ids=tail[::-1],
                        ws_url=node.ws_url,
                        rng=rng,
                    )

    expected = warm.events
    verified = (
        result.events == expected
        and sum(result.rows.values()) == expected
        and result.streams == len(wl.stream_ids)
        and result.balance_mismatches == 0
        and raw_same.events == expected
        and raw_fixed.events == expected
    )
    ratio = result.rate / raw_same.rate if raw_same.rate else 0.0
    poll_ms = IngestConfig().poll_interval * 1000
    out: dict[str, Any] = {
        "events": expected,
        "raw_events_per_s": round(raw_same.rate),
        "backfill_events_per_s": round(result.rate),
        "ratio": round(ratio, 3),
        "head_latency_p50_ms": latency["poll"].pct(0.5) if "poll" in latency else None,
        "head_latency_p99_ms": latency["poll"].pct(0.99) if "poll" in latency else None,
    }
    for mode, lat in latency.items():
        out[f"head_latency_{mode}"] = {
            "samples": len(lat.samples),
            "failures": lat.failures,
            "p50_ms": lat.pct(0.5),
            "p90_ms": lat.pct(0.9),
            "p99_ms": lat.pct(0.99),
            "max_ms": round(max(lat.samples), 1) if lat.samples else None,
        }
    out.update(
        {
            "verified": verified,
            "rows_stored": sum(result.rows.values()),
            "rows_by_table": result.rows,
            "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "blocks": target - first + 1,
            "backfill_s": round(result.seconds, 3),
            "backfill_ranges": len(result.ranges),
            "backfill_range_logs": [n for _, _, n in result.ranges],
            "backfill_range_blocks": [b - a + 1 for a, b, _ in result.ranges],
            "raw_same_ranges": {
                "s": round(raw_same.seconds, 3),
                "http_s": round(raw_same.http_s, 3),
                "json_parse_s": round(raw_same.parse_s, 3),
                "mb": round(raw_same.megabytes, 1),
            },
            "raw_fixed_chunk_events_per_s": round(raw_fixed.rate),
            "raw_fixed_chunk_requests": raw_fixed.requests,
            "ratio_vs_fixed_chunks": round(result.rate / raw_fixed.rate, 3)
            if raw_fixed.rate
            else None,
            "breakdown": breakdown(result),
            "poll_interval_s": poll_ms / 1000,
            "ingest_settings": tuned or "defaults",
            "generation_s": round(wl.seconds, 1),
            # Other work on the machine skews absolute rates (the ratio less so).
            "loadavg_1m": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
            "events_sent": wl.sent,
            "goals": {
                "events_per_s": result.rate >= GOAL_EVENTS_PER_S,
                "ratio": ratio >= GOAL_RATIO,
                "head_latency_p99": (
                    "poll" in latency
                    and bool(latency["poll"].samples)
                    and (latency["poll"].pct(0.99) or 0.0) <= poll_ms + GOAL_LATENCY_MARGIN_MS
                ),
            },
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON object is the last line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=2_000, help="streams opened")
    parser.add_argument("--rounds", type=int, default=100, help="settleStreams calls over all")
    parser.add_argument("--samples", type=int, default=50, help="head latency samples per mode")
    parser.add_argument("--profile", metavar="FILE", help="also profile a backfill (cProfile)")
    parser.add_argument(
        "--initial-range",
        type=int,
        help="IngestConfig.initial_range of the measured backfill (default: the keeper's)",
    )
    parser.add_argument(
        "--max-range",
        type=int,
        help="IngestConfig.max_range, e.g. 10 for ~20,000-log ranges as a provider with a "
        "log limit would force (default: the keeper's)",
    )
    parser.add_argument("--log-level", default="warning", help="keeper log level (stderr)")
    args = parser.parse_args(argv)
    configure_logs(args.log_level)
    out = anyio.run(bench, args)
    verdicts = out["goals"]
    say(
        f"events/s {out['backfill_events_per_s']:,} (goal >= {GOAL_EVENTS_PER_S:,}: "
        f"{'ok' if verdicts['events_per_s'] else 'SHORT'}), ratio {out['ratio']} "
        f"(goal >= {GOAL_RATIO}: {'ok' if verdicts['ratio'] else 'SHORT'}), head p50/p99 "
        f"{out['head_latency_p50_ms']}/{out['head_latency_p99_ms']} ms; "
        f"data verified: {out['verified']}"
    )
    print(json.dumps(out))
    return 0 if out["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
