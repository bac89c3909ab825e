"""The transaction manager's rules on an outbox and a chain in memory (milliseconds a test).

The manager is the real one; only its outbox (`tests/support/memory_outbox.py`, the schema's
rules) and its node (`tests/support/memory_chain.py`, a mempool with replacement rules, blocks,
receipts, reorgs, scripted answers) are stand-ins. The same behaviours run against PostgreSQL,
anvil and Hardhat's node in tests/integration and tests/acceptance.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from keeper.chain.rpc import ChainClient
from keeper.chain.signers import Signer
from keeper.config import TxConfig
from keeper.db.outbox_rows import Call
from keeper.dev.anvil import dev_key
from keeper.plan.batches import encode_batch
from keeper.tx.manager import TxManager
from tests.support.memory_chain import GWEI, MemoryChain
from tests.support.memory_outbox import MemoryOutbox

pytestmark = pytest.mark.anyio

TARGET = b"\x22" * 20
SIGNERS = [Signer(dev_key(5)), Signer(dev_key(6))]


class World:
    def __init__(self, signers: int = 1, **settings: Any) -> None:
        self.chain = MemoryChain()
        self.outbox = MemoryOutbox()
        self.signers = SIGNERS[:signers]
        self.settings = TxConfig(**settings)
        self.manager = self.new_manager()

    def new_manager(self) -> TxManager:
        return TxManager(
            cast(ChainClient, self.chain),
            None,
            chain_id=self.chain.chain_id,
            signers=self.signers,
            settings=self.settings,
            finality_depth=10,
            outbox=self.outbox,
        )

    def plan(self, key: str, items: list[int], urgent: bool = False) -> int:
        call = Call(TARGET, encode_batch("settle", items))
        return self.outbox.plan("settle", key, call, items, urgent)

    def state(self, intent_id: int) -> str:
        return self.outbox.intents[intent_id].state

    async def blocks(self, n: int) -> None:
        """`n` blocks, a pass after each."""
        for _ in range(n):
            self.chain.mine()
            await self.manager.tick()

    def mined_nonces(self, signer: Signer) -> list[int]:
        sender = signer.address_bytes
        return sorted(tx.nonce for _, tx in self.chain.mined.values() if tx.sender == sender)


async def test_planned_work_is_signed_stored_sent_mined_confirmed_final_and_checked() -> None:
    w = World(confirmations=3)
    ids = [w.plan(f"settle:{n}", [n]) for n in range(3)]
    report = await w.manager.tick()
    assert report.assigned == 3 and [w.state(i) for i in ids] == ["assigned"] * 3
    assert [w.outbox.intents[i].nonce for i in ids] == [0, 1, 2]
    assert len(w.chain.sent) == 3  # stored, then sent
    await w.blocks(1)
    assert [w.state(i) for i in ids] == ["mined"] * 3
    await w.blocks(2)
    assert [w.state(i) for i in ids] == ["confirmed"] * 3
    await w.blocks(10)
    assert [w.state(i) for i in ids] == ["final"] * 3
    assert {w.outbox.items[(i, (n, None))][0] for n, i in enumerate(ids)} == {"effect"}
    assert w.mined_nonces(w.signers[0]) == [0, 1, 2]


async def test_the_least_loaded_lane_gets_the_next_intent() -> None:
    w = World(signers=2)
    ids = [w.plan(f"settle:{n}", [n]) for n in range(4)]
    await w.manager.tick()
    lanes = Counter(w.outbox.intents[i].signer for i in ids)
    assert sorted(lanes.values()) == [2, 2]
    for signer in w.signers:
        mine = [w.outbox.intents[i] for i in ids]
        nonces = [i.nonce or 0 for i in mine if i.signer == signer.address_bytes]
        assert sorted(nonces) == [0, 1]


async def test_a_crash_between_storing_and_sending_sends_the_stored_bytes() -> None:
    w = World()
    intent = w.plan("settle:crash", [1])

    async def crash(*args: object) -> None:
        raise SystemExit("killed between storing and sending")

    w.manager.sender.broadcast = crash  # type: ignore[method-assign,assignment]
    with pytest.raises(SystemExit):
        await w.manager.tick()
    [stored] = w.outbox.attempts_of(intent)
    assert stored.state == "signed" and w.chain.sent == []
    w.manager = w.new_manager()  # a restart
    report = await w.manager.tick()
    assert report.sent == 1 and report.assigned == 0
    assert [tx.tx_hash for tx in w.chain.sent] == [stored.signed.tx_hash]  # no second signature


async def test_a_stuck_attempt_is_bumped_until_it_is_mined_at_one_nonce() -> None:
    w = World(bump_after_blocks=2, purge_after_blocks=1000)
    intent = w.plan("settle:stuck", [1])
    await w.manager.tick()
    first = w.outbox.attempts_of(intent)[0].signed
    w.chain.base_fee = first.max_fee + 1  # the attempt no longer pays for a block
    await w.blocks(6)
    fees = [a.signed.max_fee for a in w.outbox.attempts_of(intent)]
    assert len(fees) >= 2 and fees == sorted(fees)
    assert all(new * 1000 >= old * 1125 for old, new in pairwise(fees))
    await w.blocks(2)
    assert w.state(intent) in ("mined", "confirmed")
    assert w.mined_nonces(w.signers[0]) == [0]
    states = Counter(a.state for a in w.outbox.attempts_of(intent))
    assert states["mined"] == 1 and states["mined"] + states["superseded"] == len(fees)


async def test_at_the_fee_caps_the_stored_bytes_are_sent_again_unchanged() -> None:
    w = World(bump_after_blocks=1, purge_after_blocks=1000, max_fee_wei=3 * GWEI)
    intent = w.plan("settle:capped", [1])
    w.chain.base_fee = 10 * GWEI
    with capture_logs() as logs:
        await w.manager.tick()
        await w.blocks(4)
    assert len(w.outbox.attempts_of(intent)) == 1  # nothing to bump to under the cap
    assert w.outbox.attempts_of(intent)[0].broadcasts >= 4
    # The node's same answer to the same bytes is logged once, then only counted (debug).
    answers = [e["log_level"] for e in logs if e["event"] == "send_answer"]
    assert answers[0] == "warning" and len(answers) >= 3
    assert set(answers[1:]) == {"debug"}


async def test_a_fee_spike_above_the_caps_purges_once_and_never_signs_a_purge_again() -> None:
    """The fee-spike regression: the purge of a lane stuck at the caps was signed again at the
    same caps (the same transaction) and broke attempts_tx_hash_key, every pass."""
    w = World(
        max_fee_wei=2 * GWEI,
        max_priority_fee_wei=2 * GWEI,
        purge_after_blocks=4,
        bump_after_blocks=6,
    )
    intent = w.plan("settle:spike", [1])
    w.chain.base_fee = GWEI // 4  # the first attempt: 1.5 gwei, under the cap
    await w.manager.tick()
    w.chain.pool.clear()  # the node dropped it; then the base fee rises above the cap
    w.chain.base_fee = 10 * GWEI
    await w.blocks(12)  # about 2 x purge_after_blocks, plus margin
    purges = [i for i in w.outbox.intents.values() if i.kind == "purge"]
    assert w.state(intent) == "replan" and len(purges) == 1  # one purge, never a purge of it
    [purge_attempt] = w.outbox.attempts_of(purges[0].id)  # at the caps: sent again as it is
    assert purge_attempt.signed.max_fee == 2 * GWEI and purge_attempt.broadcasts > 1
    hashes = [a.signed.tx_hash for a in w.outbox.attempts.values()]
    assert len(hashes) == len(set(hashes))
    w.chain.base_fee = GWEI // 2  # the spike ends: the lane is unstuck
    await w.blocks(3)
    assert purges[0].state in ("mined", "confirmed")
    assert w.mined_nonces(w.signers[0]) == [0]  # the nonce used once


async def test_unknown_answers_are_sent_again_paced_never_every_pass() -> None:
    w = World(bump_after_blocks=1000, purge_after_blocks=1000)
    w.chain.answers = ["the node said something nobody wrote down"] * 100
    intent = w.plan("settle:unknown", [1])
    await w.manager.tick()
    for _ in range(15):
        await w.blocks(1)
        await w.manager.tick()  # a second pass in the same block sends nothing more
    [attempt] = w.outbox.attempts_of(intent)
    assert attempt.broadcasts == 5  # at blocks 0, 1, 3, 7, 15: after 1, 2, 4, 8 blocks


async def test_a_gas_limit_refusal_purges_the_nonce_and_lowers_the_batch_cap() -> None:
    w = World()
    intent = w.plan("settle:too-much-gas", list(range(1, 11)))
    w.chain.answers = ["exceeds transaction gas cap of 16777216"]
    report = await w.manager.tick()
    assert report.purged == 1 and w.state(intent) == "replan"
    [stored] = w.outbox.attempts_of(intent)
    assert stored.broadcasts == 0 and stored.state == "superseded"  # never sent again
    assert w.manager.sender.batch_gas_cap == stored.signed.gas_limit // 2
    [purge] = [i for i in w.outbox.intents.values() if i.kind == "purge"]
    assert purge.nonce == w.outbox.intents[intent].nonce


async def test_an_item_that_reverts_on_its_own_is_split_out_before_signing() -> None:
    w = World()
    w.chain.reverts = lambda data: (2).to_bytes(32, "big") in data[4 + 64 :]
    intent = w.plan("settle:split", [1, 2, 3])
    report = await w.manager.tick()
    assert report.split == 1 and report.assigned == 1
    assert w.outbox.intents[intent].items == [1, 3]
    assert w.outbox.items[(intent, (2, None))][0] == "reverted"


async def test_a_bug_in_one_intent_stays_with_it() -> None:
    w = World(fault_backoff=60.0)
    broken = w.plan("settle:broken", [1])
    fine = w.plan("settle:fine", [2])
    original = w.manager.simulator.simulate_or_split

    async def simulate(intent: Any, signer: bytes) -> Any:
        if intent.key == "settle:broken":
            raise RuntimeError("injected bug")
        return await original(intent, signer)

    w.manager.simulator.simulate_or_split = simulate  # type: ignore[method-assign]
    await w.manager.tick()
    await w.manager.tick()
    assert w.state(fine) == "assigned" and w.state(broken) == "planned"
    assert w.outbox.faults[broken][0] == "assign" and w.outbox.faults[broken][2] == 1


async def test_a_nonce_used_elsewhere_replans_after_consecutive_checks() -> None:
    w = World(bump_after_blocks=1, replan_after_checks=2, purge_after_blocks=1000)
    intent = w.plan("settle:foreign", [1])
    await w.manager.tick()
    w.chain.use_nonce_elsewhere(w.signers[0].address_bytes)
    await w.blocks(1)
    assert w.state(intent) == "assigned"  # seen once: the receipts get another chance
    await w.blocks(1)
    assert w.state(intent) == "replan"


async def test_a_receipt_reorged_out_goes_back_and_is_mined_again() -> None:
    w = World(confirmations=3)
    intent = w.plan("settle:reorg", [1])
    await w.manager.tick()
    await w.blocks(1)
    first = w.outbox.intents[intent].receipt
    assert first is not None
    w.chain.reorg(1)
    await w.manager.tick()
    assert w.state(intent) == "assigned"  # its block left the chain
    await w.manager.tick()
    again = w.outbox.intents[intent].receipt
    assert again is not None and again.block_hash != first.block_hash


async def test_the_budget_holds_back_only_non_urgent_work() -> None:
    w = World(budget_per_hour_wei=1)
    normal = w.plan("settle:normal", [1])
    urgent = w.plan("settle:urgent", [2], urgent=True)
    report = await w.manager.tick()
    assert w.state(urgent) == "assigned" and w.state(normal) == "planned"
    assert report.held_by_budget == 1


async def test_a_signer_below_its_minimum_balance_gets_no_work_until_funded() -> None:
    w = World(min_signer_balance_wei=10**18)
    intent = w.plan("settle:poor", [1])
    w.chain.balances[w.signers[0].address_bytes] = 10**17
    await w.manager.tick()
    assert w.state(intent) == "planned"
    assert w.outbox.signer_states[w.signers[0].address_bytes] == (10**17, True)
    w.chain.balances[w.signers[0].address_bytes] = 10**18
    await w.manager.tick()
    assert w.state(intent) == "assigned"


# --------------------------------------------------------------------------- containment


def _break(step: object, method: str, key: str) -> list[str]:
    """Make `step.<method>` raise for the intent with `key` (its first argument's key)."""
    original = getattr(step, method)
    calls: list[str] = []

    async def broken(first: Any, *args: Any) -> Any:
        calls.append(first.key)
        if first.key == key:
            raise RuntimeError(f"injected bug in {method}")
        return await original(first, *args)

    setattr(step, method, broken)
    return calls


async def _two_stuck(w: World) -> tuple[int, int]:
    """Two intents on two lanes, sent and stuck under a base fee above what they pay."""
    ids = w.plan("settle:broken", [1]), w.plan("settle:fine", [2])
    await w.manager.tick()
    w.chain.base_fee = 1000 * GWEI
    return ids


@pytest.mark.parametrize("stage", ["assign", "send", "receipts", "effects", "purge", "bump"])
async def test_a_bug_at_any_stage_stays_with_its_intent(stage: str) -> None:
    w = World(signers=2, fault_backoff=60.0, bump_after_blocks=2, purge_after_blocks=1000)
    m = w.manager
    if stage == "assign":
        _break(m.simulator, "simulate_or_split", "settle:broken")
        broken, fine = w.plan("settle:broken", [1]), w.plan("settle:fine", [2])
        await m.tick()
        assert w.state(fine) == "assigned"
    elif stage == "send":
        broken, fine = w.plan("settle:broken", [1]), w.plan("settle:fine", [2])
        w.chain.answers = ["insufficient funds for gas * price + value"] * 2
        await m.tick()  # both refused for now: signed, to be sent again
        original = m.sender.broadcast

        async def broadcast(attempt_id: int, raw: bytes, intent: str) -> Any:
            if w.outbox.attempts[attempt_id].intent_id == broken:
                raise RuntimeError("injected bug in broadcast")
            return await original(attempt_id, raw, intent)

        m.sender.broadcast = broadcast  # type: ignore[method-assign]
        await m.tick()
        assert [tx.nonce for tx in w.chain.sent] == [0]  # the fine one went out
    elif stage in ("receipts", "effects"):
        broken, fine = w.plan("settle:broken", [1]), w.plan("settle:fine", [2])
        await m.tick()
        if stage == "receipts":
            _break(m.receipts, "advance", "settle:broken")
        else:
            _break(m.receipts, "_check", "settle:broken")
        await w.blocks(5)
        assert w.state(fine) == "confirmed"
        if stage == "effects":
            assert w.outbox.items[(fine, (2, None))][0] == "effect"
            assert not w.outbox.intents[broken].effects_checked
        else:
            assert w.state(broken) == "assigned"
    else:
        broken, fine = await _two_stuck(w)
        if stage == "purge":
            w.settings = m.settings = TxConfig(
                fault_backoff=60.0, purge_after_blocks=2, bump_after_blocks=100
            )
            _break(m.repair, "_purge_nonce", "settle:broken")
            await w.blocks(3)
            assert w.state(fine) == "replan" and w.state(broken) == "assigned"
        else:
            _break(m.repair, "_nonce_used_elsewhere", "settle:broken")
            await w.blocks(3)
            assert len(w.outbox.attempts_of(fine)) > 1  # bumped
            assert len(w.outbox.attempts_of(broken)) == 1
    stage_of_fault, error, failures = w.outbox.faults[broken]
    assert stage_of_fault == stage and "injected bug" in error and failures == 1
    assert fine not in w.outbox.faults
