"""Leader election: of the keepers sharing one database and chain, one indexes, plans and
sends; the others wait as standbys.

The election is a session-level Postgres advisory lock, `leader_lock_key(chain_id)`, held on a
dedicated connection whose `application_name` is `keeper-leader <host>:<pid>`, so
`pg_locks` joined to `pg_stat_activity` names the current leader (see keeper.status).
"""

from __future__ import annotations

import hashlib
import os
import socket

APPLICATION_NAME_PREFIX = "keeper-leader"


def leader_lock_key(chain_id: int) -> int:
    """The advisory lock key of a chain's leader (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-leader" + chain_id.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def identity() -> str:
    """This process as the leader's `application_name` shows it: `keeper-leader host:pid`."""
    return f"{APPLICATION_NAME_PREFIX} {socket.gethostname()}:{os.getpid()}"
