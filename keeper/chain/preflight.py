"""Checks of a configuration against the world: the key files, the health port, the database
and the chain.

`check_chain` is what `keeper run` asks before it starts and `keeper check-config` after its
static checks: that the RPC serves the chain the deployment file is for, and that the
contracts the file names are there. With several RPC providers (`chain.rpc_urls`) each one's
chain id is checked: check-config fails on any provider that serves another chain or cannot
be reached; at start such a provider is excluded (or reported, when unreachable) and the
keeper goes on with the others, as long as one serves the chain.

`check_all` is `keeper check-config`: every check in turn, going on after a failure where the
next check does not depend on it, so that the operator sees every problem at once. Each problem
is a `ConfigError` whose message starts with the field's path and says the value found and what
was expected; RPC providers are shown by their redacted labels (scheme://host:port), database
URLs without their password.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import asyncpg
import structlog
from eth_utils import keccak

from keeper import db, ports, secrets
from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import signers_without_oracle_role
from keeper.chain.rpc import ChainClient, RpcError, RpcResponseError
from keeper.chain.signers import check_signers
from keeper.config import ConfigError, KeeperConfig
from keeper.config_load import env_overrides, load_config
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.resources import migration_files

log = structlog.get_logger(__name__)

HEALTHZ_TIMEOUT = 2.0  # seconds for a keeper on the health port to answer /healthz
# The contracts of a deployment the keeper needs code at, as the deployment file names them.
CONTRACTS = ("token", "stream_manager", "escrow_vault")
# token(): the immutable token of StreamManager and of EscrowVault.
_TOKEN_SELECTOR = "0x" + keccak(text="token()")[:4].hex()


@dataclass(frozen=True)
class ChainFacts:
    """What `check_chain` found: the chain id, the head block the checks ran at, and the
    providers (redacted labels) that serve the chain."""

    chain_id: int
    head: int
    providers: tuple[str, ...] = ()


def _expected_chain(config: KeeperConfig, deployment: Deployment | None) -> tuple[int, str]:
    """The chain id the RPC must serve, and where that expectation comes from."""
    if config.chain.chain_id is not None:
        return config.chain.chain_id, "chain.chain_id"
    assert deployment is not None
    return deployment.chain_id, f"the deployment file {config.chain.deployment_file}"


async def check_rpc_chain_id(
    config: KeeperConfig, deployment: Deployment | None, client: ChainClient
) -> int:
    """The RPC's chain id; `ConfigError` if it is not the configured one (`chain.chain_id`, else
    the deployment file's). Raises `RpcError` when the RPC cannot be reached. With several
    providers, as `check_providers` at start."""
    chain_id, _ = await check_providers(config, deployment, client)
    return chain_id


async def check_providers(
    config: KeeperConfig,
    deployment: Deployment | None,
    client: ChainClient,
    *,
    strict: bool = False,
) -> tuple[int, tuple[str, ...]]:
    """The configured chain id and the providers (labels) that serve it.

    One provider: `ConfigError` if it serves another chain, `RpcError` if it cannot be reached.
    Several: each is asked. `strict` (check-config): any provider serving another chain or out
    of reach is a `ConfigError` naming it. Else (a start): such a provider is excluded from
    `client` (logged `rpc_provider_excluded`) or, out of reach, reported
    (`rpc_provider_unreachable`), and the start goes on; only when none serves the chain is it
    an error: `ConfigError` if one serves another chain, else the `RpcError`.
    """
    expected, origin = _expected_chain(config, deployment)
    labels = client.labels
    if len(labels) == 1:
        actual = await client.chain_id()
        if actual != expected:
            raise _wrong_chain(config, [(labels[0], actual)], expected, origin)
        return actual, (labels[0],)
    answers = await _chain_ids(client)
    serving = tuple(label for label, a in answers if a == expected)
    wrong = [(label, a) for label, a in answers if isinstance(a, int) and a != expected]
    unreachable = [(label, a) for label, a in answers if isinstance(a, RpcError)]
    if strict and (wrong or unreachable):
        raise _provider_problems(config, wrong, unreachable, expected, origin)
    if not serving:
        if wrong:
            raise _wrong_chain(config, wrong, expected, origin)
        raise unreachable[0][1]
    for label, actual in wrong:
        reason = f"serves chain {actual}, expected {expected}"
        client.exclude(label, reason)
        log.error("rpc_provider_excluded", provider=label, chain_id=actual, expected=expected)
    for label, exc in unreachable:
        log.warning(
            "rpc_provider_unreachable",
            provider=label,
            error=secrets.scrub(str(exc)),
            help=(
                f"the keeper goes on with the {len(serving)} provider(s) serving chain {expected}"
            ),
        )
    return expected, serving


async def _chain_ids(client: ChainClient) -> list[tuple[str, int | RpcError]]:
    """Each provider's chain id, or why it could not be had, asked all at once (a provider out
    of reach takes its retries; the others need not wait for it)."""
    providers = client.each()
    answers: list[int | RpcError] = [RpcError("not asked")] * len(providers)

    async def ask(i: int, one: ChainClient) -> None:
        try:
            answers[i] = await one.chain_id()
        except RpcError as exc:
            answers[i] = exc

    async with anyio.create_task_group() as tg:
        for i, (_, one) in enumerate(providers):
            tg.start_soon(ask, i, one)
    return [(label, a) for (label, _), a in zip(providers, answers, strict=True)]


def _wrong_chain(
    config: KeeperConfig, wrong: list[tuple[str, int]], expected: int, origin: str
) -> ConfigError:
    """The error for providers serving another chain (one: the message of a single RPC)."""
    if config.chain.rpc_urls is None:
        where = f"the RPC at {wrong[0][0]} reports chain {wrong[0][1]}"
        field = "chain.chain_id"
    else:
        where = "; ".join(f"the RPC at {label} reports chain {a}" for label, a in wrong)
        field = config.chain.rpc_field
    return ConfigError(
        f"{field}: {where}, expected {expected} (from {origin})",
        help=f"point {config.chain.rpc_field} at the network the contracts are deployed on, or "
        "chain.deployment_file at this network's deployment",
    )


def _provider_problems(
    config: KeeperConfig,
    wrong: list[tuple[str, int]],
    unreachable: list[tuple[str, RpcError]],
    expected: int,
    origin: str,
) -> ConfigError:
    """check-config's error for providers that serve another chain or cannot be reached."""
    found = [f"the RPC at {label} reports chain {a}, expected {expected}" for label, a in wrong]
    found += [f"the RPC at {label} cannot be reached: {exc}" for label, exc in unreachable]
    return ConfigError(
        f"{config.chain.rpc_field}: {'; '.join(found)} (chain {expected} from {origin})",
        help=f"fix or remove those entries of {config.chain.rpc_field}; `keeper run` would "
        "go on without them",
    )


async def check_chain(
    config: KeeperConfig, deployment: Deployment, client: ChainClient, *, strict: bool = False
) -> ChainFacts:
    """Check that the RPC serves the deployment's chain and that its contracts are there.

    In order, stopping at the first problem (each needs the one before): the chain id (of every
    provider, `check_providers`: `strict` for check-config); the
    deployment block not above the head (a reset dev chain); code at the token, StreamManager
    and EscrowVault addresses at the head block (`eth_getCode`, one batch); and StreamManager
    and EscrowVault reporting the deployment's token (`token()`, one batch), so a file pointing
    at other contracts is caught. Raises `ConfigError` (a `KeeperError`) naming the field, the
    value found and what was expected, or an `RpcError` when the RPC cannot be reached.
    """
    chain_id, providers = await check_providers(config, deployment, client, strict=strict)
    where = f"on chain {chain_id}"
    source = f"(from the deployment file {config.chain.deployment_file})"
    head = (await client.head()).number
    if deployment.deployment_block > head:
        raise ConfigError(
            f"chain.deployment_file: deployment_block {deployment.deployment_block} is above "
            f"the head block {head} {where}; expected a block the chain has {source}",
            help="the chain was reset (a restarted dev chain?) or the deployment file is for "
            "another network: redeploy, or point chain.deployment_file at the right file",
        )
    tag = hex(head)
    addresses = {name: str(getattr(deployment, name)) for name in CONTRACTS}
    codes = await client.batch([("eth_getCode", [a, tag]) for a in addresses.values()])
    empty = [
        f"{name} {address}"
        for (name, address), code in zip(addresses.items(), codes, strict=True)
        if not _has_code(code)
    ]
    if empty:
        raise ConfigError(
            f"chain.deployment_file: no contract code at {', '.join(empty)} {where} at block "
            f"{head}; expected the deployed contracts {source}",
            help="the contracts are not deployed at these addresses on this chain: check "
            "chain.rpc_url and chain.deployment_file, or redeploy with `keeper deploy`",
        )
    await _check_token(deployment, client, tag, where, source)
    await _check_gas_cap(config, client, tag, where)
    return ChainFacts(chain_id=chain_id, head=head, providers=providers)


# EIP-7825 (Osaka) caps a transaction's gas limit at 2^24; Hardhat's node enforces it too, and a
# batch never needs more. The keeper holds max_batch_gas under it on every chain.
TX_GAS_CAP = 2**24


async def _check_gas_cap(config: KeeperConfig, client: ChainClient, tag: str, where: str) -> None:
    """`plan.max_batch_gas` must fit a transaction on this chain: under the per-transaction cap
    (EIP-7825) and the head block's gas limit. A batch above either is refused by the node, and
    would be planned again and refused again."""
    block = await client.request("eth_getBlockByNumber", [tag, False])
    limit = int(str((block or {}).get("gasLimit") or "0x0"), 16)
    cap = min(TX_GAS_CAP, limit) if limit else TX_GAS_CAP
    wanted = config.plan.max_batch_gas
    if wanted > cap:
        which = "per-transaction gas cap (EIP-7825)" if cap == TX_GAS_CAP else "block gas limit"
        raise ConfigError(
            f"plan.max_batch_gas: {wanted:,} is above the {which} of {cap:,} {where}; expected "
            f"at most {cap:,}",
            help="lower plan.max_batch_gas (3,000,000 is the default; larger batches save "
            "little gas per item)",
        )


def _has_code(code: object) -> bool:
    """Whether an eth_getCode answer holds any code ("0x", or null from some nodes: none)."""
    text = str(code or "0x").removeprefix("0x")
    return bool(text) and int(text, 16) != 0


async def _check_token(
    deployment: Deployment, client: ChainClient, tag: str, where: str, source: str
) -> None:
    """StreamManager and EscrowVault must both hold the deployment's token."""
    for name in ("stream_manager", "escrow_vault"):
        address = str(getattr(deployment, name))
        try:
            answer = await client.request(
                "eth_call", [{"to": address, "data": _TOKEN_SELECTOR}, tag]
            )
        except RpcResponseError as exc:
            if not exc.reverted:
                raise  # the node failing, not the contract answering: waited out at start-up
            answer = None
        raw = bytes.fromhex(str(answer or "0x")[2:])
        if len(raw) != 32:
            raise ConfigError(
                f"chain.deployment_file: {name} {address} {where} does not answer token(); "
                f"expected a keeper {name} contract {source}",
                help="the address holds some other contract: check the deployment file",
            )
        token = "0x" + raw[-20:].hex()
        if token != deployment.token.lower():
            raise ConfigError(
                f"chain.deployment_file: {name} {address} {where} holds token {token}, "
                f"expected token {deployment.token} {source}",
                help="the deployment file mixes addresses of two deployments",
            )


# --------------------------------------------------------------------------- keeper check-config


@dataclass(frozen=True)
class Check:
    """The outcome of one check: `ok`, and what was found or what is wrong."""

    name: str
    ok: bool
    detail: str
    # False for a problem `keeper run` starts with, running without what it names.
    stops_run: bool = True


async def database_schema(conn: asyncpg.Connection) -> str:
    """The migration state of the database, in words; `ConfigError` when this keeper could not
    run against it (a migration it does not ship, or one changed since it was applied)."""
    shipped = [name for name, _ in migration_files()]
    try:
        rows = await conn.fetch(load_queries()["applied_migrations"])
    except asyncpg.UndefinedTableError:
        rows = []
    applied = {str(r["name"]) for r in rows}
    unknown = sorted(applied - set(shipped))
    if unknown:
        raise ConfigError(
            f"database.url: the database has migration {unknown[0]} applied, which this "
            "keeper does not ship; expected a database migrated by this version or an older one",
            help="upgrade this keeper, or point database.url at its own database",
        )
    pending = [n for n in shipped if n not in applied]
    if not pending:
        return f"schema up to date ({len(shipped)} migrations)"
    return (
        f"{len(pending)} of {len(shipped)} migrations not applied yet (`keeper run` or "
        "`keeper migrate --config` applies them)"
    )


async def check_all(path: Path, report: Callable[[Check], None]) -> list[Check]:
    """Run every check of `keeper check-config` on the configuration at `path`, handing each
    outcome to `report` as soon as it is known; return them all."""
    results: list[Check] = []

    def record(name: str, ok: bool, detail: str) -> None:
        # A provider's or a driver's message can quote a secret (a request path with its key).
        check = Check(name, ok, secrets.scrub(detail), stops_run=name != "usage")
        results.append(check)
        report(check)

    try:
        config = load_config(path)
    except ConfigError as exc:
        record("configuration", False, str(exc))
        return results  # nothing else can be checked without it
    overridden = sorted(env_overrides())
    from_env = f" (from the environment: {', '.join(overridden)})" if overridden else ""
    record("configuration", True, f"{path}{from_env}")

    deployment: Deployment | None = None
    try:
        deployment = config.deployment()
    except KeeperError as exc:
        record("deployment", False, str(exc))
    else:
        record(
            "deployment",
            True,
            f"{config.chain.deployment_file}: chain {deployment.chain_id}, token "
            f"{deployment.token}, stream_manager {deployment.stream_manager}, escrow_vault "
            f"{deployment.escrow_vault}, from block {deployment.deployment_block}",
        )

    signers, problems = check_signers([s.source() for s in config.signers])
    for signer in signers:
        secrets.register_key(signer.key.reveal_hex())  # registered, never shown
    for problem in problems:
        record("signers", False, str(problem))
    if not problems:
        record("signers", True, _signers_text([s.address for s in signers]))

    ok, detail = await health_port(config)
    record("health", ok, detail)

    dsn = config.database.url.get_secret_value()
    try:
        conn = await db.connect(dsn, timeout=config.chain.rpc_timeout)
        try:
            schema = await database_schema(conn)
        finally:
            await conn.close()
    except KeeperError as exc:
        record("database", False, str(exc))
    else:
        record("database", True, f"{db.redact_dsn(dsn)}: reachable, {schema}")

    client = config.chain.client()
    try:
        if deployment is not None:
            facts = await check_chain(config, deployment, client, strict=True)
            record(
                "chain",
                True,
                f"{_serving(facts.providers, facts.chain_id)} (head {facts.head}); the token, "
                "StreamManager and EscrowVault are deployed there",
            )
            if signers and config.plan.usage:
                record(*await _usage_billing(client, deployment, [s.address for s in signers]))
        elif config.chain.chain_id is not None:
            # Without a deployment file, the chain id is all that can be checked.
            chain_id, providers = await check_providers(config, None, client, strict=True)
            record("chain", True, _serving(providers, chain_id))
    except RpcError as exc:
        record("chain", False, f"{config.chain.rpc_field}: {exc}")
    except KeeperError as exc:
        record("chain", False, str(exc))
    finally:
        await client.close()
    return results


def _serving(providers: Sequence[str], chain_id: int) -> str:
    """check-config's words for the providers serving the chain (redacted labels)."""
    if len(providers) == 1:
        return f"the RPC at {providers[0]} serves chain {chain_id}"
    return f"{len(providers)} RPC providers serve chain {chain_id} ({', '.join(providers)})"


async def _usage_billing(
    client: ChainClient, deployment: Deployment, addresses: list[str]
) -> tuple[str, bool, str]:
    """The usage billing check: every signer holds ORACLE_ROLE (else `keeper run` switches
    usage billing off)."""
    lacking = await signers_without_oracle_role(client, deployment.stream_manager, addresses)
    if not lacking:
        return "usage", True, "usage billing: every signer holds ORACLE_ROLE on StreamManager"
    return (
        "usage",
        False,
        f"signers: {', '.join(lacking)} lack ORACLE_ROLE on StreamManager "
        f"{deployment.stream_manager}, so `keeper run` would switch usage billing off; grant "
        "it to every signer, or set plan.usage = false",
    )


async def health_port(config: KeeperConfig) -> tuple[bool, str]:
    """Whether `keeper run` could listen on `[health]` host and port, and what was found. A port
    taken by a keeper (its /healthz answers `ok`) passes: this configuration's own daemon,
    running; a second one on this machine would need another port."""
    health = config.health
    if not health.enabled:
        return True, "disabled ([health] enabled = false)"
    try:
        return True, f"{ports.check(health.host, health.port)} is free"
    except ports.PortUnavailable as exc:
        if exc.in_use and await _answers_healthz(health.host, health.port):
            return True, (
                f"{health.host}:{health.port} is served by a running keeper (its /healthz "
                "answers ok); a second keeper on this machine needs another health.port"
            )
        return False, str(exc)


async def _answers_healthz(host: str, port: int) -> bool:
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/healthz"
    try:
        timeout = aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as answer:
            return answer.status == 200 and (await answer.text()) == "ok\n"
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return False


def _signers_text(addresses: Sequence[str]) -> str:
    if not addresses:
        return "none configured: the keeper indexes and sends nothing"
    return f"{len(addresses)} key{'s' if len(addresses) > 1 else ''}: {', '.join(addresses)}"
