"""Configuration: one TOML file, overridable by `KEEPER_` environment variables.

Models refuse unknown keys, so a typo is an error that names the field, not a silently ignored
setting. Environment overrides use `__` between levels: `KEEPER_DATABASE__URL`,
`KEEPER_CHAIN__RPC_URL`, `KEEPER_INGEST__POLL_INTERVAL`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keeper.deploy import Deployment
from keeper.errors import KeeperError
from keeper.ingest import IngestSettings


class ConfigError(KeeperError):
    """The configuration is not valid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainConfig(_Section):
    """`[chain]`: which chain, how to reach it, where the contracts are."""

    chain_id: int | None = Field(
        None, gt=0, description="Expected chain id (default: the deployment file's)."
    )
    name: str = Field("local", min_length=1, description="Human name shown in views and logs.")
    rpc_url: SecretStr = Field(description="HTTP JSON-RPC endpoint (may embed an API key).")
    ws_url: SecretStr | None = Field(None, description="Websocket endpoint for newHeads.")
    deployment_file: Path = Field(description="Deployment file written by `keeper deploy`.")
    rpc_timeout: float = Field(30.0, gt=0, description="Seconds before one RPC request fails.")
    rpc_attempts: int = Field(5, ge=1, le=20, description="Tries per request on transient errors.")


class DatabaseConfig(_Section):
    """`[database]`."""

    url: SecretStr = Field(description="postgresql:// URL of the keeper's database.")
    pool_min: int = Field(1, ge=1, description="Connections kept open.")
    pool_max: int = Field(8, ge=1, description="Most connections open at once.")


class IngestConfig(_Section):
    """`[ingest]`: backfill and follow tuning (see keeper.ingest.IngestSettings)."""

    poll_interval: float = Field(1.0, gt=0, description="Seconds between head polls.")
    finality_depth: int = Field(
        64, ge=0, description="Blocks below head taken as final when the node has no tag."
    )
    initial_range: int = Field(2_000, ge=1, description="First eth_getLogs range, in blocks.")
    min_range: int = Field(1, ge=1, description="Smallest range backfill shrinks to.")
    max_range: int = Field(200_000, ge=1, description="Largest range backfill grows to.")
    target_logs: int = Field(20_000, ge=100, description="Logs per response to aim for.")
    max_follow_step: int = Field(256, ge=1, description="Unfinalized blocks read per poll.")
    progress_interval: float = Field(5.0, gt=0, description="Seconds between progress lines.")
    recheck_delay: float = Field(0.25, ge=0, description="Pause before re-checking a reorg.")
    keep_blocks: int = Field(256, ge=0, description="Block rows kept below the finalized one.")

    @field_validator("max_range")
    @classmethod
    def _max_at_least_min(cls, v: int, info: Any) -> int:
        low = info.data.get("min_range", 1)
        if v < low:
            raise ValueError(f"must be >= min_range ({low})")
        return v

    def settings(self) -> IngestSettings:
        """The ingest tuning as the indexer takes it."""
        return IngestSettings(**self.model_dump())


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
    log: LogConfig = LogConfig()

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
        """The deployment file the configuration points at."""
        return Deployment.read(self.chain.deployment_file)


def load_config(path: Path) -> KeeperConfig:
    """Read and validate `path`; raise `ConfigError` naming every bad field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    base = path.parent
    chain = data.get("chain")
    if isinstance(chain, dict) and isinstance(chain.get("deployment_file"), str):
        # Relative paths are relative to the configuration file, not the working directory.
        chain["deployment_file"] = str(base / chain["deployment_file"])
    try:
        return KeeperConfig(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            shown = (
                "<secret>" if any(s in where for s in ("url", "key", "password")) else repr(value)
            )
            problems.append(f"  {where}: {err['msg']} (got {shown})")
        raise ConfigError(
            f"invalid configuration {path}:\n" + "\n".join(problems),
            help="see config/keeper.example.toml for every field and its default",
        ) from None
