"""Load a private key for an operator command (e.g. `keeper deploy`) without ever showing it.

A key comes from one of three places: a file holding the key as hex text, an environment
variable holding the same, or an encrypted keystore JSON file (the geth/web3 v3 format) with
its password in a file. Whichever it is, the result is a `PrivateKey`, whose repr and str show
only the address; the secret is reachable only through `PrivateKey.reveal_hex()` or
`PrivateKey.account()`, so it can't end up in a log line or a traceback by accident.

Errors say which source failed (the file path or the variable's name) and why, never the text
they read: a wrongly formatted key may still be most of a real key.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys import keys as eth_keys

from keeper.errors import KeeperError

# secp256k1's group order: a private key must lie in [1, n - 1].
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX_DIGITS = frozenset(string.hexdigits)


class KeyLoadError(KeeperError):
    """The private key could not be loaded."""

    def __init__(
        self,
        message: str | None = None,
        *,
        help: str | None = None,  # noqa: A002
        file_role: str | None = None,
    ) -> None:
        super().__init__(message, help=help)
        # Which file was at fault, when one clearly was: "key_file", "keystore" or
        # "password_file" (for messages that name the configuration field).
        self.file_role = file_role


# Why a file could not be read is most often a path that is wrong or a permission: say what is
# expected, not only what the OS said.
_READABLE = "expected a file the keeper's user can read"


def _unreadable(what: str, path: Path, exc: OSError, role: str) -> KeyLoadError:
    return KeyLoadError(f"cannot read {what} {path}: {exc.strerror} ({_READABLE})", file_role=role)


class PrivateKey:
    """A secp256k1 private key that never prints itself.

    `repr()`/`str()` give `PrivateKey(address=0x...)`. Pickling is refused, so a key cannot
    leave the process by being serialised along with some other object.
    """

    __slots__ = ("_address", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise KeyLoadError(f"a private key is 32 bytes, got {len(secret)}")
        if not 0 < int.from_bytes(secret, "big") < _SECP256K1_N:
            raise KeyLoadError("the private key is out of range for secp256k1")
        self._secret = secret
        self._address: str = eth_keys.PrivateKey(secret).public_key.to_checksum_address()

    @property
    def address(self) -> str:
        """The checksummed account address of this key."""
        return self._address

    def reveal_hex(self) -> str:
        """The key as `0x`-prefixed hex: only for handing to a signer, never for printing."""
        return "0x" + self._secret.hex()

    def account(self) -> LocalAccount:
        """An eth_account signer for this key."""
        account: LocalAccount = Account.from_key(self._secret)
        return account

    def __repr__(self) -> str:
        return f"PrivateKey(address={self._address})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return self._secret == other._secret

    def __hash__(self) -> int:
        return hash(self._address)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a PrivateKey cannot be pickled")


def parse_hex_key(text: str, *, source: str) -> PrivateKey:
    """Parse hex key text (surrounding whitespace and a `0x` prefix are allowed).

    `source` names where the text came from, for the error message, e.g. "key file /x/k.hex".
    """
    body = text.strip()
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    if not body:
        raise KeyLoadError(f"{source} is empty", help="it must hold the key as 64 hex digits")
    if not set(body) <= _HEX_DIGITS:
        # Whitespace inside the key is the most common way to get here (a wrapped line).
        raise KeyLoadError(
            f"{source} does not hold a hex key: it contains characters other than hex digits",
            help="it must hold exactly one key as 64 hex digits, optionally prefixed with 0x",
        )
    if len(body) != 64:
        raise KeyLoadError(
            f"{source} does not hold a private key: expected 64 hex digits, found {len(body)}",
            help="a private key is 32 bytes; is this an address or a keystore file instead?",
        )
    try:
        return PrivateKey(bytes.fromhex(body))
    except KeyLoadError as exc:
        raise KeyLoadError(f"{source}: {exc.message}") from None


def load_key_file(path: Path) -> PrivateKey:
    """Load a key stored as hex text in the file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyLoadError(f"key file {path} does not exist", file_role="key_file") from None
    except UnicodeDecodeError:
        raise KeyLoadError(
            f"key file {path} is not text",
            help="it must hold the key as 64 hex digits (for a keystore use --keystore)",
            file_role="key_file",
        ) from None
    except OSError as exc:
        raise _unreadable("key file", path, exc, "key_file") from None
    return parse_hex_key(text, source=f"key file {path}")


def load_key_env(name: str, environ: Mapping[str, str] | None = None) -> PrivateKey:
    """Load a key stored as hex text in the environment variable `name`."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None:
        raise KeyLoadError(f"environment variable {name} is not set")
    return parse_hex_key(value, source=f"environment variable {name}")


def load_keystore(keystore: Path, password_file: Path) -> PrivateKey:
    """Decrypt the keystore JSON file `keystore` with the password held in `password_file`.

    The password is the file's text without its trailing line break (as `echo pw > file`
    writes it); any other whitespace is part of the password.
    """
    try:
        data = json.loads(keystore.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyLoadError(
            f"keystore file {keystore} does not exist", file_role="keystore"
        ) from None
    except (UnicodeDecodeError, ValueError):
        raise KeyLoadError(f"keystore file {keystore} is not JSON", file_role="keystore") from None
    except OSError as exc:
        raise _unreadable("keystore file", keystore, exc, "keystore") from None
    if not isinstance(data, dict) or not ("crypto" in data or "Crypto" in data):
        raise KeyLoadError(
            f"keystore file {keystore} is not an encrypted key (no 'crypto' section)",
            help="use a V3 keystore as written by geth, cast wallet or eth_account.Account.encrypt",
            file_role="keystore",
        )
    try:
        password = password_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyLoadError(
            f"password file {password_file} does not exist", file_role="password_file"
        ) from None
    except UnicodeDecodeError:
        raise KeyLoadError(
            f"cannot read password file {password_file}: it is not text",
            file_role="password_file",
        ) from None
    except OSError as exc:
        raise _unreadable("password file", password_file, exc, "password_file") from None
    password = password.removesuffix("\n").removesuffix("\r")
    try:
        secret = bytes(Account.decrypt(data, password))
    except ValueError:
        # eth_account says "MAC mismatch" for a wrong password; a mangled file fails the same way.
        raise KeyLoadError(
            f"cannot decrypt keystore file {keystore} with the password in {password_file}",
            help="the password is wrong, or the keystore file is damaged",
        ) from None
    except (KeyError, TypeError, NotImplementedError) as exc:
        raise KeyLoadError(
            f"keystore file {keystore} is malformed or uses an unsupported format "
            f"({type(exc).__name__})",
            file_role="keystore",
        ) from None
    try:
        return PrivateKey(secret)
    except KeyLoadError as exc:
        raise KeyLoadError(f"keystore file {keystore}: {exc.message}") from None
