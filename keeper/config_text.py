"""The effective configuration as `keeper config show` prints it: plain data with every secret
masked (`effective`), and TOML text that loads again as a configuration (`to_toml`)."""

from __future__ import annotations

import json
import math
from collections.abc import Set as AbstractSet
from typing import Any

from pydantic import SecretStr

from keeper.config import MASKED, KeeperConfig
from keeper.config_load import MASK, SECRET_PATHS, env_name
from keeper.urls import (
    redact_dsn,
    redact_url,
)


def effective(config: KeeperConfig) -> dict[str, Any]:
    """The configuration as plain data, secrets masked: a URL as its scheme://host:port (the
    database's with user and name) followed by `(masked)`, any other secret as MASK."""
    data: dict[str, Any] = config.model_dump(mode="json")
    for where in SECRET_PATHS:
        section, name = where.split(".")
        secret = getattr(getattr(config, section), name)
        if isinstance(secret, list):  # chain.rpc_urls: each entry masked alike
            data[section][name] = [_masked(section, s) for s in secret]
        elif secret is not None:
            data[section][name] = _masked(section, secret)
    return data


def _masked(section: str, secret: SecretStr) -> str:
    text = secret.get_secret_value().removesuffix(MASKED)  # shown again: mask it once
    if section == "database":
        return f"{redact_dsn(text)}{MASKED}"
    if "://" in text:
        return f"{redact_url(text)}{MASKED}"
    return MASK


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(
    data: dict[str, Any], *, overridden: AbstractSet[str] = frozenset(), header: str = ""
) -> str:
    """`effective(config)` as TOML text: unset optional fields as comments, fields set from the
    environment marked with the variable's name."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines += ["", f"[{section}]"]
        lines += _toml_fields(section, values, overridden)
    for signer in data.get("signers", []):
        lines += ["", "[[signers]]"]
        lines += _toml_fields("signers", signer, set())
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_fields(section: str, values: dict[str, Any], overridden: AbstractSet[str]) -> list[str]:
    out = []
    for key, value in values.items():
        if value is None:
            out.append(f"# {key}: unset")
            continue
        note = f"  # from {env_name((section, key))}" if f"{section}.{key}" in overridden else ""
        out.append(f"{key} = {_toml_value(value)}{note}")
    return out
