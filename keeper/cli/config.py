"""`keeper check-config` and `keeper config show`: a configuration checked, and shown."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keeper.cli.common import Formatter, add_config, add_group, add_json


def cmd_check_config(args: argparse.Namespace) -> int:
    """Check a configuration, one line per check; exit 0 only when every check passes."""
    import anyio

    from keeper.chain import preflight

    def show(check: preflight.Check) -> None:
        text = check.detail.replace("\n", "\n" + " " * 20)
        line = f"{'ok' if check.ok else 'FAIL':<5} {check.name:<13} {text}"
        print(line, file=sys.stdout if check.ok else sys.stderr, flush=True)

    results = anyio.run(preflight.check_all, args.config, show)
    failed = [c for c in results if not c.ok]
    if failed:
        print(
            f"keeper check-config: {len(failed)} problem{'s' if len(failed) > 1 else ''} "
            f"in {args.config}; "
            + (
                "`keeper run` would not start with it"
                if any(c.stops_run for c in failed)
                else "`keeper run` would start, but without what it names"
            ),
            file=sys.stderr,
        )
        return 1
    print(f"{args.config}: all {len(results)} checks passed")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective configuration (file, environment, defaults), secrets masked."""
    import json

    from keeper.config_load import env_overrides, load_config
    from keeper.config_text import effective, to_toml

    data = effective(load_config(args.config))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    header = (
        f"The effective configuration of {args.config}: the file, KEEPER_ environment\n"
        "overrides (marked) and defaults. Secrets are masked: this text loads as a\n"
        "configuration, but its URLs must be filled in again to be used."
    )
    print(to_toml(data, overridden=env_overrides(), header=header), end="")
    return 0


def add_parsers(sub: Any) -> None:
    """`keeper check-config --config FILE` and `keeper config show --config FILE [--json]`."""
    check = sub.add_parser(
        "check-config",
        formatter_class=Formatter,
        help="check a configuration: file, deployment, keys, health port, database, chain",
        description=(
            "Check the configuration FILE the way `keeper run` would use it, and print one\n"
            "line per check: `ok` and what was found (stdout), or `FAIL` and the problem\n"
            "(stderr), each problem naming the field's path, the value found (never a\n"
            "secret) and what is expected. The checks, in order:\n"
            "  configuration  the file parses and every field is valid (environment\n"
            "                 overrides applied; unknown keys refused)\n"
            "  deployment     chain.deployment_file is readable, well-formed, its addresses\n"
            "                 valid (EIP-55 checksums), and for chain.chain_id if that is set\n"
            "  signers        every [[signers]] key loads (keystore + password file, or a\n"
            "                 systemd credential), each a distinct account\n"
            "  health         [health] host and port can be listened on (free, or served by\n"
            "                 a running keeper)\n"
            "  database       database.url is reachable; how many migrations are pending\n"
            "  chain          the RPC serves the deployment's chain, and the token,\n"
            "                 StreamManager and EscrowVault have code at the file's addresses\n"
            "It goes on after a failed check where the next one does not depend on it, so\n"
            "every problem shows at once. Nothing is written anywhere. Exit status 0 when all\n"
            "checks pass, 1 otherwise.\n\n"
            "Keys given as systemd credentials (`credential = NAME`) are read from\n"
            "$CREDENTIALS_DIRECTORY: set it to a directory holding them, or run the check as\n"
            "the service would, e.g. systemd-run --pipe --wait -p User=keeper\n"
            "-p LoadCredential=keys:/etc/keeper/keys/mainnet keeper check-config --config ..."
        ),
    )
    add_config(check)
    check.set_defaults(handler=cmd_check_config)

    config_sub = add_group(
        sub,
        "config",
        "the effective configuration: `config show`",
        "The keeper's configuration.",
    )
    show = config_sub.add_parser(
        "show",
        formatter_class=Formatter,
        help="print the effective configuration, secrets masked",
        description=(
            "Print the configuration `keeper run --config FILE` would use: the file's values,\n"
            "KEEPER_ environment overrides (each marked with its variable) and the defaults\n"
            "of every field left out, as TOML (or JSON with --json). Relative paths are shown\n"
            "resolved. Secrets are masked: RPC URLs show only scheme://host:port, the\n"
            "database URL its user, host and database name, each followed by `(masked)`.\n"
            "The output loads again as a configuration, with the URLs to be filled in.\n"
            "The deployment file and the keys are not read (see `keeper check-config`)."
        ),
    )
    add_config(show)
    add_json(show)
    show.set_defaults(handler=cmd_config_show)
