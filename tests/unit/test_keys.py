"""Loading deploy keys from a file, an environment variable or a keystore, without leaking them."""

from __future__ import annotations

import json
import pickle
import traceback
from pathlib import Path

import pytest
from eth_account import Account

from keeper.chain import keys
from keeper.chain.keys import KeyLoadError, PrivateKey
from keeper.dev.anvil import dev_key

# A fixed, throwaway key (never funded anywhere); its address is derived by eth_account.
SECRET_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
ADDRESS = Account.from_key(SECRET_HEX).address
PASSWORD = "correct horse"


def leaks(text: str, secret_hex: str = SECRET_HEX) -> bool:
    """Whether `text` holds the key, or a good part of it, in any letter case."""
    lowered = text.lower()
    # Any 16-digit run of the key would be a leak (of a quarter of it), not just the whole key.
    return any(secret_hex[i : i + 16] in lowered for i in range(0, len(secret_hex) - 15))


def error_text(exc: BaseException) -> str:
    """Everything an operator could see of an error: message, repr and the full traceback."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def load_error(func: object, *args: object) -> KeyLoadError:
    with pytest.raises(KeyLoadError) as info:
        func(*args)  # type: ignore[operator]
    return info.value


# --------------------------------------------------------------------------- the key object


def test_private_key_shows_only_its_address() -> None:
    key = keys.parse_hex_key(SECRET_HEX, source="test")
    assert key.address == ADDRESS
    for shown in (
        repr(key),
        str(key),
        f"{key}",
        f"{key!r}",
        format(key),
        repr([key]),
        str({1: key}),
    ):
        assert shown.count(ADDRESS) >= 1
        assert not leaks(shown)
    assert repr(key) == f"PrivateKey(address={ADDRESS})"


def test_private_key_reveals_only_on_request() -> None:
    key = keys.parse_hex_key(SECRET_HEX, source="test")
    assert key.reveal_hex() == "0x" + SECRET_HEX
    assert key.account().address == ADDRESS
    assert not hasattr(key, "__dict__")  # no attribute dump (vars(), debuggers) shows it


def test_private_key_refuses_to_be_pickled() -> None:
    key = keys.parse_hex_key(SECRET_HEX, source="test")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


def test_private_keys_compare_by_secret() -> None:
    a = keys.parse_hex_key(SECRET_HEX, source="a")
    b = keys.parse_hex_key("0x" + SECRET_HEX.upper(), source="b")
    assert a == b
    assert hash(a) == hash(b)
    assert a != dev_key(0)


@pytest.mark.parametrize(
    "secret",
    [bytes(32), (0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141).to_bytes(32)],
    ids=["zero", "group-order"],
)
def test_out_of_range_keys_are_refused(secret: bytes) -> None:
    exc = load_error(PrivateKey, secret)
    assert "out of range" in str(exc)


def test_dev_key_is_anvils_account() -> None:
    assert dev_key(0).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert dev_key(1).address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


# --------------------------------------------------------------------------- hex text


@pytest.mark.parametrize(
    "text",
    [
        SECRET_HEX,
        "0x" + SECRET_HEX,
        "0X" + SECRET_HEX.upper(),
        f"  0x{SECRET_HEX}\n",
        f"\r\n{SECRET_HEX}\r\n\r\n",
        f"\t{SECRET_HEX} ",
    ],
    ids=["bare", "0x", "upper", "spaces-newline", "crlf", "tabs"],
)
def test_key_file_formats(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deployer.key"
    path.write_text(text)
    assert keys.load_key_file(path).address == ADDRESS


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (SECRET_HEX[:-1], "expected 64 hex digits, found 63"),
        (SECRET_HEX + "00", "expected 64 hex digits, found 66"),
        (SECRET_HEX[:32] + "\n" + SECRET_HEX[32:], "characters other than hex digits"),
        (SECRET_HEX[:-1] + "g", "characters other than hex digits"),
        ("0x" + SECRET_HEX[:40], "expected 64 hex digits, found 40"),
        ("  \n", "is empty"),
        ("0x", "is empty"),
        ("0x" + "0" * 64, "out of range"),
    ],
    ids=["short", "long", "wrapped", "non-hex", "address-length", "blank", "bare-0x", "zero"],
)
def test_bad_key_file_errors_name_the_file_not_the_key(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "deployer.key"
    path.write_text(text)
    exc = load_error(keys.load_key_file, path)
    message = error_text(exc)
    assert str(path) in str(exc)
    assert reason in str(exc)
    assert not leaks(message)
    # No chained exception (which a traceback would print) carries what was read.
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    exc = load_error(keys.load_key_file, path)
    assert str(path) in str(exc)
    assert "does not exist" in str(exc)


def test_binary_key_file(tmp_path: Path) -> None:
    path = tmp_path / "deployer.key"
    path.write_bytes(bytes.fromhex(SECRET_HEX) + b"\xff\xfe")
    exc = load_error(keys.load_key_file, path)
    assert "is not text" in str(exc)
    assert not leaks(error_text(exc))


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    exc = load_error(keys.load_key_file, tmp_path)
    assert str(tmp_path) in str(exc)


# --------------------------------------------------------------------------- environment


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_TEST_DEPLOY_KEY", f"0x{SECRET_HEX}\n")
    assert keys.load_key_env("KEEPER_TEST_DEPLOY_KEY").address == ADDRESS
    assert keys.load_key_env("K", {"K": SECRET_HEX}).address == ADDRESS


def test_unset_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEPER_TEST_DEPLOY_KEY", raising=False)
    exc = load_error(keys.load_key_env, "KEEPER_TEST_DEPLOY_KEY")
    assert "environment variable KEEPER_TEST_DEPLOY_KEY is not set" in str(exc)


def test_bad_environment_key_names_the_variable_not_the_key() -> None:
    exc = load_error(keys.load_key_env, "DEPLOY_KEY", {"DEPLOY_KEY": SECRET_HEX[:-2]})
    assert "environment variable DEPLOY_KEY" in str(exc)
    assert "found 62" in str(exc)
    assert not leaks(error_text(exc))


# --------------------------------------------------------------------------- keystore


def write_keystore(tmp_path: Path, password: str = PASSWORD) -> Path:
    # pbkdf2 with few iterations: the default scrypt takes a second per decryption.
    data = Account.encrypt(bytes.fromhex(SECRET_HEX), password, kdf="pbkdf2", iterations=1000)
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("stored", ["correct horse", "correct horse\n", "correct horse\r\n"])
def test_keystore_with_password_file(tmp_path: Path, stored: str) -> None:
    keystore = write_keystore(tmp_path)
    password = tmp_path / "password"
    password.write_text(stored, newline="")
    key = keys.load_keystore(keystore, password)
    assert key.address == ADDRESS
    assert key.reveal_hex() == "0x" + SECRET_HEX


def test_keystore_password_keeps_inner_and_leading_whitespace(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path, password=" pass word ")
    password = tmp_path / "password"
    password.write_text(" pass word \n")
    assert keys.load_keystore(keystore, password).address == ADDRESS


def test_keystore_wrong_password(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path)
    password = tmp_path / "password"
    password.write_text("hunter2-xyz\n")
    exc = load_error(keys.load_keystore, keystore, password)
    assert str(keystore) in str(exc)
    assert str(password) in str(exc)
    assert "password is wrong" in str(exc)
    assert not leaks(error_text(exc))
    assert "hunter2-xyz" not in error_text(exc)


def test_keystore_not_json(tmp_path: Path) -> None:
    keystore = tmp_path / "keystore.json"
    keystore.write_text(SECRET_HEX)  # a hex key passed where a keystore was expected
    password = tmp_path / "password"
    password.write_text("pw")
    exc = load_error(keys.load_keystore, keystore, password)
    assert f"keystore file {keystore} is not JSON" in str(exc)
    assert not leaks(error_text(exc))


def test_keystore_without_crypto_section(tmp_path: Path) -> None:
    keystore = tmp_path / "keystore.json"
    keystore.write_text(json.dumps({"address": ADDRESS[2:]}))
    password = tmp_path / "password"
    password.write_text("pw")
    exc = load_error(keys.load_keystore, keystore, password)
    assert "not an encrypted key" in str(exc)


def test_keystore_damaged(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path)
    data = json.loads(keystore.read_text())
    del data["crypto"]["kdfparams"]
    keystore.write_text(json.dumps(data))
    password = tmp_path / "password"
    password.write_text("correct horse")
    exc = load_error(keys.load_keystore, keystore, password)
    assert str(keystore) in str(exc)
    assert not leaks(error_text(exc))


def test_keystore_missing_files(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path)
    missing = tmp_path / "missing"
    exc = load_error(keys.load_keystore, missing, tmp_path / "password")
    assert f"keystore file {missing} does not exist" in str(exc)
    exc = load_error(keys.load_keystore, keystore, missing)
    assert f"password file {missing} does not exist" in str(exc)
