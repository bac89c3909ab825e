"""The signer pool's keys: where they come from and how they are held.

A key is configured as either an encrypted keystore file with a password file, or a systemd
credential: a file named in `$CREDENTIALS_DIRECTORY` (filled by `LoadCredential=` in the unit),
holding the key as hex or a keystore JSON (then `<name>.password` holds its password). Keys are
held as `keeper.keys.PrivateKey`, whose repr shows only the address; errors name the file or
credential that failed, never its content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keeper.errors import KeeperError
from keeper.keys import KeyLoadError, PrivateKey, load_key_file, load_keystore

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SignerConfigError(KeeperError):
    """A signer key could not be loaded."""


@dataclass(frozen=True)
class KeySource:
    """Where one signer key comes from (exactly one of the two forms)."""

    keystore: Path | None = None
    password_file: Path | None = None
    credential: str | None = None

    def describe(self) -> str:
        """The source, for messages (never the key)."""
        if self.credential is not None:
            return f"credential {self.credential!r}"
        return f"keystore {self.keystore}"


@dataclass(frozen=True)
class Signer:
    """One nonce lane: a key and its address."""

    key: PrivateKey

    @property
    def address(self) -> str:
        """Checksummed address."""
        return self.key.address

    @property
    def address_bytes(self) -> bytes:
        """Raw 20-byte address, as the outbox stores it."""
        return bytes.fromhex(self.key.address[2:])


def _credential(name: str, environ: Mapping[str, str]) -> PrivateKey:
    directory = environ.get(CREDENTIALS_ENV)
    if not directory:
        raise SignerConfigError(
            f"credential {name!r}: ${CREDENTIALS_ENV} is not set",
            help="run under systemd with LoadCredential=, or configure a keystore instead",
        )
    if "/" in name or name in ("", ".", ".."):
        raise SignerConfigError(f"credential name {name!r} must be a plain file name")
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SignerConfigError(
            f"credential {name!r}: cannot read {path}: {exc.strerror}"
        ) from None
    if text.lstrip().startswith("{"):
        try:
            json.loads(text)
        except ValueError:
            raise SignerConfigError(
                f"credential {name!r} is neither a hex key nor a keystore"
            ) from None
        return load_keystore(path, Path(directory) / f"{name}.password")
    return load_key_file(path)


def load_signers(
    sources: Sequence[KeySource], environ: Mapping[str, str] | None = None
) -> list[Signer]:
    """Load every configured key; refuse duplicates (two lanes on one account would collide)."""
    env = os.environ if environ is None else environ
    signers: list[Signer] = []
    seen: dict[str, str] = {}
    for source in sources:
        try:
            if source.credential is not None:
                key = _credential(source.credential, env)
            elif source.keystore is not None and source.password_file is not None:
                key = load_keystore(source.keystore, source.password_file)
            else:
                raise SignerConfigError(
                    "a signer needs `keystore` and `password_file`, or `credential`"
                )
        except KeyLoadError as exc:
            raise SignerConfigError(f"{source.describe()}: {exc.message}", help=exc.help) from None
        if key.address in seen:
            raise SignerConfigError(
                f"{source.describe()} holds the same account as {seen[key.address]} "
                f"({key.address}); each signer must be a distinct account"
            )
        seen[key.address] = source.describe()
        signers.append(Signer(key))
    return signers
