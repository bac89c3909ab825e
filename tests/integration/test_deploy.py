"""Deploying the contracts to a real anvil node: code, roles, fee settings, deployment file."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper.chain.deployment import Deployment, DeploymentFileError
from keeper.dev.anvil import Anvil, dev_key, free_port
from keeper.ops.deploy import DEFAULT_NOTICE_PERIOD, DeployError, contract, deploy_all
from keeper.resources import load_artifact

ADMIN_ROLE = b"\x00" * 32


# The session's node is shared: these tests deploy from dev accounts 7-9, which the rest of
# the suite leaves alone, so nonces never interleave.


@pytest.fixture(scope="module")
def node(anvil: Anvil) -> Anvil:
    return anvil


@pytest.fixture(scope="module")
def deployment(node: Anvil) -> Deployment:
    return deploy_all(
        node.url,
        dev_key(9).reveal_hex(),
        oracle=dev_key(1).address,
        fee_recipient=dev_key(2).address,
        fee_bps=123,
        notice_period=45,
    )


@pytest.fixture(scope="module")
def w3(node: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(node.url))


def assert_is_artifact_code(code: bytes, name: str) -> None:
    """On-chain runtime code equals the artifact's, except where immutables were filled in.

    solc leaves an immutable's bytes zero in `deployedBytecode` and the constructor writes the
    value there, so every difference must sit on a zero byte of the artifact.
    """
    expected = bytes.fromhex(load_artifact(name).deployed_bytecode.removeprefix("0x"))
    assert len(code) > 0
    assert len(code) == len(expected)
    differing = [i for i, (a, b) in enumerate(zip(code, expected, strict=True)) if a != b]
    assert all(expected[i] == 0 for i in differing), f"{name}: code differs outside immutables"


def test_code_at_every_address(w3: Web3, deployment: Deployment) -> None:
    for name, address in [
        ("TestToken", deployment.token),
        ("StreamManager", deployment.stream_manager),
        ("EscrowVault", deployment.escrow_vault),
    ]:
        assert_is_artifact_code(bytes(w3.eth.get_code(Web3.to_checksum_address(address))), name)
    # StreamManager's immutable `token` is what filled the zeros.
    code = bytes(w3.eth.get_code(Web3.to_checksum_address(deployment.stream_manager)))
    assert bytes.fromhex(deployment.token[2:]) in code


def test_roles_and_settings(w3: Web3, deployment: Deployment) -> None:
    deployer, oracle, fee_recipient = dev_key(9).address, dev_key(1).address, dev_key(2).address
    manager = contract(w3, "StreamManager", deployment.stream_manager)
    vault = contract(w3, "EscrowVault", deployment.escrow_vault)
    token = contract(w3, "TestToken", deployment.token)
    oracle_role = manager.functions.ORACLE_ROLE().call()
    pauser_role = manager.functions.PAUSER_ROLE().call()

    assert (deployment.deployer, deployment.oracle) == (deployer, oracle)
    assert manager.functions.hasRole(ADMIN_ROLE, deployer).call()
    assert manager.functions.hasRole(pauser_role, deployer).call()
    assert manager.functions.hasRole(oracle_role, oracle).call()
    assert not manager.functions.hasRole(oracle_role, deployer).call()
    assert not manager.functions.hasRole(ADMIN_ROLE, oracle).call()
    assert vault.functions.hasRole(ADMIN_ROLE, deployer).call()
    assert token.functions.owner().call() == deployer

    assert (deployment.fee_bps, deployment.fee_recipient) == (123, fee_recipient)
    assert manager.functions.feeBps().call() == 123
    assert manager.functions.feeRecipient().call() == fee_recipient
    assert manager.functions.token().call() == deployment.token
    assert vault.functions.token().call() == deployment.token
    assert token.functions.decimals().call() == deployment.token_decimals == 6
    assert manager.functions.noticePeriod().call() == deployment.notice_period == 45


def test_deployment_block_is_where_the_contracts_appear(w3: Web3, deployment: Deployment) -> None:
    # Indexing from deployment_block must see every event: no contract existed before it.
    assert deployment.chain_id == w3.eth.chain_id == 31337
    before = deployment.deployment_block - 1
    for address in (deployment.token, deployment.stream_manager, deployment.escrow_vault):
        checksummed = Web3.to_checksum_address(address)
        assert bytes(w3.eth.get_code(checksummed, block_identifier=before)) == b""
        assert bytes(w3.eth.get_code(checksummed)) != b""


def test_defaults_make_the_deployer_oracle_and_fee_recipient(node: Anvil) -> None:
    d = deploy_all(node.url, dev_key(8).reveal_hex())
    deployer = dev_key(8).address
    assert (d.deployer, d.oracle, d.fee_recipient, d.fee_bps) == (deployer, deployer, deployer, 250)
    assert d.notice_period == DEFAULT_NOTICE_PERIOD == 600
    manager = contract(Web3(Web3.HTTPProvider(node.url)), "StreamManager", d.stream_manager)
    assert manager.functions.noticePeriod().call() == 600


def test_existing_token_is_used(w3: Web3, node: Anvil, deployment: Deployment) -> None:
    d = deploy_all(
        node.url, dev_key(7).reveal_hex(), token_address=deployment.token, notice_period=0
    )
    assert d.token == deployment.token
    manager = contract(w3, "StreamManager", d.stream_manager)
    assert manager.functions.token().call() == d.token
    # 0: payer closes and price decreases take effect at once.
    assert manager.functions.noticePeriod().call() == d.notice_period == 0


@pytest.mark.parametrize("notice", [-1, 2**32])
def test_notice_period_out_of_range_is_refused(node: Anvil, notice: int) -> None:
    with pytest.raises(DeployError, match="notice period"):
        deploy_all(node.url, dev_key(9).reveal_hex(), notice_period=notice)


def test_deployment_file_without_a_notice_period_reads_as_zero(
    tmp_path: Path, deployment: Deployment
) -> None:
    data = json.loads(deployment.to_json())
    assert data["notice_period"] == 45
    del data["notice_period"]
    assert Deployment.from_dict(data).notice_period == 0
    data["notice_period"] = -5
    with pytest.raises(DeploymentFileError, match="notice_period"):
        Deployment.from_dict(data)


def test_deployment_file_round_trips(tmp_path: Path, deployment: Deployment) -> None:
    path = tmp_path / "sub" / "deployment.json"
    deployment.write(path)
    assert Deployment.read(path) == deployment
    assert not path.with_suffix(".json.tmp").exists()


def test_unreadable_deployment_file(tmp_path: Path) -> None:
    with pytest.raises(DeploymentFileError, match="keeper deploy"):
        Deployment.read(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "make_key",
    [
        # Two digits short: eth_account would pad a 63-digit key with a zero into a valid,
        # different key, so one digit short is not an error at this level (keeper.chain.keys is
        # stricter).
        lambda k: k[:-2],
        lambda k: k + "00",  # too long
        lambda k: k[:-2] + "zz",  # not hex
        lambda k: "0x" + "00" * 32,  # zero: not a valid secp256k1 key
    ],
    ids=["short", "long", "non-hex", "zero"],
)
def test_bad_key_error_does_not_show_the_key(node: Anvil, make_key: Callable[[str], str]) -> None:
    real = Account.create().key.hex().removeprefix("0x")
    bad = make_key(real)
    with pytest.raises(DeployError) as info:
        deploy_all(node.url, bad)
    shown = "\n".join([str(info.value), repr(info.value), *traceback.format_exception(info.value)])
    assert "not a valid private key" in str(info.value)
    for fragment in {bad.removeprefix("0x"), real, real[:16], real[-16:]} - {"0" * 64}:
        assert fragment not in shown.lower()


def test_unreachable_rpc() -> None:
    with pytest.raises(DeployError, match="cannot reach the RPC"):
        deploy_all(f"http://127.0.0.1:{free_port()}", dev_key(9).reveal_hex())


def test_unfunded_key_fails_without_showing_it(node: Anvil) -> None:
    fresh = Account.create()
    with pytest.raises(Exception) as info:
        deploy_all(node.url, fresh.key.hex())
    shown = "\n".join([str(info.value), *traceback.format_exception(info.value)])
    assert fresh.key.hex().removeprefix("0x") not in shown.lower()
