"""Whether the keeper's signers may report usage: ORACLE_ROLE on StreamManager, read on chain.

`recordUsage` is callable by ORACLE_ROLE only, and every signer may be handed a usage batch, so
usage billing needs the role on all of them. `keeper run` switches usage billing off when one
lacks it (and says so in /status, /readyz, `keeper status` and a metric); `keeper check-config`
reports it before that happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eth_utils import keccak

if TYPE_CHECKING:  # not imported at run time: `keeper status` reads ORACLE_ROLE without web3
    from keeper.chain.rpc import ChainClient

ORACLE_ROLE = keccak(text="ORACLE_ROLE")
_HAS_ROLE = keccak(text="hasRole(bytes32,address)")[:4]


async def signers_without_oracle_role(
    client: ChainClient, stream_manager: str, signers: Sequence[str]
) -> list[str]:
    """The signers (addresses) that may not call recordUsage."""
    lacking = []
    for address in signers:
        # hasRole(bytes32 role, address account): two static words.
        data = _HAS_ROLE + ORACLE_ROLE + bytes.fromhex(address.removeprefix("0x")).rjust(32, b"\0")
        answer = await client.request(
            "eth_call", [{"to": stream_manager, "data": "0x" + data.hex()}, "latest"]
        )
        if int(answer, 16) == 0:
            lacking.append(address)
    return lacking
