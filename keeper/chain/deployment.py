"""The deployment file: where a chain's contracts are, as `keeper deploy` writes it
(`keeper.ops.deploy`) and every command reads it, checked field by field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_checksum_address, is_hex_address, to_checksum_address

from keeper.errors import PermanentError

MAX_FEE_BPS = 1000  # StreamManager.MAX_FEE_BPS
MAX_NOTICE_PERIOD = 2**32 - 1  # the constructor's uint32
DEPLOYMENT_FORMAT = 1


class DeploymentFileError(PermanentError):
    """The deployment file cannot be read."""


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain: what the keeper's configuration points at."""

    chain_id: int
    deployment_block: int
    token: str
    stream_manager: str
    escrow_vault: str
    deployer: str
    oracle: str
    fee_recipient: str
    fee_bps: int
    notice_period: int = 0
    token_decimals: int = 6
    format: int = field(default=DEPLOYMENT_FORMAT)

    def to_json(self) -> str:
        """Serialise as the deployment file's JSON text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Write the deployment file atomically (write a temp file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "deployment data") -> Deployment:
        """Build from parsed JSON, checking every field: present, of the right type, in range,
        and addresses well-formed with a valid EIP-55 checksum when mixed-case.

        Errors name `source` (e.g. the file), the key, the value found and what is expected.
        """
        if not isinstance(data, dict):
            raise DeploymentFileError(f"{source}: expected a JSON object, found {type(data)!r}")
        fmt = _integer(data, "format", source, low=1, default=DEPLOYMENT_FORMAT)
        if fmt != DEPLOYMENT_FORMAT:
            raise DeploymentFileError(
                f"{source}: format: {fmt} is not a format this keeper reads "
                f"(expected {DEPLOYMENT_FORMAT})",
                help="the file was written by another version of keeper",
            )
        return cls(
            chain_id=_integer(data, "chain_id", source, low=1),
            deployment_block=_integer(data, "deployment_block", source, low=0),
            token=_checked_address(data, "token", source),
            stream_manager=_checked_address(data, "stream_manager", source),
            escrow_vault=_checked_address(data, "escrow_vault", source),
            deployer=_checked_address(data, "deployer", source),
            oracle=_checked_address(data, "oracle", source),
            fee_recipient=_checked_address(data, "fee_recipient", source),
            fee_bps=_integer(data, "fee_bps", source, low=0, high=MAX_FEE_BPS),
            # Files written before notice periods existed describe contracts without one.
            notice_period=_integer(
                data, "notice_period", source, low=0, high=MAX_NOTICE_PERIOD, default=0
            ),
            token_decimals=_integer(data, "token_decimals", source, low=0, high=77, default=6),
            format=fmt,
        )

    @classmethod
    def read(cls, path: Path) -> Deployment:
        """Read and check a deployment file written by `write` (see `from_dict`)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DeploymentFileError(
                f"cannot read deployment file {path}: {exc.strerror}",
                help="run `keeper deploy` (or `keeper devchain`) to create it",
            ) from exc
        except UnicodeDecodeError:
            raise DeploymentFileError(f"deployment file {path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DeploymentFileError(
                f"deployment file {path} is not JSON: {exc}",
                help="it is written by `keeper deploy`; restore it from there",
            ) from exc
        return cls.from_dict(data, source=f"deployment file {path}")


def _integer(
    data: dict[str, Any],
    key: str,
    source: str,
    *,
    low: int,
    high: int | None = None,
    default: int | None = None,
) -> int:
    value = data.get(key, default)
    if value is None:
        raise DeploymentFileError(f"{source}: {key} is missing")
    # JSON has no int type of its own: refuse true/false and 1.5, take 1 and "1" (older files).
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DeploymentFileError(f"{source}: {key}: {value!r} is not an integer")
    try:
        number = int(value)
    except ValueError:
        raise DeploymentFileError(f"{source}: {key}: {value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DeploymentFileError(f"{source}: {key}: {number} is out of range (expected {span})")
    return number


def _checked_address(data: dict[str, Any], key: str, source: str) -> str:
    """The checksummed form of the address at `key`, refusing a mixed-case address whose
    checksum is wrong (a typo in a hand-edited file: never silently "corrected")."""
    if key not in data:
        raise DeploymentFileError(f"{source}: {key} is missing")
    value = data[key]
    if not isinstance(value, str) or not is_hex_address(value):
        raise DeploymentFileError(
            f"{source}: {key}: {value!r} is not an address (expected 0x and 40 hex digits)"
        )
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise DeploymentFileError(
            f"{source}: {key}: {value!r} has an invalid EIP-55 checksum (expected the "
            "checksummed address `keeper deploy` wrote, or all lowercase)",
            help="a mixed-case address whose checksum does not match is usually a typo: "
            "compare it with the deployment's output",
        )
    return str(to_checksum_address(value))
