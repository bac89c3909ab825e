"""The signer pool's keys: where they come from and how they are held.

A key is configured as either an encrypted keystore file with a password file, or a systemd
credential: a file named in `$CREDENTIALS_DIRECTORY` (filled by `LoadCredential=` in the unit),
holding the key as hex or a keystore JSON (then `<name>.password` holds its password). Keys are
held as `keeper.chain.keys.PrivateKey`, whose repr shows only the address; errors name the file or
credential that failed, never its content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keeper.chain.keys import KeyLoadError, PrivateKey, load_key_file, load_keystore
from keeper.errors import PermanentError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SignerConfigError(PermanentError):
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


def _load(source: KeySource, env: Mapping[str, str]) -> PrivateKey:
    if source.credential is not None:
        return _credential(source.credential, env)
    if source.keystore is not None and source.password_file is not None:
        return load_keystore(source.keystore, source.password_file)
    raise SignerConfigError("a signer needs `keystore` and `password_file`, or `credential`")


def check_signers(
    sources: Sequence[KeySource], environ: Mapping[str, str] | None = None
) -> tuple[list[Signer], list[SignerConfigError]]:
    """Load every configured key; return the signers loaded and a problem per key that was not.

    Each problem names the configuration field (`signers.<n>.keystore`, `.password_file`,
    `.credential`), the file and what is wrong, never the key. Two sources holding the same
    account are a problem too (two lanes on one account would collide).
    """
    env = os.environ if environ is None else environ
    signers: list[Signer] = []
    problems: list[SignerConfigError] = []
    seen: dict[str, str] = {}
    for index, source in enumerate(sources):
        where = f"signers.{index}"
        try:
            key = _load(source, env)
        except KeyLoadError as exc:
            if source.credential is not None:
                # The message names the file inside $CREDENTIALS_DIRECTORY; say which credential.
                message = f"{where}.credential: {source.describe()}: {exc.message}"
            elif exc.file_role in ("keystore", "password_file"):
                message = f"{where}.{exc.file_role}: {exc.message}"
            else:
                message = f"{where}: {exc.message}"
            problems.append(SignerConfigError(message, help=exc.help))
            continue
        except SignerConfigError as exc:
            field = f"{where}.credential" if source.credential is not None else where
            problems.append(SignerConfigError(f"{field}: {exc.message}", help=exc.help))
            continue
        if key.address in seen:
            problems.append(
                SignerConfigError(
                    f"{where}: {source.describe()} holds the same account as {seen[key.address]} "
                    f"({key.address}); each signer must be a distinct account"
                )
            )
            continue
        seen[key.address] = f"{where} ({source.describe()})"
        signers.append(Signer(key))
    return signers, problems


def load_signers(
    sources: Sequence[KeySource], environ: Mapping[str, str] | None = None
) -> list[Signer]:
    """Load every configured key; raise the first problem `check_signers` finds."""
    signers, problems = check_signers(sources, environ)
    if problems:
        raise problems[0] from None
    return signers
