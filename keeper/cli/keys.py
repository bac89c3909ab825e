"""`keeper keys new`: a signer key made for the keeper, encrypted, with its password file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from keeper.cli.common import Formatter, add_group


def password_path(keystore: Path) -> Path:
    """The password file next to `keystore`: `signer1.json` → `signer1.password`, and a
    credential-style name `signer1` → `signer1.password` (as systemd credentials pair them)."""
    name = keystore.name.removesuffix(".json")
    return keystore.with_name(f"{name}.password")


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Make a key: a keystore and its password file, both mode 0600; print the address."""
    from keeper.chain.keys import new_keystore

    password_file: Path = args.password_file or password_path(args.keystore)
    key = new_keystore(args.keystore, password_file)
    # stdout holds the address alone, for scripts (ADDR=$(keeper keys new ...)).
    print(key.address)
    print(
        f"wrote {args.keystore} (the encrypted key) and {password_file} (its password), both "
        "mode 0600; back both up.\n"
        "To use the key as a signer, add to the configuration:\n"
        "  [[signers]]\n"
        f'  keystore = "{args.keystore.resolve()}"\n'
        f'  password_file = "{password_file.resolve()}"\n'
        "then fund the address with gas and, for usage reports, grant it ORACLE_ROLE:\n"
        f"  keeper roles grant oracle {key.address} --config FILE --keystore ADMIN.json "
        "--password-file ADMIN.password",
        file=sys.stderr,
    )
    return 0


def add_parser(sub: Any) -> None:
    """`keeper keys new KEYSTORE [--password-file FILE]`."""
    keys_sub = add_group(
        sub,
        "keys",
        "signer keys: `keys new` makes an encrypted keystore and its password file",
        "The keeper's signer keys.",
    )
    new = keys_sub.add_parser(
        "new",
        formatter_class=Formatter,
        help="make a new key: an encrypted keystore and its password file",
        description=(
            "Make a new random private key and write it encrypted to KEYSTORE (a V3 keystore\n"
            "JSON with scrypt, as geth and cast write them), with a random password written\n"
            "to the password file. Both files are created with mode 0600 (a missing directory\n"
            "with 0700); an existing file is never overwritten (exit 1, nothing written).\n"
            "The key and the password are never printed. The address goes to stdout, how to\n"
            "configure the key as a signer to stderr.\n\n"
            "The pair is what a [[signers]] table names (keystore, password_file), and what\n"
            "systemd credentials hold: `keys new /etc/keeper/keys/mainnet/signer2` writes\n"
            "signer2 and signer2.password, the credentials keys_signer2 and\n"
            "keys_signer2.password of keeper@mainnet.service."
        ),
    )
    new.add_argument(
        "keystore",
        type=Path,
        metavar="KEYSTORE",
        help="the keystore file to create, e.g. keys/signer2.json",
    )
    new.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="the password file to create; default: KEYSTORE without .json, plus .password",
    )
    new.set_defaults(handler=cmd_keys_new)
