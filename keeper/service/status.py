"""`keeper status`: one chain's state on one screen, read from the database.

`collect_status` reads the operator views (keeper.indexer_status, keeper.streams_due,
keeper.escrows_refundable, keeper.pending_terms, keeper.usage_pending, keeper.tx_pipeline,
keeper.signers, keeper.reorgs, keeper.settlement_totals) and `keeper.service.leader.current_leader`,
in one read-only snapshot, with the named queries of `sql/status.sql`. It only SELECTs, so it
runs next to a live daemon; and only views and system catalogs, so it also runs as a member of
the read-only role `keeper_reader` (which then sees no leader `since`: pg_stat_activity hides
other roles' session start). The result is JSON-safe: token and wei amounts as decimal strings
(they exceed a float's precision), block numbers and counts as ints, times as ISO 8601. The
health port serves it as /status; `render_status` is the text of `keeper status`.

With no chain id, the database must have exactly one indexed chain; with several,
`AmbiguousChain` asks for `--chain-id` (one screen is one chain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.db import Conn, to_int
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.service.leader import current_leader

QUERY_FILE = "status.sql"
OPEN_STATES = ("planned", "assigned", "mined", "confirmed")
USAGE_STATUSES = ("received", "pending", "sending")
WEI_PER_ETHER = 10**18


class StatusError(KeeperError):
    """Cannot tell the keeper's status."""


class NoChain(StatusError):
    """The database has no indexed chain yet."""

    def __init__(self) -> None:
        super().__init__(
            help="run the keeper against this database first (`keeper run`), or check that "
            "the database URL points at the keeper's database"
        )


class AmbiguousChain(StatusError):
    """The database has several indexed chains."""

    def __init__(self, chain_ids: list[int]) -> None:
        listed = ", ".join(map(str, chain_ids))
        super().__init__(
            f"the database has several indexed chains ({listed})",
            help="pass --chain-id to choose one",
        )
        self.chain_ids = chain_ids


async def collect_status(conn: Conn, chain_id: int | None = None) -> dict[str, Any]:
    """The status of `chain_id` (the database's only chain when None) as a JSON-safe dict.

    Raises `NoChain` / `AmbiguousChain` when no chain id is given and the database holds none /
    several. Runs in one read-only repeatable-read transaction unless `conn` is already in one.
    """
    if conn.is_in_transaction():
        return await _collect(conn, chain_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _collect(conn, chain_id)


async def _collect(conn: Conn, chain_id: int | None) -> dict[str, Any]:
    q = load_queries(QUERY_FILE)
    if chain_id is None:
        chain_ids = [int(r["chain_id"]) for r in await conn.fetch(q["chains"])]
        if not chain_ids:
            raise NoChain()
        if len(chain_ids) > 1:
            raise AmbiguousChain(chain_ids)
        chain_id = chain_ids[0]

    index = await conn.fetchrow(q["indexer_status"], chain_id)
    due = await conn.fetchrow(q["work_due"], chain_id)
    terms = await conn.fetchrow(q["pending_terms"], chain_id)
    usage = {r["status"]: int(r["n"]) for r in await conn.fetch(q["usage_pending"], chain_id)}
    intents: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(q["intents_open"], chain_id):
        intents.setdefault(r["kind"], {})[r["state"]] = int(r["n"])
    signers = await conn.fetch(q["signers"], chain_id)
    reorg = await conn.fetchrow(q["last_reorg"], chain_id)
    totals = await conn.fetchrow(q["totals_24h"], chain_id)
    failed = await conn.fetchrow(q["last_failed_intent"], chain_id)
    send_error = await conn.fetchrow(q["last_send_error"], chain_id)
    fault = await conn.fetchrow(q["tx_faults"], chain_id)
    unsure = await conn.fetchrow(q["unsure_sends"], chain_id)
    leader = await current_leader(conn, chain_id)
    lacking = None  # unknown to the read-only role
    if await conn.fetchval(q["can_read_role_events"]):
        rows = await conn.fetch(q["signers_without_oracle_role"], chain_id, ORACLE_ROLE)
        lacking = [r["address"] for r in rows]

    return {
        "chain": {"id": chain_id, "name": index["chain_name"] if index else None},
        "as_of": _time(await conn.fetchval(q["database_now"])),
        "leader": None
        if leader is None
        else {
            "application_name": leader["application_name"],
            "client_addr": leader["client_addr"],
            "backend_pid": leader["pid"],
            "since": _time(leader["backend_start"]),
        },
        "index": None if index is None else _index(index),
        "pending": {
            "streams_due": _int(due["streams_due"]) if due else 0,
            "streams_urgent": _int(due["streams_urgent"]) if due else 0,
            "escrows_refundable": _int(due["escrows_refundable"]) if due else 0,
            "usage": {status: usage.get(status, 0) for status in USAGE_STATUSES},
            "intents": intents,
            "terms": {
                "closing": _int(terms["closing"]) if terms else 0,
                "price_changes": _int(terms["price_changes"]) if terms else 0,
                "next_in": _int(terms["next_in"]) if terms else None,
            },
        },
        "signers": [
            {
                "address": s["address"],
                "balance": _amount(s["balance"]),
                "low_balance": s["low_balance"],
                "next_nonce": _int(s["next_nonce"]),
                "in_flight": _int(s["in_flight"]),
                "confirmed": _int(s["confirmed"]),
                "updated_at": _time(s["updated_at"]),
            }
            for s in signers
        ],
        "last_reorg": None
        if reorg is None
        else {
            "at": _time(reorg["detected_at"]),
            "depth": _int(reorg["depth"]),
            "ancestor_block": _int(reorg["ancestor_block"]),
            "old_head_block": _int(reorg["old_head_block"]),
            "new_head_block": _int(reorg["new_head_block"]),
            "events_removed": _int(reorg["events_removed"]),
        },
        "last_24h": None
        if totals is None
        else {
            "settlements": _int(totals["settlements"]),
            "settled_amount": _amount(totals["settled_amount"]),
            "usage_reports": _int(totals["usage_reports"]),
            "usage_charged": _amount(totals["usage_charged"]),
            "refunds": _int(totals["refunds"]),
            "refunded_amount": _amount(totals["refunded_amount"]),
        },
        # Signers holding no ORACLE_ROLE as indexed: usage billing is off while one does.
        "signers_without_oracle_role": lacking,
        "last_error": _last_error(failed, send_error),
        "unsure_sends": None
        if unsure is None
        else {
            "attempts": _int(unsure["total"]),
            "latest": {
                "at": _time(unsure["at"]),
                "intent_id": _int(unsure["intent_id"]),
                "kind": unsure["kind"],
                "key": unsure["key"],
                "outcome": unsure["outcome"],
                "message": unsure["message"],
            },
        },
        "tx_faults": None
        if fault is None
        else {
            "intents": _int(fault["total"]),
            "latest": {
                "at": _time(fault["at"]),
                "intent_id": _int(fault["intent_id"]),
                "kind": fault["kind"],
                "key": fault["key"],
                "stage": fault["stage"],
                "message": fault["message"],
                "failures": _int(fault["failures"]),
                "retry_at": _time(fault["retry_at"]),
            },
        },
    }


def _index(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "head_block": _int(row["head_block"]),
        "head_time": _time(row["head_time"]),
        "indexed_block": _int(row["indexed_block"]),
        "indexed_time": _time(row["indexed_time"]),
        "finalized_block": _int(row["finalized_block"]),
        "lag_blocks": _int(row["lag_blocks"]),
        "lag_seconds": _int(row["lag_seconds"]),
        "wall_lag_seconds": _int(row["wall_lag_seconds"]),
        "unfinalized_blocks": _int(row["unfinalized_blocks"]),
        "backfill_done": row["backfill_done"],
        "reorgs_total": _int(row["reorgs_total"]),
        "max_reorg_depth": _int(row["max_reorg_depth"]),
        "updated_at": _time(row["updated_at"]),
    }


def _last_error(
    failed: asyncpg.Record | None, send_error: asyncpg.Record | None
) -> dict[str, Any] | None:
    """The newer of the latest failed intent and the latest send error."""
    candidates = [
        (row, source)
        for row, source in ((failed, "intent_failed"), (send_error, "send_error"))
        if row is not None
    ]
    if not candidates:
        return None
    row, source = max(candidates, key=lambda c: (c[0]["at"], c[0]["intent_id"]))
    return {
        "source": source,
        "at": _time(row["at"]),
        "intent_id": _int(row["intent_id"]),
        "kind": row["kind"],
        "key": row["key"],
        "message": row["message"],
    }


def _int(value: int | Decimal | None) -> int | None:
    """A count or block number (bigint, or numeric from a view) as an int."""
    return None if value is None else int(value)


def _amount(value: Decimal) -> str:
    """A numeric(78,0) amount as its decimal digits (asyncpg's Decimal may print `1.00E+22`)."""
    return str(to_int(value))


def _time(value: datetime | None) -> str | None:
    """ISO 8601."""
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------------- the one screen


def _provider_lines(providers: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per RPC provider: selected, healthy or why not, head lag, latency, errors."""
    lines = []
    for i, p in enumerate(providers):
        if p.get("excluded"):
            state = f"EXCLUDED: {p['excluded']}"
        elif p.get("healthy"):
            state = "selected" if p.get("selected") else "healthy"
        else:
            more = p.get("demoted_for_s")
            state = "DEMOTED" + (f" ({more} s more)" if more else "")
        errors = sum((p.get("errors") or {}).values())
        latency = "" if p.get("latency_ms") is None else f", {p['latency_ms']} ms"
        head = "head ?" if p.get("head") is None else f"head {p['head']} (-{p['lag_blocks']})"
        last = f", last error: {p['last_error']}" if p.get("last_error") and errors else ""
        lines.append(
            f"{'rpc' if i == 0 else '':<12}{p['provider']}  {state}, {head}{latency}, "
            f"{p.get('requests', 0)} requests, {errors} errors{last}"
        )
    return lines


def render_status(status: Mapping[str, Any]) -> str:
    """The text of `keeper status`: one line per subject, ending with a newline."""
    chain = status["chain"]
    name = f" ({chain['name']})" if chain.get("name") else ""
    lines = [f"chain       {chain['id']}{name}, as of {_short(status.get('as_of'))}"]

    process = status.get("process")
    if process:
        lines.append(
            f"process     pid {process['pid']}, {process['role']}, "
            f"up {_duration(process['uptime_seconds'])}"
        )
    lines += _provider_lines(status.get("providers") or (process or {}).get("providers") or [])
    leader = status.get("leader")
    lines.append(
        f"leader      {leader['application_name'] or 'backend ' + str(leader['backend_pid'])}"
        f" since {_short(leader['since'])}"
        if leader
        else "leader      none (no keeper holds the leader lock)"
    )

    index = status.get("index")
    if index is None:
        lines.append("index       not started")
    else:
        lines.append(
            f"blocks      head {_num(index['head_block'])}, "
            f"indexed {_num(index['indexed_block'])}, "
            f"finalized {_num(index['finalized_block'])}"
        )
        backfill = "backfill done" if index["backfill_done"] else "backfill running"
        lines.append(
            f"lag         {_num(index['lag_blocks'])} blocks, {_num(index['lag_seconds'])} s "
            f"of chain time ({_num(index['wall_lag_seconds'])} s by the wall clock); {backfill}"
        )

    pending = status["pending"]
    usage = pending["usage"]
    lines.append(
        f"pending     settle {pending['streams_due']} streams due "
        f"({pending['streams_urgent']} urgent), refund {pending['escrows_refundable']} escrows, "
        f"usage {usage['pending']} pending, {usage['sending']} sending, "
        f"{usage['received']} received"
    )
    terms = pending.get("terms")
    if terms and (terms["closing"] or terms["price_changes"]):
        next_in = f", the next due in {terms['next_in']} s" if terms["next_in"] else ""
        lines.append(
            f"terms       {terms['closing']} streams closing, "
            f"{terms['price_changes']} price changes announced{next_in}"
        )
    intents = pending["intents"]
    in_flight = ", ".join(
        f"{kind} " + " ".join(f"{state} {n}" for state, n in states.items())
        for kind, states in sorted(intents.items())
    )
    lines.append(f"intents     {in_flight or 'none on their way'}")

    signers = status["signers"]
    if not signers:
        lines.append("signers     none recorded yet")
    for i, signer in enumerate(signers):
        low = "  LOW BALANCE" if signer["low_balance"] else ""
        lines.append(
            f"{'signers' if i == 0 else '':<12}{signer['address']}  "
            f"{_ether(signer['balance'])} ETH  next nonce {signer['next_nonce']}, "
            f"{signer['in_flight']} in flight{low}"
        )

    usage = _usage_line(status)
    if usage:
        lines.append(f"usage       {usage}")

    totals = status.get("last_24h")
    if totals:
        lines.append(
            f"last 24h    {totals['settlements']} settlements ({totals['settled_amount']}), "
            f"{totals['usage_reports']} usage reports ({totals['usage_charged']}), "
            f"{totals['refunds']} refunds ({totals['refunded_amount']}) in token base units"
        )

    reorg = status.get("last_reorg")
    lines.append(
        f"last reorg  {_short(reorg['at'])}, depth {reorg['depth']} "
        f"(blocks {reorg['ancestor_block']}+1..{reorg['old_head_block']} replaced)"
        if reorg
        else "last reorg  none"
    )
    error = status.get("last_error")
    lines.append(
        f"last error  {_short(error['at'])}, {error['kind']} intent {error['intent_id']} "
        f"({error['source'].replace('_', ' ')}): {_one_line(error['message'])}"
        if error
        else "last error  none"
    )
    unsure = status.get("unsure_sends")
    if unsure:
        latest = unsure["latest"]
        lines.append(
            f"unsure      {unsure['attempts']} send(s) the node answered neither yes nor no, "
            f"sent again after 1, 2, 4, ... blocks; latest {latest['kind']} intent "
            f"{latest['intent_id']} ({latest['outcome']}): {_one_line(latest['message'] or '')}"
        )
    faults = status.get("tx_faults")
    if faults:
        latest = faults["latest"]
        lines.append(
            f"backed off  {faults['intents']} intent(s) after an unexpected error; latest "
            f"{latest['kind']} intent {latest['intent_id']} ({latest['stage']}, "
            f"{latest['failures']} time(s), retry {_short(latest['retry_at'])}): "
            f"{_one_line(latest['message'])}"
        )
    if process and process.get("last_error"):
        lines.append(f"loop error  {_one_line(process['last_error'])}")
    return "\n".join(lines) + "\n"


def _usage_line(status: Mapping[str, Any]) -> str | None:
    """Usage billing: as the daemon decided it (from /status), else from the indexed roles."""
    billing = (status.get("process") or {}).get("usage_billing")
    if billing is not None:
        if billing["enabled"]:
            return "billing on"
        signers = ", ".join(billing["signers_without_role"])
        return f"billing OFF: {billing['reason']} ({signers})"
    lacking = status.get("signers_without_oracle_role")
    if lacking:
        return (
            f"billing OFF unless plan.usage = false: {', '.join(lacking)} hold no ORACLE_ROLE "
            "on StreamManager (as indexed); grant it to every signer"
        )
    return None


def _num(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _short(iso: str | None) -> str:
    """An ISO time to the second, for the screen."""
    if iso is None:
        return "?"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return iso


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _ether(wei: str) -> str:
    """Wei as ether, exactly (integer arithmetic, no float), trailing zeros trimmed."""
    whole, frac = divmod(int(wei), WEI_PER_ETHER)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".") if frac else str(whole)


def _one_line(text: str | None, limit: int = 160) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
