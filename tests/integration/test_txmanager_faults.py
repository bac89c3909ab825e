"""The transaction manager when things go wrong: reverting batches, reverted receipts, effects
that did not happen, attempts mined out of order, refused replacements, a key used elsewhere,
an RPC down while sending or while reading receipts. Real anvil (automine off where it
matters), real Postgres; the cases a node answers in its own words on Hardhat's node too
(`on_both_nodes`)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from structlog.testing import capture_logs

from keeper import metrics
from keeper.chain.rpc import ChainClient, RpcError
from keeper.db.outbox import IntentRequest, Outbox, Planned
from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract
from keeper.plan.batches import encode_batch, gas_floor
from keeper.service.status import collect_status, render_status
from keeper.tx.manager import TxManager
from keeper.tx.receipts import l1_fee, receipt_cost
from keeper.tx.send_errors import SendOutcome, classify_send_error
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.rpc_proxy import RpcProxy
from tests.support.tx import Env, install_probe, item_outcomes, on_both_nodes, tx_settings

pytestmark = pytest.mark.anyio


async def plan_batch(env: Env, key: str, target: str, items: list[Any], **kw: Any) -> int:
    """Plan a settle batch of `items` at `target` (calldata: `kw['calldata']` or the items')."""
    calldata = kw.pop("calldata", None) or encode_batch("settle", items)
    req = IntentRequest(kind="settle", key=key, target=target, calldata=calldata, items=items)
    async with env.pool.acquire() as conn:
        planned = await Outbox(env.deployment.chain_id).plan(conn, req)
    assert isinstance(planned, Planned)
    return planned.intent_id


async def intent_row(env: Env, intent: int) -> Any:
    async with env.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM intents WHERE id = $1", intent)


async def attempt_rows(env: Env, intent: int) -> list[Any]:
    async with env.pool.acquire() as conn:
        return list(
            await conn.fetch("SELECT * FROM attempts WHERE intent_id = $1 ORDER BY id", intent)
        )


async def items_of(env: Env, intent: int) -> dict[str, tuple[str, str | None]]:
    rows = await item_outcomes(env.pool, intent)
    return {r["item"]: (r["outcome"], r["detail"]) for r in rows}


def nonce_of(env: Env, index: int = 0) -> int:
    return env.w3.eth.get_transaction_count(to_checksum_address(env.signers[index].address))


def pause_stream_manager(env: Env, **fees: int) -> None:
    """The admin (anvil account 0, the deployer) pauses StreamManager."""
    c = contract(env.w3, "StreamManager", env.deployment.stream_manager)
    params: Any = {"from": env.deployment.deployer, **fees}
    c.functions.pause().transact(params)


# ---------------------------------------------------------------------- reverts


async def test_a_reverting_batch_is_split_and_the_rest_goes_out(env: Env) -> None:
    probe = install_probe(env.node.url)
    items = list(range(1, 21))  # 7 and 14 make the probe revert
    intent = await plan_batch(env, "settle:probe", probe, items)
    with capture_logs() as logs:
        report = await env.manager.tick()
    assert (report.split, report.assigned, report.mined) == (1, 1, 1)
    row = await intent_row(env, intent)
    good = [i for i in items if i % 7]
    assert row["state"] == "mined" and row["receipt_status"] == 1
    assert bytes(row["calldata"]) == encode_batch("settle", good)
    assert "2 of 20 items reverted" in row["reason"]
    assert await items_of(env, intent) == {
        "7": ("reverted", "UnknownStream(7)"),
        "14": ("reverted", "UnknownStream(14)"),
    }
    # What went on chain is exactly the good items, in one transaction.
    receipt = env.w3.eth.get_transaction_receipt(HexBytes(bytes(row["tx_hash"])))
    probed = [int.from_bytes(bytes(log["data"]), "big") for log in receipt["logs"]]
    assert probed == good
    [attempt] = await attempt_rows(env, intent)
    # The probe is cheap, so the gas limit is the floor for the 18 items actually sent.
    assert attempt["gas_limit"] == gas_floor("settle", 18) == 60_000 + 18 * 40_000
    split = [e for e in logs if e["event"] == "batch_split"]
    assert (
        split
        and split[0]["reverted"] == 2
        and split[0]["reasons"]
        == [
            "UnknownStream(14)",
            "UnknownStream(7)",
        ]
    )


async def test_a_batch_of_only_reverting_items_fails_with_each_reason(env: Env) -> None:
    probe = install_probe(env.node.url)
    intent = await plan_batch(env, "settle:allbad", probe, [7, 21, 35])
    report = await env.manager.tick()
    assert report.failed == 1 and report.assigned == 0
    row = await intent_row(env, intent)
    assert row["state"] == "failed" and row["reason"] == "every item reverted in simulation"
    # 7, 21 and 35 revert with different data (the id is in the error), so each is found.
    assert await items_of(env, intent) == {
        str(i): ("reverted", f"UnknownStream({i})") for i in (7, 21, 35)
    }
    assert nonce_of(env) == 0 and nonce_of(env, 1) == 0  # nothing was signed or sent


async def test_a_batch_reverting_whatever_its_items_fails_with_the_decoded_reason(
    env: Env,
) -> None:
    pause_stream_manager(env)
    intent = await env.plan("settle:paused", [1, 2, 3, 4])
    report = await env.manager.tick()
    assert report.failed == 1 and report.split == 0
    row = await intent_row(env, intent)
    assert row["state"] == "failed"
    assert row["reason"] == "simulation reverted: EnforcedPause()"
    assert await items_of(env, intent) == {}  # no item is to blame


async def test_a_reverted_receipt_records_the_decoded_reason(env: Env) -> None:
    env.automine(False)
    intent = await env.plan("settle:frontrun", [1])
    report = await env.manager.tick()
    assert report.assigned == 1  # simulated fine, sent, waiting in the mempool
    # The admin pauses the contract in the same block, ahead of the keeper (higher tip).
    pause_stream_manager(env, maxPriorityFeePerGas=100 * 10**9, maxFeePerGas=300 * 10**9)
    env.mine(2)  # confirmations = 2
    with capture_logs() as logs:
        report = await env.manager.tick()
    assert report.failed == 1
    row = await intent_row(env, intent)
    assert row["state"] == "failed" and row["receipt_status"] == 0
    assert row["reason"] == "reverted on chain: EnforcedPause()"
    assert [e["event"] for e in logs].count("intent_reverted") == 1


async def test_confirmed_batches_are_checked_item_by_item(env: Env, database_url: str) -> None:
    w3, d = env.w3, env.deployment
    admin = d.deployer
    token = contract(w3, "TestToken", d.token)
    manager = contract(w3, "StreamManager", d.stream_manager)
    token.functions.mint(admin, 10**12).transact({"from": admin})
    token.functions.approve(d.stream_manager, 10**12).transact({"from": admin})
    payee = "0x" + "5a" * 20
    manager.functions.openStream(w3.to_checksum_address(payee), 1000, 10**9).transact(
        {"from": admin}
    )
    rpc(env.node.url, "evm_increaseTime", [60])
    # The items claim streams 1, 2 and 3; the calldata settles only 1 (open, due) and 2
    # (unknown: skipped by the contract). Stream 3's effect can never appear.
    intent = await plan_batch(
        env, "settle:effects", d.stream_manager, [1, 2, 3], calldata=encode_batch("settle", [1, 2])
    )
    await env.manager.tick()
    env.mine()
    report = await env.manager.tick()
    assert report.confirmed == 1
    assert report.effects_checked == 0  # the indexer has not seen the block yet

    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)
    sample = metrics.REGISTRY.get_sample_value
    before = sample("keeper_tx_items_total", {"kind": "settle", "outcome": "no_effect"}) or 0
    with capture_logs() as logs:
        report = await env.manager.tick()
    assert (report.effects_checked, report.no_effect) == (1, 1)
    assert await items_of(env, intent) == {
        "1": ("effect", None),
        "2": ("skipped", "unknown stream"),
        "3": ("no_effect", "no event of this item in the transaction"),
    }
    warned = [e for e in logs if e["event"] == "batch_items_without_effect"]
    assert len(warned) == 1 and warned[0]["items"] == ["3"]
    assert sample("keeper_tx_items_total", {"kind": "settle", "outcome": "no_effect"}) == (
        before + 1
    )
    report = await env.manager.tick()
    assert report.effects_checked == 0  # checked once


# ---------------------------------------------------------------------- mempool races


async def test_an_early_attempt_mined_after_a_bump_confirms_the_intent_once(env: Env) -> None:
    env.automine(False)
    intent = await env.plan("settle:early")
    await env.manager.tick()
    first = (await attempt_rows(env, intent))[0]
    rpc(env.node.url, "anvil_dropTransaction", ["0x" + bytes(first["tx_hash"]).hex()])
    env.mine(2)
    report = await env.manager.tick()
    assert report.bumped == 1
    bumped = (await attempt_rows(env, intent))[1]
    # Another node's mempool still had the cheap first attempt: it is the one mined.
    rpc(env.node.url, "anvil_dropTransaction", ["0x" + bytes(bumped["tx_hash"]).hex()])
    rpc(env.node.url, "eth_sendRawTransaction", ["0x" + bytes(first["raw"]).hex()])
    env.mine()
    report = await env.manager.tick()
    assert report.mined == 1
    env.mine()
    await env.manager.tick()
    row = await intent_row(env, intent)
    assert row["state"] == "confirmed" and bytes(row["tx_hash"]) == bytes(first["tx_hash"])
    states = {bytes(a["tx_hash"]): a["state"] for a in await attempt_rows(env, intent)}
    assert states == {bytes(first["tx_hash"]): "mined", bytes(bumped["tx_hash"]): "superseded"}
    assert nonce_of(env) + nonce_of(env, 1) == 1  # one transaction in all


async def test_a_replacement_refused_as_underpriced_is_repriced(env: Env) -> None:
    env.automine(False)
    patient = env.manager_with(bump_after_blocks=1000)
    intent = await env.plan("settle:underpriced")
    await patient.tick()
    first = (await attempt_rows(env, intent))[0]
    signer = next(s for s in env.signers if s.address_bytes == bytes(first["signer"]))
    # The same key, used elsewhere, puts a pricier transaction at that nonce in the pool.
    rival = Account.sign_transaction(
        {
            "chainId": env.deployment.chain_id,
            "nonce": first["nonce"],
            "to": signer.address,
            "value": 0,
            "gas": 21_000,
            "maxFeePerGas": int(first["max_fee"]) * 6 // 5,
            "maxPriorityFeePerGas": int(first["priority_fee"]) * 6 // 5,
            "type": 2,
        },
        signer.key.reveal_hex(),
    )
    rpc(env.node.url, "eth_sendRawTransaction", ["0x" + bytes(rival.raw_transaction).hex()])
    eager = env.manager_with(bump_after_blocks=0)
    for _ in range(6):
        await eager.tick()
        content: Any = rpc(env.node.url, "txpool_content", [])
        pool = content["pending"].get(signer.address, {})
        if any(tx["hash"] != "0x" + bytes(rival.hash).hex() for tx in pool.values()):
            break
    attempts = await attempt_rows(env, intent)
    refused = [a for a in attempts if a["last_error"] and "underpriced" in a["last_error"]]
    assert refused, "the first bump (+12.5 %) is below the rival's +20 % and must be refused"
    assert all(a["state"] == "broadcast" for a in refused)  # repriced, not resent as is
    fees = [int(a["max_fee"]) for a in attempts]
    assert fees == sorted(fees) and len(set(fees)) == len(fees)  # each one higher
    env.mine()
    await eager.tick()
    row = await intent_row(env, intent)
    assert row["state"] == "mined"
    assert bytes(row["tx_hash"]) in {bytes(a["tx_hash"]) for a in attempts}
    assert bytes(row["tx_hash"]) != bytes(rival.hash)


@on_both_nodes
async def test_a_nonce_used_elsewhere_replans_the_intent_and_the_lane_moves_on(
    env: Env,
) -> None:
    env.automine(False)
    manager = env.manager_with(bump_after_blocks=1, replan_after_checks=2)
    intent = await env.plan("settle:foreign")
    await manager.tick()
    first = (await attempt_rows(env, intent))[0]
    signer = next(s for s in env.signers if s.address_bytes == bytes(first["signer"]))
    foreign = Account.sign_transaction(
        {
            "chainId": env.deployment.chain_id,
            "nonce": first["nonce"],
            "to": signer.address,
            "value": 0,
            "gas": 21_000,
            "maxFeePerGas": int(first["max_fee"]) * 2,
            "maxPriorityFeePerGas": int(first["priority_fee"]) * 2,
            "type": 2,
        },
        signer.key.reveal_hex(),
    )
    rpc(env.node.url, "eth_sendRawTransaction", ["0x" + bytes(foreign.raw_transaction).hex()])
    env.mine()
    report = await manager.tick()
    assert report.replanned == 0  # seen once: the receipts get another chance first
    report = await manager.tick()
    assert report.replanned == 1
    row = await intent_row(env, intent)
    assert row["state"] == "replan" and "another transaction" in row["reason"]
    assert len(await attempt_rows(env, intent)) == 1  # never re-signed at the used nonce
    # The key's next intent takes the chain's next nonce: no reuse, no gap.
    later = await env.plan("settle:after-foreign", [2])
    solo = env.manager_with(signers=[signer])
    await solo.tick()
    later_row = await intent_row(env, later)
    assert later_row["nonce"] == first["nonce"] + 1


# ---------------------------------------------------------------------- RPC faults


async def test_rpc_down_during_send_sends_the_same_bytes_again(env: Env) -> None:
    with RpcProxy(env.node.url) as proxy:
        client = ChainClient(proxy.url, attempts=2, max_backoff=0.05)
        manager = TxManager(
            client,
            env.pool,
            chain_id=env.deployment.chain_id,
            signers=env.signers,
            settings=env.manager.settings,
        )
        try:
            intent = await env.plan("settle:rpc-down")
            proxy.fail_next(None, 502, methods=["eth_sendRawTransaction"])
            report = await manager.tick()
            assert report.assigned == 1 and report.mined == 0
            assert nonce_of(env) + nonce_of(env, 1) == 0  # it never reached the node
            proxy.clear_faults()
            report = await manager.tick()
            assert report.sent == 1 and report.mined == 1
            env.mine()
            await manager.tick()
        finally:
            await client.close()
    row = await intent_row(env, intent)
    assert row["state"] == "confirmed"
    [attempt] = await attempt_rows(env, intent)  # the same signed bytes, twice
    assert attempt["broadcasts"] == 2 and bytes(attempt["tx_hash"]) == bytes(row["tx_hash"])


async def test_receipt_rpc_failing_then_recovering(env: Env) -> None:
    with RpcProxy(env.node.url) as proxy:
        client = ChainClient(proxy.url, attempts=2, max_backoff=0.05)
        manager = TxManager(
            client,
            env.pool,
            chain_id=env.deployment.chain_id,
            signers=env.signers,
            settings=env.manager.settings,
        )
        try:
            intent = await env.plan("settle:receipts-down")
            proxy.fail_next(None, 503, methods=["eth_getTransactionReceipt"])
            with pytest.raises(RpcError):
                await manager.tick()
            assert (await intent_row(env, intent))["state"] == "assigned"
            with pytest.raises(RpcError):
                await manager.tick()  # still down: nothing changes, nothing is re-sent
            assert len(await attempt_rows(env, intent)) == 1
            proxy.clear_faults()
            report = await manager.tick()
            assert report.mined == 1
            env.mine()
            report = await manager.tick()
            assert report.confirmed == 1
        finally:
            await client.close()
    assert nonce_of(env) + nonce_of(env, 1) == 1
    assert len(await attempt_rows(env, intent)) == 1


async def test_dropped_at_the_fee_cap_is_rebroadcast_unchanged(env: Env) -> None:
    cap = 5 * 10**9
    manager = env.manager_with(max_fee_wei=cap, max_priority_fee_wei=cap, tip_wei=cap)
    env.automine(False)
    intent = await env.plan("settle:capped")
    await manager.tick()
    [first] = await attempt_rows(env, intent)
    assert int(first["max_fee"]) == cap  # already at the cap: no bump possible
    rpc(env.node.url, "anvil_dropTransaction", ["0x" + bytes(first["tx_hash"]).hex()])
    env.mine(2)
    report = await manager.tick()
    assert (report.rebroadcast, report.bumped) == (1, 0)
    env.mine()
    await manager.tick()
    row = await intent_row(env, intent)
    assert row["state"] == "mined" and bytes(row["tx_hash"]) == bytes(first["tx_hash"])
    assert len(await attempt_rows(env, intent)) == 1


# --------------------------------------------------------------------------- max_batch_gas


async def _estimate(env: Env, ids: list[int]) -> int:
    call = {
        "from": env.signers[0].address,
        "to": env.deployment.stream_manager,
        "data": "0x" + env.settle_call(ids).hex(),
    }
    return int(str(await env.manager.client.request("eth_estimateGas", [call])), 16)


async def test_a_batch_never_goes_out_with_more_gas_than_max_batch_gas(env: Env) -> None:
    """The floor of 18 items (780,000) is above the cap: the limit is the cap, never more."""
    ids = list(range(1, 19))
    cap = 200_000
    assert gas_floor("settle", len(ids)) > cap > await _estimate(env, ids)
    manager = env.manager_with(max_batch_gas=cap)
    intent = await env.plan("capped", ids)
    await manager.tick()
    [attempt] = await attempt_rows(env, intent)
    assert attempt["gas_limit"] == cap


async def test_a_batch_estimated_above_max_batch_gas_is_halved(env: Env) -> None:
    """Estimated above the cap, a planned batch keeps its first half (re-estimated) and the
    rest is left to be planned again; a single item above the cap fails with the reason."""
    ids = list(range(1, 201))
    whole, half = await _estimate(env, ids), await _estimate(env, ids[:100])
    assert half < whole
    manager = env.manager_with(max_batch_gas=(whole + half) // 2)
    intent = await env.plan("halved", ids)
    with capture_logs() as logs:
        await manager.tick()
    row = await intent_row(env, intent)
    async with env.pool.acquire() as conn:
        kept = await conn.fetch(
            "SELECT entity FROM batch_items WHERE intent_id = $1 ORDER BY position", intent
        )
    assert [int(r["entity"]) for r in kept] == ids[:100]  # the rest left to be planned again
    assert "100 of 200 items kept" in row["reason"]
    [attempt] = await attempt_rows(env, intent)
    assert half <= attempt["gas_limit"] <= (whole + half) // 2
    assert [e["kept"] for e in logs if e["event"] == "batch_halved"] == [100]

    tiny = env.manager_with(max_batch_gas=21_000)
    lone = await env.plan("too-big", [7, 8])
    await tiny.tick()
    row = await intent_row(env, lone)
    assert row["state"] == "failed"
    assert "above plan.max_batch_gas 21,000" in row["reason"]


# --------------------------------------------------------------------------- answers


async def _proxied(env: Env, proxy: RpcProxy, **settings: Any) -> TxManager:
    client = ChainClient(proxy.url, attempts=2, max_backoff=0.05)
    return TxManager(
        client,
        env.pool,
        chain_id=env.deployment.chain_id,
        signers=env.signers[:1],
        settings=tx_settings(env.manager.settings, **settings),
    )


async def test_a_gas_cap_refusal_purges_the_nonce_and_halves_the_next_batch(env: Env) -> None:
    """EDR's (and EIP-7825 nodes') refusal of a gas limit above their cap: the same bytes can
    never go, so the nonce goes to a purge at once, the batch is planned again, and from then
    on batches are halved under half the refused limit. Never a resend of the same bytes."""
    with RpcProxy(env.node.url) as proxy:
        manager = await _proxied(env, proxy)
        try:
            intent = await env.plan("settle:too-much-gas", list(range(1, 41)))
            proxy.error_next(
                1,
                -32000,
                "Transaction gas limit is 1660000 and exceeds transaction gas cap of 1000000",
                methods=["eth_sendRawTransaction"],
            )
            with capture_logs() as logs:
                report = await manager.tick()
            assert report.purged == 1
            row = await intent_row(env, intent)
            assert row["state"] == "replan"
            assert "gas_limit_too_high" in row["reason"]
            [attempt] = await attempt_rows(env, intent)
            assert attempt["broadcasts"] == 0  # refused: never counted as sent, never resent
            assert manager.sender.batch_gas_cap == gas_floor("settle", 40) // 2
            assert [e["cap"] for e in logs if e["event"] == "batch_gas_cap_lowered"] == [
                gas_floor("settle", 40) // 2
            ]
            # The nonce is the purge's, mined; the lane goes on.
            env.mine()
            await manager.tick()
            async with env.pool.acquire() as conn:
                purge = await conn.fetchrow("SELECT state, nonce FROM intents WHERE kind = 'purge'")
            assert purge is not None and purge["nonce"] == row["nonce"]
            assert purge["state"] in ("mined", "confirmed")
        finally:
            await manager.client.close()


@on_both_nodes
@pytest.mark.parametrize("anvil_args", [("--enable-tx-gas-limit",)], ids=["eip7825"])
async def test_a_real_gas_cap_refusal_sends_the_next_batch_under_half_the_limit(
    env: Env,
) -> None:
    """The same as above with the node's own refusal of a gas limit above EIP-7825's cap of
    2**24 (anvil with --enable-tx-gas-limit: "intrinsic gas too high -- tx.gas_limit >
    env.cfg.tx_gas_limit_cap"; EDR: "Transaction gas limit is .. and exceeds transaction gas
    cap of 16777216"): with no max_batch_gas configured, the next batch goes out and is mined
    under half the refused limit."""
    items = list(range(1, 421))
    floor = gas_floor("settle", len(items))
    assert floor > 2**24
    manager = env.manager_with(signers=env.signers[:1])
    assert manager.sender.batch_gas_cap is None
    intent = await env.plan("settle:above-the-cap", items)
    report = await manager.tick()
    assert report.purged == 1
    row = await intent_row(env, intent)
    assert row["state"] == "replan" and "gas_limit_too_high" in row["reason"]
    [attempt] = await attempt_rows(env, intent)
    assert attempt["gas_limit"] == floor and attempt["broadcasts"] == 0
    assert classify_send_error(attempt["last_error"]) is SendOutcome.GAS_LIMIT_TOO_HIGH
    assert manager.sender.batch_gas_cap == floor // 2

    later = await env.plan("settle:under-the-cap", [i + len(items) for i in items])
    await manager.tick()
    row = await intent_row(env, later)
    assert row["state"] == "mined" and row["nonce"] == 1  # after the purge's nonce 0
    [attempt] = await attempt_rows(env, later)
    assert attempt["gas_limit"] == floor // 2
    receipt = env.w3.eth.get_transaction_receipt(HexBytes(bytes(row["tx_hash"])))
    assert receipt["status"] == 1


async def test_an_unknown_answer_is_sent_again_with_backoff_and_logged_once(env: Env) -> None:
    """An answer the table does not know is not resent every pass: after 1, 2, 4, ... blocks,
    and logged once (then counted)."""
    env.automine(False)
    with RpcProxy(env.node.url) as proxy:
        manager = await _proxied(env, proxy)
        try:
            intent = await env.plan("settle:unknown-answer")
            proxy.error_next(
                None, -32000, "the node is thinking about it", methods=["eth_sendRawTransaction"]
            )
            sends: list[int] = []
            with capture_logs() as logs:
                for _ in range(8):  # 8 blocks, 3 passes each
                    for _ in range(3):
                        await manager.tick()
                    sends.append(proxy.calls["eth_sendRawTransaction"])
                    env.mine()
            # First send, then again after 1, 2 and 4 blocks: 4 sends over 24 passes.
            assert sends[-1] == 4, sends
            warned = [
                e for e in logs if e["event"] == "send_answer" and e["log_level"] == "warning"
            ]
            assert len(warned) == 1
            # Visible while it lasts: a gauge, and keeper status and /status (one object).
            assert metrics.REGISTRY.get_sample_value("keeper_tx_unsure_attempts") == 1
            async with env.pool.acquire() as conn:
                status = await collect_status(conn, env.deployment.chain_id)
            assert status["unsure_sends"]["attempts"] == 1
            assert status["unsure_sends"]["latest"]["outcome"] == "unknown"
            assert "the node is thinking about it" in status["unsure_sends"]["latest"]["message"]
            assert "unsure      1 send(s)" in render_status(status)
            # The node takes it: mined, and nothing is unsure any more.
            proxy.clear_faults()
            env.automine(True)
            for _ in range(70):
                await manager.tick()
                env.mine()
                if await env.state(intent) != "assigned":
                    break
            await manager.tick()
            assert await env.state(intent) in ("mined", "confirmed", "final")
            assert metrics.REGISTRY.get_sample_value("keeper_tx_unsure_attempts") == 0
            async with env.pool.acquire() as conn:
                assert (await collect_status(conn, env.deployment.chain_id))["unsure_sends"] is None
        finally:
            proxy.clear_faults()
            await manager.client.close()


# --------------------------------------------------------------------------- L2 costs


def test_a_receipt_cost_counts_the_l1_fee() -> None:
    receipt = {"gasUsed": hex(50_000), "effectiveGasPrice": hex(10**9)}
    assert receipt_cost(receipt) == 50_000 * 10**9
    assert l1_fee(receipt) is None
    op = {**receipt, "l1Fee": hex(123_456_789)}
    assert receipt_cost(op) == 50_000 * 10**9 + 123_456_789
    assert l1_fee(op) == 123_456_789


async def test_the_l1_fee_of_an_op_stack_receipt_is_paid_for(env: Env) -> None:
    """On an OP-stack chain (receipts carrying `l1Fee`) the cost of a transaction includes its
    L1 fee: in keeper.tx_pipeline's cost_wei, the hourly budget and the gas-spent metric."""
    fee = 7 * 10**13
    with RpcProxy(env.node.url, receipt_fields={"l1Fee": hex(fee)}) as proxy:
        manager = await _proxied(env, proxy)
        try:
            before = metrics.REGISTRY.get_sample_value(
                "keeper_tx_gas_spent_wei_total", {"kind": "settle"}
            )
            intent = await env.plan("settle:on-an-l2")
            await manager.tick()
            async with env.pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT gas_used, effective_gas_price, l1_fee, cost_wei "
                    "FROM keeper.tx_pipeline WHERE intent_id = $1",
                    intent,
                )
            spent = await manager.assigner.spent_last_hour()
            assert row is not None and row["l1_fee"] == fee
            gas = int(row["gas_used"]) * int(row["effective_gas_price"])
            assert row["cost_wei"] == gas + fee
            assert spent == gas + fee
            after = metrics.REGISTRY.get_sample_value(
                "keeper_tx_gas_spent_wei_total", {"kind": "settle"}
            )
            assert (after or 0) - (before or 0) == gas + fee
        finally:
            await manager.client.close()
