"""`keeper roles show|grant|revoke`: the contracts' access roles, read and changed on chain."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from keeper.cli.common import (
    CONFIG_HELP,
    Formatter,
    add_config,
    add_group,
    add_json,
    add_key_options,
    load_key,
)

if TYPE_CHECKING:
    from keeper.config import KeeperConfig
    from keeper.ops.roles import RoleBook


def _role(text: str) -> str:
    from keeper.ops.roles import CHANGEABLE, role_name

    try:
        name = role_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name not in CHANGEABLE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: only {' and '.join(CHANGEABLE)} are granted and revoked here"
        )
    return name


def _address(text: str) -> str:
    from keeper.ops.roles import checked_address

    try:
        return checked_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connect(args: argparse.Namespace) -> tuple[KeeperConfig, RoleBook]:
    from keeper.config_load import load_config
    from keeper.ops.roles import RoleBook

    config = load_config(args.config)
    return config, RoleBook.connect(config.chain.primary_url, config.deployment())


def _known_accounts(config: KeeperConfig) -> dict[str, list[str]]:
    """The deployment's deployer and oracle and the configured signers (whose keys load)."""
    from keeper.chain.signers import check_signers

    deployment = config.deployment()
    named: dict[str, list[str]] = {}
    named.setdefault(deployment.deployer, []).append("deployer")
    named.setdefault(deployment.oracle, []).append("oracle")
    signers, problems = check_signers([s.source() for s in config.signers])
    for problem in problems:
        print(f"keeper roles show: not shown: {problem.message}", file=sys.stderr)
    for index, signer in enumerate(signers):
        named.setdefault(signer.address, []).append(f"signer {index}")
    return named


def cmd_roles_show(args: argparse.Namespace) -> int:
    """Print which roles each account holds on StreamManager and EscrowVault."""
    import json

    config, book = _connect(args)
    named = (
        {address: ["given"] for address in args.accounts}
        if args.accounts
        else _known_accounts(config)
    )
    rows = [
        {"address": address, "named_as": names, **book.held(address)}
        for address, names in named.items()
    ]
    d = book.deployment
    if args.json:
        print(json.dumps({"chain_id": d.chain_id, "accounts": rows}, indent=2))
        return 0
    print(f"chain {d.chain_id}: StreamManager {d.stream_manager}, EscrowVault {d.escrow_vault}")
    print(f"{'account':<42}  {'named as':<20}  {'StreamManager':<22}  EscrowVault")
    for row in rows:
        held = [" ".join(row[key]) or "-" for key in ("stream_manager", "escrow_vault")]
        print(f"{row['address']:<42}  {', '.join(row['named_as']):<20}  {held[0]:<22}  {held[1]}")
    return 0


def cmd_roles_change(args: argparse.Namespace) -> int:
    """Grant or revoke a role; print what was sent and the role as the chain now has it."""
    from keeper.ops.roles import CONTRACTS

    grant = args.roles_command == "grant"
    key = load_key(args)
    _, book = _connect(args)
    verb = "granting" if grant else "revoking"
    print(f"{verb} {args.role} for {args.account}, signed by {key.address}", file=sys.stderr)
    contracts = [args.contract] if args.contract else None
    for change in book.change(key, args.role, args.account, grant=grant, contracts=contracts):
        state = "holds" if change.holds else "does not hold"
        sent = f"transaction {change.tx_hash}" if change.tx_hash else "already so, nothing sent"
        print(f"{CONTRACTS[change.contract]}: {change.account} {state} {change.role} ({sent})")
    return 0


def add_parser(sub: Any) -> None:
    """`keeper roles show|grant|revoke`."""
    roles_sub = add_group(
        sub,
        "roles",
        "contract roles: show, grant and revoke ORACLE_ROLE and PAUSER_ROLE",
        "The access roles of the deployment's StreamManager and EscrowVault, on chain:\n"
        "  admin   DEFAULT_ADMIN_ROLE: grants and revokes the other roles, sets the fee\n"
        "  oracle  ORACLE_ROLE (StreamManager): may record usage; every signer of a keeper\n"
        "          that reports usage needs it\n"
        "  pauser  PAUSER_ROLE (both contracts): may pause and unpause\n"
        "The contracts and the chain are those of --config FILE (chain.rpc_url,\n"
        "chain.deployment_file).",
    )
    show = roles_sub.add_parser(
        "show",
        formatter_class=Formatter,
        help="the roles of the given accounts, or of the deployment's and the signers'",
        description=(
            "Print, per account, the roles it holds on StreamManager and EscrowVault, read\n"
            "from the contracts (hasRole) at the node's latest block. Without ADDRESS: the\n"
            "deployment file's deployer and oracle, and every [[signers]] key of the\n"
            "configuration that loads (a key that does not is named on stderr). Nothing is\n"
            "sent; no key is needed."
        ),
    )
    add_config(show, CONFIG_HELP)
    show.add_argument(
        "accounts", nargs="*", type=_address, metavar="ADDRESS", help="accounts to show"
    )
    add_json(show)
    show.set_defaults(handler=cmd_roles_show)

    for name, verb, to in (("grant", "Grant", "to"), ("revoke", "Revoke", "from")):
        change = roles_sub.add_parser(
            name,
            formatter_class=Formatter,
            help=f"{name} oracle or pauser {to} an account (signed by an admin's key)",
            description=(
                f"{verb} ROLE (oracle: ORACLE_ROLE on StreamManager; pauser: PAUSER_ROLE on\n"
                "StreamManager and EscrowVault, or the one --contract names) for ADDRESS, in\n"
                "a transaction signed by a key holding DEFAULT_ADMIN_ROLE (the deployer's,\n"
                "unless it was handed on), read from exactly one of --key-file, --key-env or\n"
                "--keystore; the key is never printed. A contract where the role is already as\n"
                "asked gets no transaction. Each transaction waits for its receipt, then the\n"
                "role is read back from the chain and printed. Exit status 0 when ADDRESS\n"
                f"{'holds' if name == 'grant' else 'no longer holds'} the role everywhere, 1 "
                "otherwise (e.g. the key is not an admin)."
            ),
        )
        change.add_argument(
            "role", type=_role, metavar="ROLE", help="oracle or pauser (ORACLE_ROLE, PAUSER_ROLE)"
        )
        change.add_argument("account", type=_address, metavar="ADDRESS", help="the account")
        add_config(change, CONFIG_HELP)
        add_key_options(change, "the admin")
        change.add_argument(
            "--contract",
            choices=["stream_manager", "escrow_vault"],
            help="only this contract; default: each contract that has the role",
        )
        change.set_defaults(handler=cmd_roles_change)
