"""Signer keys from keystores and systemd credentials, and that no key text ever leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from keeper.chain.signers import KeySource, SignerConfigError, load_signers

KEY_A = "0x" + "a1" * 32
KEY_B = "0x" + "b2" * 32


def keystore(tmp_path: Path, name: str, key: str, password: str) -> tuple[Path, Path]:
    ks = tmp_path / f"{name}.json"
    ks.write_text(json.dumps(Account.encrypt(bytes.fromhex(key[2:]), password, iterations=2)))
    pw = tmp_path / f"{name}.password"
    pw.write_text(password + "\n")
    return ks, pw


def test_keystores_and_credentials_load_in_order(tmp_path: Path) -> None:
    ks, pw = keystore(tmp_path, "one", KEY_A, "s3cret")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "signer2").write_text(KEY_B[2:] + "\n")
    signers = load_signers(
        [KeySource(keystore=ks, password_file=pw), KeySource(credential="signer2")],
        environ={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert [s.address for s in signers] == [
        Account.from_key(KEY_A).address,
        Account.from_key(KEY_B).address,
    ]
    assert signers[0].address_bytes == bytes.fromhex(signers[0].address[2:])
    for signer in signers:
        assert KEY_A[2:] not in repr(signer) and KEY_B[2:] not in repr(signer)


def test_credential_holding_a_keystore_uses_its_password_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "lane").write_text(
        json.dumps(Account.encrypt(bytes.fromhex(KEY_A[2:]), "pw", iterations=2))
    )
    (creds / "lane.password").write_text("pw")
    (signer,) = load_signers(
        [KeySource(credential="lane")], environ={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert signer.address == Account.from_key(KEY_A).address


def test_the_same_account_twice_is_refused(tmp_path: Path) -> None:
    creds = tmp_path / "c"
    creds.mkdir()
    (creds / "x").write_text(KEY_A)
    (creds / "y").write_text(KEY_A)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    with pytest.raises(SignerConfigError, match="same account"):
        load_signers([KeySource(credential="x"), KeySource(credential="y")], environ=env)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("0x" + "a1" * 31, "64 hex digits"),
        ("{not json", "neither a hex key nor a keystore"),
    ],
)
def test_bad_credentials_name_the_source_not_the_content(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "bad").write_text(content)
    with pytest.raises(SignerConfigError, match=message) as err:
        load_signers(
            [KeySource(credential="bad")], environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}
        )
    text = str(err.value) + repr(err.value)
    assert "'bad'" in text
    assert "a1" * 8 not in text
    # `from None`: no chained exception can carry the file's text either.
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_wrong_password_and_missing_environment(tmp_path: Path) -> None:
    ks, pw = keystore(tmp_path, "one", KEY_A, "right")
    pw.write_text("wrong\n")
    with pytest.raises(SignerConfigError, match="cannot decrypt") as err:
        load_signers([KeySource(keystore=ks, password_file=pw)], environ={})
    assert "right" not in str(err.value) and "a1a1" not in str(err.value)
    with pytest.raises(SignerConfigError, match="CREDENTIALS_DIRECTORY"):
        load_signers([KeySource(credential="x")], environ={})
    with pytest.raises(SignerConfigError, match="plain file name"):
        load_signers([KeySource(credential="../x")], environ={"CREDENTIALS_DIRECTORY": "/"})
    with pytest.raises(SignerConfigError, match="needs"):
        load_signers([KeySource(keystore=ks)], environ={})
