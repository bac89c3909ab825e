"""Reading the configuration: `load_config` validates a TOML file with `KEEPER_` environment
overrides into `keeper.config.KeeperConfig`, names every bad field (its path, what is wrong, the
value given unless it is secret, the variable that set it) and registers every secret it holds
with `keeper.secrets` before anything could print it."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from keeper import secrets
from keeper.config import MASKED, ConfigError, KeeperConfig, SignerConfig


def _secret_paths() -> frozenset[str]:
    """Dotted paths of the fields typed `SecretStr` or a list of them (their values are never
    shown)."""
    found = set()
    for name, section in KeeperConfig.model_fields.items():
        model = section.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for field_name, field in model.model_fields.items():
            if "SecretStr" in str(field.annotation):
                found.add(f"{name}.{field_name}")
    return frozenset(found)


SECRET_PATHS = _secret_paths()


MASK = "**********"


# Words that make a key's value secret even outside SECRET_PATHS (an unknown key, a typo).
_SECRET_WORDS = ("url", "key", "password", "secret", "token")


def _is_secret(where: str) -> bool:
    return any(where == p or where.startswith((p + ".", p + "[")) for p in SECRET_PATHS) or any(
        w in where.rsplit(".", 1)[-1] for w in _SECRET_WORDS
    )


def _where(loc: tuple[str | int, ...]) -> str:
    """A field's path as messages show it: `ingest.poll_interval`, `signers.0.keystore`, and a
    list entry inside a section by its index, `chain.rpc_urls[1]`."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and i >= 2:
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def env_name(loc: tuple[str, ...]) -> str:
    """The environment variable overriding the field at `loc`: KEEPER_INGEST__POLL_INTERVAL."""
    return "KEEPER_" + "__".join(p.upper() for p in loc)


def env_overrides(environ: Mapping[str, str] | None = None) -> set[str]:
    """Dotted paths of the fields set by `KEEPER_` environment variables (case-insensitive, as
    pydantic-settings reads them), e.g. {"ingest.poll_interval"}."""
    env = os.environ if environ is None else environ
    paths = set()
    for name in env:
        upper = name.upper()
        if upper.startswith("KEEPER_") and "__" in upper:
            paths.add(".".join(upper.removeprefix("KEEPER_").lower().split("__")))
    return paths


def _field_names(loc: tuple[str, ...]) -> list[str]:
    """The field names of the model at `loc` (the top level, or a section)."""
    if not loc:
        return list(KeeperConfig.model_fields)
    field = KeeperConfig.model_fields.get(loc[0])
    model = field.annotation if field is not None and len(loc) == 1 else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    if loc[0] == "signers" and len(loc) == 2:
        return list(SignerConfig.model_fields)
    return []


def _problem(err: Any, overridden: set[str]) -> str:
    """One line for one validation error: the field's path, what is wrong, the value given."""
    loc = tuple(str(p) for p in err["loc"])
    where = _where(tuple(err["loc"]))
    # An entry of a list set from the environment came from the list's variable.
    field = ".".join(loc[:2])
    origin = f" from {env_name(loc[:2])}" if where in overridden or field in overridden else ""
    if err["type"] == "missing":
        section = f"[{loc[0]}] of the file" if len(loc) > 1 else "the file"
        return f"{where}: required but not set (set it in {section}, or as {env_name(loc)})"
    if err["type"] == "extra_forbidden":
        # The value of an unknown key is not shown: it may be a misspelt secret.
        known = _field_names(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown key{origin}, not a configuration field{hint}"
    message = str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    if isinstance(given, Mapping):
        # A check of a whole table (one of two fields): its values may hold secrets, and its
        # message may name the fields itself.
        return message if message.startswith(where + ".") else f"{where}: {message}"
    value = "<secret>" if _is_secret(where) else repr(given)
    return f"{where}: {message} (got {value}{origin})"


def load_config(path: Path) -> KeeperConfig:
    """Read and validate `path` (with `KEEPER_` environment overrides); raise `ConfigError`
    naming every bad field with its path, the value given (unless secret) and what is
    expected."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"configuration {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    base = path.absolute().parent
    chain = data.get("chain")
    if isinstance(chain, dict) and isinstance(chain.get("deployment_file"), str):
        # Relative paths are relative to the configuration file, not the working directory.
        chain["deployment_file"] = str(base / chain["deployment_file"])
    for signer in data.get("signers", []) if isinstance(data.get("signers"), list) else []:
        for key in ("keystore", "password_file"):
            if isinstance(signer, dict) and isinstance(signer.get(key), str):
                signer[key] = str(base / signer[key])
    # Before validation: a value refused below must not be printed either.
    _register_raw_secrets(data)
    try:
        config = KeeperConfig(**data)
    except ValidationError as exc:
        overridden = env_overrides()
        problems = [f"  {_problem(err, overridden)}" for err in exc.errors()]
        raise ConfigError(
            f"invalid configuration {path}:\n" + "\n".join(problems),
            help="see config/keeper.example.toml for every field and its default",
        ) from None
    register_secrets(config)
    return config


def _register_raw_secrets(data: Mapping[str, Any]) -> None:
    """Register the secret fields' values as the file and the environment give them."""
    environ = {name.upper(): value for name, value in os.environ.items()}
    for where in SECRET_PATHS:
        section, name = where.split(".")
        register = secrets.register_dsn if section == "database" else secrets.register_url
        table = data.get(section)
        given: list[Any] = [environ.get(env_name((section, name)), "")]
        given += [table.get(name)] if isinstance(table, Mapping) else []
        for value in given:
            for text in _secret_texts(value):
                register(text.removesuffix(MASKED))


def _secret_texts(value: Any) -> list[str]:
    """The strings of a secret field's raw value: a string, a list of them, or a list as the
    JSON text an environment variable gives (`KEEPER_CHAIN__RPC_URLS='["…", "…"]'`)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.lstrip().startswith("[") else None
        except ValueError:
            parsed = None
        return [value, *_secret_texts(parsed)] if isinstance(parsed, list) else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def register_secrets(config: KeeperConfig) -> None:
    """Register every secret the configuration holds or points at with `keeper.secrets`, so
    that no output of this process shows them: the database password, the RPC and websocket
    URLs' user info, path and query, and the signers' password files, hex keys and
    credential passwords (read here; files that cannot be read are reported when the keys
    load)."""
    secrets.register_dsn(config.database.url.get_secret_value().removesuffix(MASKED))
    for text in config.chain.urls:
        secrets.register_url(text.removesuffix(MASKED))
    if config.chain.ws_url is not None:
        secrets.register_url(config.chain.ws_url.get_secret_value().removesuffix(MASKED))
    for signer in config.signers:
        if signer.password_file is not None:
            secrets.register_file(signer.password_file)
        if signer.credential is not None:
            secrets.register_credential(signer.credential)
