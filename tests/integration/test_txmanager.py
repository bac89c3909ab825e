"""The transaction manager against a real anvil (automine off where it matters) and Postgres;
the cases a node answers in its own words on Hardhat's node too (`on_both_nodes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from structlog.testing import capture_logs

from keeper import metrics
from keeper.chain.signers import Signer
from keeper.db.outbox import IntentRequest, Outbox, Planned
from keeper.dev.anvil import rpc
from keeper.tx.manager import TxManager
from keeper.tx.send_errors import SendOutcome, classify_send_error
from tests.support.tx import Env, on_both_nodes

pytestmark = pytest.mark.anyio


async def test_confirms_first_try(env: Env) -> None:
    intent = await env.plan("settle:1")
    report = await env.manager.tick()
    # Assigned, sent, and (anvil automines) its receipt found in the same pass.
    assert (report.assigned, report.mined) == (1, 1)
    assert await env.state(intent) == "mined"
    env.mine()
    report = await env.manager.tick()
    assert report.confirmed == 1 and await env.state(intent) == "confirmed"
    assert await env.attempts(intent) == 1


@on_both_nodes
async def test_confirms_only_after_a_bump(env: Env) -> None:
    env.automine(False)
    intent = await env.plan("settle:bump")
    await env.manager.tick()
    async with env.pool.acquire() as conn:
        first_fee = await conn.fetchval("SELECT max_fee FROM attempts WHERE intent_id = $1", intent)
    # The base fee jumps to twice the first attempt's fee cap: it sits in the mempool while
    # blocks pass without it.
    high = 2 * int(first_fee)
    for _ in range(2):
        env.node.set_next_base_fee(high)
        env.mine()
    report = await env.manager.tick()
    assert report.bumped == 1
    assert await env.attempts(intent) == 2
    env.mine()
    await env.manager.tick()
    assert await env.state(intent) == "mined"
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT max(max_fee) AS hi, min(max_fee) AS lo, count(DISTINCT nonce) AS nonces "
            "FROM attempts WHERE intent_id = $1",
            intent,
        )
    assert row is not None and row["nonces"] == 1
    assert row["hi"] * 1000 >= row["lo"] * 1125
    assert row["hi"] >= 2 * high  # repriced from the head's base fee, not only +12.5 %


async def test_simulation_revert_fails_the_intent_with_a_reason(env: Env) -> None:
    req = IntentRequest(
        kind="call",
        key="bad",
        target=env.deployment.stream_manager,
        calldata=bytes.fromhex("deadbeef"),
    )
    async with env.pool.acquire() as conn:
        planned = await Outbox(env.deployment.chain_id).plan(conn, req)
    assert isinstance(planned, Planned)
    report = await env.manager.tick()
    assert report.failed == 1
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, reason FROM intents WHERE id = $1", planned.intent_id
        )
    assert row is not None and row["state"] == "failed" and "revert" in row["reason"]


@on_both_nodes
async def test_receipt_reorged_out_goes_back_and_is_mined_again(env: Env) -> None:
    intent = await env.plan("settle:reorg")
    fork = env.node.fork_point()
    await env.manager.tick()
    await env.manager.tick()
    assert await env.state(intent) == "mined"
    # Replace the block that holds it with one that does not. On Hardhat (evm_revert) the
    # transaction leaves the mempool too, and `finalized` is the head all along.
    assert env.node.reorg_to(fork) == 1
    report = await env.manager.tick()
    assert report.unmined == 1
    assert await env.state(intent) in ("assigned", "mined")
    for _ in range(4):
        env.mine()
        await env.manager.tick()
    assert await env.state(intent) == "confirmed"


async def test_signers_share_the_load_without_reusing_a_nonce(env: Env) -> None:
    ids = [await env.plan(f"settle:{i}", [i + 1]) for i in range(20)]
    for _ in range(6):
        await env.manager.tick()
        env.mine()
    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT signer, nonce, state FROM intents WHERE id = ANY($1::bigint[])", ids
        )
    by_signer: dict[bytes, list[int]] = {}
    for row in rows:
        by_signer.setdefault(bytes(row["signer"]), []).append(row["nonce"])
        assert row["state"] in ("confirmed", "final")
    assert len(by_signer) == 2
    for nonces in by_signer.values():
        assert sorted(nonces) == list(range(len(nonces)))  # no gap, no reuse


async def test_a_restart_sends_the_stored_bytes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    intent = await env.plan("settle:crash")

    async def crash_before_broadcast(*args: object) -> None:
        raise SystemExit("killed between storing and broadcasting")

    monkeypatch.setattr(env.manager.sender, "broadcast", crash_before_broadcast)
    with pytest.raises(SystemExit):
        await env.manager.tick()
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, tx_hash FROM attempts WHERE intent_id = $1", intent
        )
    assert row is not None and row["state"] == "signed"
    tx_hash = bytes(row["tx_hash"])
    assert (
        env.w3.eth.get_transaction_count(to_checksum_address(env.signers[0].address)) == 0
    )  # nothing sent
    fresh = TxManager(
        env.manager.client,
        env.pool,
        chain_id=env.deployment.chain_id,
        signers=env.signers,
        settings=env.manager.settings,
    )
    report = await fresh.tick()
    assert report.sent == 1 and report.assigned == 0
    await fresh.tick()
    assert await env.state(intent) == "mined"
    # What was mined is exactly the stored attempt: same hash, no second signature.
    assert env.w3.eth.get_transaction_receipt(HexBytes(tx_hash))["status"] == 1
    assert await env.attempts(intent) == 1


def _no_key_material(logs: Sequence[Mapping[str, Any]], signers: list[Signer]) -> None:
    text = repr(logs).lower()
    for s in signers:
        assert s.key.reveal_hex().lower().removeprefix("0x") not in text


async def test_a_low_balance_signer_gets_no_work_until_funded(env: Env) -> None:
    low, other = env.signers
    manager = env.manager_with(min_signer_balance_wei=10**18)
    env.set_balance(low, 10**17)
    ids = [await env.plan(f"settle:low:{i}", [i + 1]) for i in range(4)]
    with capture_logs() as logs:
        await manager.tick()
        await manager.tick()
    assert {await env.signer_of(i) for i in ids} == {other.address_bytes}
    warnings = [entry for entry in logs if entry["event"] == "signer_balance_low"]
    assert len(warnings) == 1  # once per transition, not once per pass
    assert warnings[0]["signer"] == low.address and warnings[0]["balance"] == 10**17
    sample = metrics.REGISTRY.get_sample_value
    assert sample("keeper_signer_low_balance", {"signer": low.address}) == 1
    assert sample("keeper_signer_low_balance", {"signer": other.address}) == 0
    assert sample("keeper_signer_balance_wei", {"signer": low.address}) == 10**17

    env.set_balance(low, 10**20)
    more = [await env.plan(f"settle:funded:{i}", [i + 5]) for i in range(4)]
    with capture_logs() as later:
        await manager.tick()
    assert low.address_bytes in {await env.signer_of(i) for i in more}
    assert [e["event"] for e in later].count("signer_balance_ok") == 1
    assert sample("keeper_signer_low_balance", {"signer": low.address}) == 0
    _no_key_material(logs + later, env.signers)


async def test_above_the_hourly_budget_only_urgent_intents_go_out(env: Env) -> None:
    manager = env.manager_with(budget_per_hour_wei=1)
    normal = await env.plan("settle:normal", [1])
    urgent = await env.plan("settle:urgent", [2], urgent=True)
    with capture_logs() as logs:
        report = await manager.tick()
        await manager.tick()
    assert report.assigned == 1 and report.held_by_budget == 1
    assert await env.state(urgent) == "mined"
    assert await env.state(normal) == "planned"
    assert [e["event"] for e in logs].count("budget_exhausted") == 1
    spent = metrics.REGISTRY.get_sample_value("keeper_spent_last_hour_wei")
    assert spent is not None and spent > 0  # the urgent one's gas, mined this hour

    manager.settings = manager.settings.model_copy(update={"budget_per_hour_wei": 10**30})
    with capture_logs() as later:
        report = await manager.tick()
    assert report.assigned == 1 and await env.state(normal) == "mined"
    assert [e["event"] for e in later].count("budget_available") == 1


@on_both_nodes
async def test_insufficient_funds_then_funded(env: Env) -> None:
    poor = env.signers[0]
    manager = env.manager_with(signers=[poor])
    env.set_balance(poor, 0)
    intent = await env.plan("settle:poor")
    report = await manager.tick()
    assert (report.assigned, report.refused) == (1, 1)
    with capture_logs() as logs:
        report = await manager.tick()  # sent again from the stored bytes, refused again
    assert (report.sent, report.refused) == (0, 1)
    # The same refusal again is counted, not logged again as a warning.
    assert [e["log_level"] for e in logs if e["event"] == "send_refused"] == ["debug"]
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, last_error, tx_hash FROM attempts WHERE intent_id = $1", intent
        )
    assert row is not None and row["state"] == "signed"
    # Each node in its own words (anvil: "Insufficient funds for gas * price + value", EDR:
    # "Sender doesn't have enough funds to send tx. ..."), one outcome.
    assert classify_send_error(row["last_error"]) is SendOutcome.INSUFFICIENT_FUNDS
    assert await env.state(intent) == "assigned"

    env.set_balance(poor, 10**20)
    report = await manager.tick()
    assert report.sent == 1
    assert await env.state(intent) == "mined"
    assert await env.attempts(intent) == 1  # the same signed bytes, never re-signed
    receipt = env.w3.eth.get_transaction_receipt(HexBytes(bytes(row["tx_hash"])))
    assert receipt["status"] == 1


async def test_a_stuck_lowest_nonce_is_purged_by_a_self_send(env: Env) -> None:
    manager = env.manager_with(bump_after_blocks=1000, purge_after_blocks=3)
    env.automine(False)
    stuck = await env.plan("settle:stuck")
    await manager.tick()
    async with env.pool.acquire() as conn:
        first = await conn.fetchrow(
            "SELECT a.tx_hash, i.signer, i.nonce FROM attempts a JOIN intents i "
            "ON i.id = a.intent_id WHERE a.intent_id = $1",
            stuck,
        )
    assert first is not None
    signer, nonce = bytes(first["signer"]), first["nonce"]
    # The network ignores it: out of the mempool, and blocks go by.
    rpc(env.node.url, "anvil_dropTransaction", ["0x" + bytes(first["tx_hash"]).hex()])
    env.mine(2)
    report = await manager.tick()
    assert report.purged == 0  # not yet stuck long enough
    env.mine(1)
    with capture_logs() as logs:
        report = await manager.tick()
    assert report.purged == 1
    env.mine()
    await manager.tick()
    async with env.pool.acquire() as conn:
        original = await conn.fetchrow("SELECT state, reason FROM intents WHERE id = $1", stuck)
        purge = await conn.fetchrow(
            "SELECT id, state, signer, nonce, target, calldata, value, tx_hash FROM intents "
            "WHERE kind = 'purge'"
        )
        old_attempts = await conn.fetch("SELECT state FROM attempts WHERE intent_id = $1", stuck)
    assert original is not None and original["state"] == "replan"
    assert "purged" in original["reason"]
    assert {a["state"] for a in old_attempts} == {"superseded"}
    assert purge is not None and purge["state"] == "mined"
    assert (bytes(purge["signer"]), purge["nonce"]) == (signer, nonce)
    assert bytes(purge["target"]) == signer and bytes(purge["calldata"]) == b""
    assert purge["value"] == 0
    tx = env.w3.eth.get_transaction(HexBytes(bytes(purge["tx_hash"])))
    assert tx["to"] == to_checksum_address(signer) and tx["value"] == 0 and tx["nonce"] == nonce
    assert env.w3.eth.get_transaction_count(to_checksum_address(signer)) == nonce + 1
    assert [e["event"] for e in logs].count("nonce_purged") == 1
    _no_key_material(logs, env.signers)


async def test_the_pipeline_and_signer_views_show_the_work(env: Env) -> None:
    first = await env.plan("settle:view:1", [1])
    await env.plan("settle:view:2", [2])
    await env.manager.tick()
    env.mine()
    await env.manager.tick()
    async with env.pool.acquire() as conn:
        pipeline = await conn.fetch("SELECT * FROM keeper.tx_pipeline ORDER BY intent_id")
        signers = await conn.fetch("SELECT * FROM keeper.signers ORDER BY address")
    assert [r["state"] for r in pipeline] == ["confirmed", "confirmed"]
    row = pipeline[0]
    assert row["intent_id"] == first and row["items"] == 1 and row["attempts"] == 1
    assert row["cost_wei"] == row["gas_used"] * row["effective_gas_price"] > 0
    assert row["tx_hash"].startswith("0x") and len(row["tx_hash"]) == 66
    # Two intents, least-loaded: one on each signer, each lane at nonce 1 next.
    assert sorted(r["address"] for r in signers) == sorted(
        "0x" + s.address_bytes.hex() for s in env.signers
    )
    assert [(r["next_nonce"], r["in_flight"], r["confirmed"]) for r in signers] == [(1, 0, 1)] * 2
    for r in signers:
        balance = env.w3.eth.get_balance(to_checksum_address(r["address"]))
        assert 0 < balance <= r["balance"]  # read at the start of the last pass, before gas
        assert r["low_balance"] is False
