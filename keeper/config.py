"""Configuration: one TOML file, overridable by `KEEPER_` environment variables.

Models refuse unknown keys, so a typo is an error that names the field, not a silently ignored
setting. Environment overrides use `__` between levels: `KEEPER_DATABASE__URL`,
`KEEPER_CHAIN__RPC_URL`, `KEEPER_INGEST__POLL_INTERVAL`; a list is given as JSON:
`KEEPER_CHAIN__RPC_URLS='["https://a.example/KEY", "https://b.example/KEY"]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keeper.errors import PermanentError
from keeper.urls import (
    DATABASE_SCHEMES,
    RPC_SCHEMES,
    WS_SCHEMES,
    database_url_problem,
    url_problem,
)

if TYPE_CHECKING:
    # Imported where used: reading a configuration (`keeper config show`, and any command's
    # refusal of a bad file) then takes a fraction of a second instead of loading web3.
    from keeper.chain.deployment import Deployment
    from keeper.chain.rpc import ChainClient
    from keeper.chain.signers import KeySource


class ConfigError(PermanentError):
    """The configuration is not valid."""


class _Section(BaseModel):
    # No infinity or NaN in a duration or amount: `unknown_stream_grace = inf` passed and then
    # broke the start with an OverflowError.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# What `keeper config show` appends to a masked URL. Its output loads again as a configuration
# (its URLs to be filled in before use), so a masked URL is checked without the suffix.
MASKED = " (masked)"


def _checked_url(value: SecretStr, schemes: tuple[str, ...]) -> SecretStr:
    """`value` if it is a URL with one of `schemes`; else a ValueError saying what is wrong
    without quoting it."""
    text = value.get_secret_value().removesuffix(MASKED)
    problem = (
        database_url_problem(text) if schemes == DATABASE_SCHEMES else url_problem(text, schemes)
    )
    if problem is not None:
        raise ValueError(problem)
    return value


def _rpc_url(value: SecretStr) -> SecretStr:
    return _checked_url(value, RPC_SCHEMES)


# One entry of `chain.rpc_urls`, checked like `chain.rpc_url` (an error names its index).
RpcUrl = Annotated[SecretStr, AfterValidator(_rpc_url)]
MAX_RPC_URLS = 8


class ChainConfig(_Section):
    """`[chain]`: which chain, how to reach it, where the contracts are."""

    chain_id: int | None = Field(
        None, gt=0, description="Expected chain id (default: the deployment file's)."
    )
    name: str = Field("local", min_length=1, description="Human name shown in views and logs.")
    rpc_url: SecretStr | None = Field(
        None, description="HTTP JSON-RPC endpoint (may embed an API key); or rpc_urls."
    )
    rpc_urls: list[RpcUrl] | None = Field(
        None,
        min_length=1,
        max_length=MAX_RPC_URLS,
        description="Several HTTP JSON-RPC endpoints of the same chain, in order of preference "
        "(instead of rpc_url).",
    )
    ws_url: SecretStr | None = Field(None, description="Websocket endpoint for newHeads.")
    deployment_file: Path = Field(description="Deployment file written by `keeper deploy`.")
    rpc_timeout: float = Field(30.0, gt=0, description="Seconds before one RPC request fails.")
    rpc_attempts: int = Field(5, ge=1, le=20, description="Tries per request on transient errors.")
    rpc_max_lag_blocks: int = Field(
        5, ge=0, description="A provider whose head lags the best one's by more is demoted."
    )
    rpc_probe_interval: float = Field(
        10.0, gt=0, description="Seconds between background probes of every provider."
    )

    @field_validator("rpc_url")
    @classmethod
    def _rpc_url_form(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _rpc_url(v)

    @field_validator("rpc_urls")
    @classmethod
    def _distinct(cls, v: list[SecretStr] | None) -> list[SecretStr] | None:
        seen: dict[str, int] = {}
        for i, url in enumerate(v or []):
            text = url.get_secret_value()
            if text.endswith(MASKED):
                # `keeper config show` masks two keys of one host alike: placeholders.
                continue
            if text in seen:
                raise ValueError(
                    f"entries {seen[text]} and {i} are the same URL; expected each provider once"
                )
            seen[text] = i
        return v

    @model_validator(mode="after")
    def _one_rpc_field(self) -> ChainConfig:
        # The message names the fields itself (keeper.config_load shows it as it is).
        if self.rpc_url is None and self.rpc_urls is None:
            raise ValueError(
                "chain.rpc_url: required but not set, nor chain.rpc_urls; set one of them (in "
                "[chain] of the file, or as KEEPER_CHAIN__RPC_URL or KEEPER_CHAIN__RPC_URLS)"
            )
        if self.rpc_url is not None and self.rpc_urls is not None:
            raise ValueError(
                "chain.rpc_url and chain.rpc_urls: both are set; set exactly one of them "
                "(rpc_url for one provider, rpc_urls for several)"
            )
        return self

    @field_validator("ws_url")
    @classmethod
    def _ws_url_form(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _checked_url(v, WS_SCHEMES)

    @property
    def urls(self) -> list[str]:
        """The RPC providers' URLs (secret: never show one unredacted), in order."""
        if self.rpc_urls is not None:
            return [url.get_secret_value() for url in self.rpc_urls]
        assert self.rpc_url is not None  # _one_rpc_field
        return [self.rpc_url.get_secret_value()]

    @property
    def primary_url(self) -> str:
        """The first RPC provider's URL (for one-shot commands that need one node)."""
        return self.urls[0]

    @property
    def rpc_field(self) -> str:
        """The field the RPC providers are set in, for messages: chain.rpc_url(s)."""
        return "chain.rpc_url" if self.rpc_urls is None else "chain.rpc_urls"

    def client(self) -> ChainClient:
        """A JSON-RPC client over every provider with this section's timeout, retries and
        provider settings."""
        from keeper.chain.rpc import ChainClient

        return ChainClient(
            self.urls,
            timeout=self.rpc_timeout,
            attempts=self.rpc_attempts,
            max_lag_blocks=self.rpc_max_lag_blocks,
            probe_interval=self.rpc_probe_interval,
        )


class DatabaseConfig(_Section):
    """`[database]`."""

    url: SecretStr = Field(
        description="postgresql:// (or postgres://) URL of the keeper's database; special "
        "characters of the password percent-encoded."
    )
    pool_min: int = Field(1, ge=1, description="Connections kept open.")
    pool_max: int = Field(8, ge=1, description="Most connections open at once.")

    @field_validator("url")
    @classmethod
    def _url_form(cls, v: SecretStr) -> SecretStr:
        return _checked_url(v, DATABASE_SCHEMES)


class IngestConfig(_Section):
    """`[ingest]`: backfill and follow tuning (the indexer takes this section as it is)."""

    poll_interval: float = Field(1.0, gt=0, description="Seconds between head polls.")
    finality_depth: int = Field(
        64,
        ge=0,
        description="The finalized block is never closer to the head than this (the node's "
        "finalized tag counts only when lower).",
    )
    initial_range: int = Field(2_000, ge=1, description="First eth_getLogs range, in blocks.")
    min_range: int = Field(1, ge=1, description="Smallest range backfill shrinks to.")
    max_range: int = Field(200_000, ge=1, description="Largest range backfill grows to.")
    target_logs: int = Field(20_000, ge=100, description="Logs per response to aim for.")
    max_follow_step: int = Field(256, ge=1, description="Unfinalized blocks read per poll.")
    progress_interval: float = Field(5.0, gt=0, description="Seconds between progress lines.")
    recheck_delay: float = Field(0.25, ge=0, description="Pause before re-checking a reorg.")
    keep_blocks: int = Field(256, ge=0, description="Block rows kept below the finalized one.")
    check_log_blooms: bool = Field(
        True,
        description="Check the follow zone's logs against each header's logsBloom (an "
        "incomplete eth_getLogs answer is asked again); the block hash check stays on.",
    )
    partition_blocks: int = Field(
        10_000_000,
        ge=1,
        description="Blocks per partition of the event tables (the unit `keeper db "
        "archive-events` detaches); about a month of blocks suits most chains.",
    )

    @field_validator("max_range")
    @classmethod
    def _max_at_least_min(cls, v: int, info: Any) -> int:
        low = info.data.get("min_range", 1)
        if v < low:
            raise ValueError(f"must be >= min_range ({low})")
        return v


class SignerConfig(_Section):
    """`[[signers]]`: one key of the pool (a keystore with its password file, or a systemd
    credential name)."""

    keystore: Path | None = Field(None, description="Encrypted keystore JSON file.")
    password_file: Path | None = Field(None, description="File holding the keystore password.")
    credential: str | None = Field(
        None, description="File name in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)."
    )

    @field_validator("credential")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or v in ("", ".", "..")):
            raise ValueError("must be a plain file name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SignerConfig:
        if (self.credential is None) == (self.keystore is None):
            raise ValueError("set either `credential`, or `keystore` and `password_file`")
        if self.keystore is not None and self.password_file is None:
            raise ValueError("`keystore` needs `password_file`")
        return self

    def source(self) -> KeySource:
        """The key source for keeper.chain.signers."""
        from keeper.chain.signers import KeySource

        return KeySource(
            keystore=self.keystore, password_file=self.password_file, credential=self.credential
        )


class TxConfig(_Section):
    """`[tx]`: the transaction manager (amounts in wei)."""

    confirmations: int = Field(3, ge=1, description="Blocks deep before an intent is confirmed.")
    bump_after_blocks: int = Field(3, ge=1, description="Blocks unmined before a fee bump.")
    in_flight_cap: int = Field(16, ge=1, description="Unmined intents per signer at most.")
    max_fee_wei: int = Field(500 * 10**9, ge=0, description="Cap on the max fee per gas.")
    max_priority_fee_wei: int = Field(5 * 10**9, ge=0, description="Cap on the tip per gas.")
    tip_wei: int | None = Field(None, ge=0, description="Tip per gas; unset: ask the node.")
    legacy: bool = Field(False, description="Legacy gas price for chains without EIP-1559.")
    gas_margin_pct: int = Field(25, ge=0, le=500, description="Added to the gas estimate.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between passes.")
    min_signer_balance_wei: int = Field(
        0, ge=0, description="A signer below this balance gets no new work (and is reported)."
    )
    budget_per_hour_wei: int | None = Field(
        None, ge=0, description="Gas spend per hour; above it only urgent intents go out."
    )
    purge_after_blocks: int = Field(
        50, ge=1, description="A lane's lowest nonce stuck this long is purged by a self-send."
    )
    assign_batch: int = Field(64, ge=1, description="Planned intents assigned per pass at most.")
    replan_after_checks: int = Field(
        2, ge=1, description="Passes a nonce used outside the keeper is seen before re-planning."
    )
    fault_backoff: float = Field(
        30.0, gt=0, description="Seconds an intent waits after an unexpected error (doubling)."
    )


class PlanConfig(_Section):
    """`[plan]`: when work is due and how it is batched (amounts in token base units)."""

    interval: float = Field(5.0, gt=0, description="Seconds between planning passes.")
    settle_min_amount: int = Field(
        1_000_000, ge=0, description="A stream is due once it has accrued this much."
    )
    settle_max_interval: int = Field(
        86_400, gt=0, description="...or once it has not been settled for this many seconds."
    )
    settle_horizon: int = Field(
        3_600, ge=0, description="...or when it runs out within this many seconds (urgent)."
    )
    backoff_seconds: int = Field(
        600, ge=0, description="An item that reverted or had no effect waits this long."
    )
    max_batch_gas: int = Field(3_000_000, ge=100_000, description="Gas per batch transaction.")
    base_fee_ceiling_wei: int | None = Field(
        None, ge=0, description="Above this base fee only urgent work (depleting streams) goes out."
    )
    usage: bool = Field(
        True,
        description="Validate the usage inbox and send usage reports (every signer needs "
        "ORACLE_ROLE; without it usage is switched off with an error at start).",
    )
    usage_intake_per_pass: int = Field(
        5_000, gt=0, description="Usage inbox rows validated per planning pass."
    )
    unknown_stream_grace: float = Field(
        300.0,
        ge=0,
        description="Seconds a usage row naming a stream above the highest indexed id waits "
        "(the indexer may not have reached it) before it is rejected as unknown.",
    )
    pass_connections: Literal[1, 3] = Field(
        3,
        description="Database connections one planning pass uses at once: 3 runs the usage "
        "intake, the settle and refund planning and the usage planning side by side when "
        "the pool has them idle; 1 runs them one after the other.",
    )


class HealthConfig(_Section):
    """`[health]`: the read-only health and metrics port."""

    enabled: bool = Field(True, description="Serve /healthz, /readyz, /metrics and /status.")
    host: str = Field("127.0.0.1", min_length=1, description="Address the port listens on.")
    port: int = Field(9464, ge=0, le=65535, description="TCP port (0: any free port).")
    max_lag_seconds: float = Field(
        120.0, gt=0, description="/readyz fails when the index lags the head by more (chain time)."
    )


class DaemonConfig(_Section):
    """`[daemon]`: process behaviour under systemd and next to other keepers."""

    shutdown_grace: float = Field(
        10.0,
        gt=0,
        description="Seconds a SIGTERM gives the loops to finish their pass before the rest "
        "is cancelled (its open transactions roll back).",
    )
    leader_lease: float = Field(
        15.0,
        ge=1,
        description="Seconds within which a standby takes over from a leader that died or lost "
        "its database session; the leader steps down when it cannot confirm its lock as long.",
    )


# keeper.settlement_totals counts the batch items checked in its longest window, 30 days: rows
# younger than that must stay in the live tables.
MIN_KEEP_DAYS = 30


class RetentionConfig(_Section):
    """`[retention]`: finished intents (with their attempts and items) and reconciled usage rows
    leave the live tables once old enough (README, "Retention"); only the leader retires."""

    enabled: bool = Field(True, description="Retire old rows in the background.")
    keep_days: int = Field(
        90,
        description=f"Days a finished intent or reconciled usage row is kept (at least "
        f"{MIN_KEEP_DAYS}: keeper.settlement_totals reads 30 days of batch items).",
    )
    mode: str = Field(
        "archive",
        pattern="^(archive|delete)$",
        description="archive: move the rows into schema `archive`; delete: delete them.",
    )
    batch_rows: int = Field(
        1_000,
        ge=1,
        le=100_000,
        description="Intents or usage rows per batch (each batch is one short transaction).",
    )
    interval: float = Field(3_600.0, gt=0, description="Seconds between retention runs.")
    batch_pause: float = Field(
        0.1, ge=0, description="Seconds between two batches of a run (room for the planner)."
    )

    @field_validator("keep_days")
    @classmethod
    def _long_enough(cls, v: int) -> int:
        if v < MIN_KEEP_DAYS:
            raise ValueError(
                f"must be at least {MIN_KEEP_DAYS} (days): keeper.settlement_totals counts "
                f"the batch items of the last {MIN_KEEP_DAYS} days, which must still be there"
            )
        return v


class LogConfig(_Section):
    """`[log]`."""

    level: str = Field("info", pattern="^(debug|info|warning|error)$", description="Lowest level.")
    format: str = Field(
        "auto", pattern="^(auto|json|console)$", description="auto: JSON unless on a terminal."
    )


class KeeperConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="KEEPER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    chain: ChainConfig
    database: DatabaseConfig
    ingest: IngestConfig = IngestConfig()
    tx: TxConfig = TxConfig()
    plan: PlanConfig = PlanConfig()
    signers: list[SignerConfig] = Field(
        default_factory=list, description="The signer pool; none: index only, send nothing."
    )
    log: LogConfig = LogConfig()
    health: HealthConfig = HealthConfig()
    daemon: DaemonConfig = DaemonConfig()
    retention: RetentionConfig = RetentionConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the file's values."""
        return env_settings, init_settings

    def deployment(self) -> Deployment:
        """The deployment file the configuration points at, checked against `chain.chain_id`.

        Raises `ConfigError` naming `chain.deployment_file` (unreadable, malformed, a bad
        address) or `chain.chain_id` (the file is for another chain).
        """
        from keeper.chain.deployment import Deployment, DeploymentFileError

        path = self.chain.deployment_file
        try:
            deployment = Deployment.read(path)
        except DeploymentFileError as exc:
            raise ConfigError(f"chain.deployment_file: {exc.message}", help=exc.help) from exc
        expected = self.chain.chain_id
        if expected is not None and expected != deployment.chain_id:
            raise ConfigError(
                f"chain.chain_id: {expected} does not match chain.deployment_file {path}, "
                f"which is for chain {deployment.chain_id}; expected both to name one chain",
                help="point chain.deployment_file at this chain's deployment, or fix (or "
                "remove) chain.chain_id",
            )
        return deployment


# ------------------------------------------------------------------ loading
