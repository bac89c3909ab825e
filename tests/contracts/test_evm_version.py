"""The artifacts run on an EVM older than Cancun: compiled for `EVM_VERSION`, no opcode of a
later fork in any bytecode, and deployed and driven on an anvil running that fork."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from web3 import Web3
from web3.logs import DISCARD

from keeper.dev.anvil import Anvil, rpc
from keeper.ops.deploy import contract
from keeper.resources import CONTRACT_NAMES, load_artifact
from tests.support.chain import DEV_KEY0, deploy_contracts

EVM_VERSION = "shanghai"  # README, "Contracts": why this one
# Opcodes of the forks after Shanghai, which a Shanghai EVM rejects as invalid.
NEWER_OPCODES = {
    0x49: "BLOBHASH",  # Cancun
    0x4A: "BLOBBASEFEE",  # Cancun
    0x5C: "TLOAD",  # Cancun
    0x5D: "TSTORE",  # Cancun
    0x5E: "MCOPY",  # Cancun
    0x1E: "CLZ",  # Osaka
}
PUSH1, PUSH32 = 0x60, 0x7F


def opcodes(code: bytes) -> Iterator[tuple[int, int]]:
    """(offset, opcode) of every instruction in `code`, PUSH immediates skipped."""
    pc = 0
    while pc < len(code):
        op = code[pc]
        yield pc, op
        pc += 1 + (op - PUSH1 + 1 if PUSH1 <= op <= PUSH32 else 0)


def newer_opcodes(code: bytes) -> list[str]:
    """`NAME@offset` of every post-Shanghai opcode in `code`."""
    return [f"{NEWER_OPCODES[op]}@{pc}" for pc, op in opcodes(code) if op in NEWER_OPCODES]


def test_the_walk_skips_push_data() -> None:
    # PUSH2 0x5e5c, MCOPY: only the last byte is an instruction.
    assert list(opcodes(bytes.fromhex("615e5c5e"))) == [(0, 0x61), (3, 0x5E)]
    assert newer_opcodes(bytes.fromhex("615e5c5e")) == ["MCOPY@3"]
    assert newer_opcodes(bytes.fromhex("7f" + "5e" * 32 + "00")) == []


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_compiled_for_the_evm_version(name: str) -> None:
    assert load_artifact(name).compiler["settings"]["evmVersion"] == EVM_VERSION


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_no_opcode_newer_than_the_evm_version(name: str) -> None:
    artifact = load_artifact(name)
    for kind, code in (("creation", artifact.bytecode), ("runtime", artifact.deployed_bytecode)):
        found = newer_opcodes(bytes.fromhex(code.removeprefix("0x")))
        assert not found, f"{name} {kind} bytecode uses opcodes after {EVM_VERSION}: {found}"


def test_deploys_and_settles_on_an_evm_of_that_version(
    anvil_factory: Callable[..., Anvil],
) -> None:
    node = anvil_factory(extra_args=["--hardfork", EVM_VERSION])
    deployment = deploy_contracts(node.url, DEV_KEY0)
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
    token = contract(w3, "TestToken", deployment.token)
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    admin, payer, payee = (str(a) for a in w3.eth.accounts[:3])

    def tx(fn: object, sender: str) -> dict[str, object]:
        tx_hash = fn.transact({"from": sender, "gas": 5_000_000})  # type: ignore[attr-defined]
        receipt = dict(w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01))
        assert receipt["status"] == 1, f"reverted on {EVM_VERSION}: {fn}"
        return receipt

    tx(token.functions.mint(payer, 10**9), admin)
    tx(token.functions.approve(manager.address, 2**256 - 1), payer)
    tx(manager.functions.openStream(payee, 1_000, 10**9), payer)
    rpc(node.url, "evm_increaseTime", [100])
    receipt = tx(manager.functions.settleStreams([1, 2]), admin)
    settled = manager.events.StreamSettled().process_receipt(receipt, errors=DISCARD)
    assert [e["args"]["id"] for e in settled] == [1]
    tx(manager.functions.claim(), payee)
    assert token.functions.balanceOf(payee).call() > 0
