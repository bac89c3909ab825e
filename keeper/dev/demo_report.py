"""What the demo prints: the workload it set up, how to connect, its keeper, and the activity
line it prints every few seconds while the keeper runs. Amounts are integers of the token's
base units, shown as exact decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keeper.chain.deployment import Deployment
from keeper.dev.demo_keeper import KeeperFiles
from keeper.dev.demo_postgres import EmbeddedPostgres, psql_command, safe_dsn
from keeper.dev.demo_workload import (
    ENDPOINTS,
    LIST_PAYEE,
    MINT_PER_PAYER,
    PAYEES,
    PAYERS,
    STREAMING_SECONDS,
    Workload,
)


def format_units(amount: int, decimals: int, *, min_decimals: int = 0) -> str:
    """An integer amount of base units as a decimal string: (1_500_000, 6) -> "1.5", and with
    `min_decimals=2` -> "1.50" (never fewer digits than the amount needs).

    Integer arithmetic only: a float would round money.
    """
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0") if frac else ""
    digits = digits.ljust(min(min_decimals, decimals), "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def format_duration(seconds: int) -> str:
    """A duration in its two largest units: 90061 -> "1d 1h", 75 -> "1m 15s"."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def workload_text(work: Workload, deployment: Deployment) -> str:
    """A readable account of the workload (amounts as exact decimal strings)."""

    def amount(value: int) -> str:
        return f"{format_units(value, work.decimals)} {work.symbol}"

    def note(text: str) -> str:
        return f"  <- {text}" if text else ""

    lines = ["accounts (anvil dev accounts; keys are not printed)"]
    for name, index in {**PAYERS, **PAYEES}.items():
        lines.append(f"  {name:<8} {work.accounts[name]}  (account {index})")
    lines += [
        f"  each payer was minted {amount(MINT_PER_PAYER)}",
        "",
        f"price list of {LIST_PAYEE} (addEndpoint; a change takes effect after the "
        f"{format_duration(deployment.notice_period)} notice period)",
    ]
    prices = dict(ENDPOINTS)
    for name, endpoint in work.endpoints.items():
        lines.append(f"  endpoint {endpoint}  {name:<15} {amount(prices[name])}/unit")
    lines += [
        "",
        f"streams (StreamManager {deployment.stream_manager}), "
        f"then {format_duration(STREAMING_SECONDS)} of chain time passed",
    ]
    for s in work.streams:
        p = s.plan
        if p.price_list:
            usage = f", usage at {p.payee}'s price list"
        elif p.usage_price:
            usage = f", usage {amount(p.usage_price)}/unit (own price)"
        else:
            usage = ""
        lines.append(
            f"  #{s.id}  {p.payer} -> {p.payee}  {amount(p.rate)}/s, "
            f"deposit {amount(p.deposit)}{usage}"
        )
        runway = f", runs dry in {format_duration(s.balance // p.rate)}" if p.rate else ""
        lines.append(
            f"      settled {amount(s.settled)} (fee {amount(s.fee)}); "
            f"balance {amount(s.balance)}{runway}{note(p.note)}"
        )
    names = {endpoint: name for name, endpoint in work.endpoints.items()}
    lines += ["", f"usage reports (recordUsage by the oracle {deployment.oracle})"]
    by_endpoint: dict[str, int] = {}
    for s in work.streams:
        for r in s.usage:
            where = f"endpoint {names[r.endpoint]}" if r.endpoint else "own price"
            by_endpoint[where] = by_endpoint.get(where, 0) + r.charged
            lines.append(
                f"  stream #{s.id}  seq {r.seq}  {r.units} units  {where}: "
                f"x {amount(r.price)} = {amount(r.charged)} charged"
            )
    if by_endpoint:
        order = [f"endpoint {name}" for name in work.endpoints] + ["own price"]
        lines.append(
            "  charged per endpoint: "
            + ", ".join(f"{w} {amount(by_endpoint[w])}" for w in order if w in by_endpoint)
        )
    if work.replays_skipped:
        lines.append(
            f"  + {work.replays_skipped} replay of an applied seq, skipped (exactly once per seq)"
        )
    lines += [
        f"settlement: one settleStreams call for streams "
        f"{', '.join(f'#{s.id}' for s in work.streams)} in block {work.settle_block}",
        "",
        f"escrows (EscrowVault {deployment.escrow_vault})",
    ]
    for e in work.escrows:
        ep = e.plan
        if e.status == "open":
            left = format_duration(e.expires_at - work.head_timestamp)
            state = f"open, expires in {left} (chain time {e.expires_at})"
        else:
            state = f"{e.status} to {ep.payee}"
        lines.append(
            f"  #{e.id}  {ep.payer} -> {ep.payee}  {amount(ep.amount)}  {state}{note(ep.note)}"
        )
    return "\n".join(lines)


def connect_text(dsn: str, pg: EmbeddedPostgres | None, data_dir: Path) -> str:
    """How to connect to the demo's database."""
    lines = [
        "connect",
        f"  PostgreSQL      {safe_dsn(dsn, pg)}",
        f"  psql            {psql_command(dsn, pg)}",
        "  e.g.            SELECT chain_id, name, encode(address, 'hex') FROM deployments;",
        f"  data directory  {data_dir}",
    ]
    return "\n".join(lines)


def keeper_text(files: KeeperFiles, psql: str) -> str:
    """What the demo tells about its keeper before the activity lines start."""
    signers = ", ".join(f"{address} (account {index})" for index, address in files.signers)
    views = (
        "keeper.stream_balances",
        "keeper.usage",
        "keeper.price_list",
        "keeper.usage_by_endpoint_daily",
        "keeper.tx_pipeline",
        "keeper.settlement_totals",
        "keeper.escrows_expired",
    )
    lines = [
        "keeper",
        f"  configuration   {files.config}",
        f"  log             {files.log}  (JSON lines; tail -f it to follow the daemon)",
        f"  signers         {signers}",
        f"  health          {files.health_url}/status  {files.health_url}/metrics  "
        f"{files.health_url}/readyz",
        f"  views           {psql} -c 'SELECT * FROM keeper.indexer_status'",  # noqa: S608 - printed
        f"                  also {', '.join(views)}",
    ]
    return "\n".join(lines)


@dataclass
class Activity:
    """One activity line's figures (amounts in token base units)."""

    block: int
    settled_streams: int = 0
    settled_amount: int = 0
    usage_reports: int = 0
    usage_charged: int = 0
    refunded_escrows: int = 0
    refunded_amount: int = 0
    txs_confirmed: int = 0
    txs_failed: int = 0
    txs_in_flight: int = 0
    usage_pending: int = 0
    # (endpoint name, or "own price" for reports without one; amount charged)
    usage_by_endpoint: list[tuple[str, int]] = field(default_factory=list)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def activity_text(a: Activity, amount: Callable[[int], str]) -> str:
    """The line's text after the time: what was done, then what waits; a heartbeat if nothing."""
    done = []
    if a.settled_streams:
        done.append(f"settled {_count(a.settled_streams, 'stream')} ({amount(a.settled_amount)})")
    if a.usage_reports:
        split = "".join(f", {name} {amount(v)}" for name, v in a.usage_by_endpoint)
        done.append(
            f"recorded {_count(a.usage_reports, 'usage report')} ({amount(a.usage_charged)}{split})"
        )
    if a.refunded_escrows:
        done.append(
            f"refunded {_count(a.refunded_escrows, 'escrow')} ({amount(a.refunded_amount)})"
        )
    if a.txs_confirmed:
        done.append(f"txs {a.txs_confirmed} confirmed")
    if a.txs_failed:
        done.append(f"{_count(a.txs_failed, 'tx')} failed (see keeper.tx_pipeline)")
    waiting = []
    if a.usage_pending:
        waiting.append(_count(a.usage_pending, "usage row"))
    if a.txs_in_flight:
        waiting.append(f"{_count(a.txs_in_flight, 'tx')} in flight")
    if not done and not waiting:
        return f"block {a.block}, nothing due"
    parts = [f"block {a.block}", *done]
    if waiting:
        parts.append("pending: " + ", ".join(waiting))
    return "  ".join(parts)
