"""Leader election: of the keepers sharing one database and chain, one indexes, plans and
sends; the others wait as standbys.

The election is a session-level Postgres advisory lock, `leader_lock_key(chain_id)`, held on a
dedicated connection whose `application_name` is `keeper-leader <host>:<pid>`, so
`pg_locks` joined to `pg_stat_activity` names the current leader (see keeper.service.status).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from keeper import db
from keeper.db import Conn, DatabaseUnavailable
from keeper.db.queries import Queries, load_queries
from keeper.errors import KeeperError

log = structlog.get_logger(__name__)

APPLICATION_NAME_PREFIX = "keeper-leader"


def leader_lock_key(chain_id: int) -> int:
    """The advisory lock key of a chain's leader (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"keeper-leader" + chain_id.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def identity() -> str:
    """This process as the leader's `application_name` shows it: `keeper-leader host:pid`."""
    return f"{APPLICATION_NAME_PREFIX} {socket.gethostname()}:{os.getpid()}"


# What asking the lock's session may fail with: the server unreachable or gone, the session
# closed or terminated by the server, or no answer in time.
_LOCK_ERRORS = (
    DatabaseUnavailable,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


class LeadershipLost(KeeperError):
    """This process could not confirm that it still holds the leader lock."""


def _key_parts(key: int) -> tuple[int, int]:
    """The (classid, objid) pair `pg_locks` shows for a bigint advisory lock key."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


async def current_leader(conn: Conn, chain_id: int) -> dict[str, Any] | None:
    """Who holds the chain's leader lock: `application_name`, `backend_start` and the client
    address of its session, or None when no keeper leads."""
    classid, objid = _key_parts(leader_lock_key(chain_id))
    row = await conn.fetchrow(_queries()["current_leader"], classid, objid)
    return dict(row) if row is not None else None


def _queries() -> Queries:
    return load_queries("leader.sql")


class Leadership:
    """The leader lock of one chain, held on a dedicated connection.

    `acquire` waits until this process holds the lock (or `give_up` is set); `hold` then
    confirms it every `lease / 5` seconds and raises `LeadershipLost` once `lease / 2` passed
    without a confirmation, so a leader cut off from the database stops planning and sending
    before the server can drop its session (TCP keepalive and `tcp_user_timeout` set from the
    lease) and hand the lock to a standby, which asks every `lease / 5` seconds.
    """

    def __init__(self, dsn: str, chain_id: int, lease: float) -> None:
        self._dsn = dsn
        self.chain_id = chain_id
        self.lease = lease
        self.key = leader_lock_key(chain_id)
        self._conn: asyncpg.Connection | None = None
        self.q = _queries()

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            lease_ms = int(self.lease * 1000)
            self._conn = await db.connect(
                self._dsn,
                server_settings={
                    "application_name": identity(),
                    # How fast the server notices a leader that vanished from the network
                    # (a killed process closes its socket and frees the lock at once).
                    "tcp_keepalives_idle": str(max(1, int(self.lease / 4))),
                    "tcp_keepalives_interval": str(max(1, int(self.lease / 8))),
                    "tcp_keepalives_count": "3",
                    "tcp_user_timeout": str(max(1000, lease_ms * 3 // 4)),
                },
            )
        return self._conn

    async def acquire(self, give_up: anyio.Event) -> bool:
        """Wait for the lock; True once held, False when `give_up` was set first."""
        reported: str | None = None
        while not give_up.is_set():
            try:
                conn = await self._connect()
                with anyio.fail_after(self.lease / 2):
                    if await conn.fetchval(self.q["try_lock"], self.key):
                        log.info("leader_elected", lease_s=self.lease)
                        return True
                    holder = await current_leader(conn, self.chain_id)
                name = holder["application_name"] if holder else None
                if name != reported:
                    log.info("standby", leader=name, retry_every_s=self.lease / 5)
                    reported = name
            except _LOCK_ERRORS as exc:
                log.error("leader_election_failed", error=str(exc), retry_in_s=self.lease / 5)
                await self.close()
            with anyio.move_on_after(self.lease / 5):
                await give_up.wait()
        return False

    async def hold(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Confirm the lock until cancelled; raise `LeadershipLost` when it cannot be."""
        task_status.started()
        confirmed = time.monotonic()
        while True:
            await anyio.sleep(self.lease / 5)
            try:
                conn = await self._connect()
                with anyio.fail_after(self.lease / 5):
                    held = await conn.fetchval(self.q["lock_held"], *_key_parts(self.key))
            except _LOCK_ERRORS as exc:
                held = None
                log.warning("leader_lock_unconfirmed", error=str(exc))
            if held:
                confirmed = time.monotonic()
            elif held is False:
                # The session is new (the old one was lost): its lock went with it.
                raise LeadershipLost("the leader lock was lost with its database session")
            if time.monotonic() - confirmed > self.lease / 2:
                raise LeadershipLost(
                    f"the leader lock could not be confirmed for {self.lease / 2:g} s",
                    help="check the database connection; systemd restarts the keeper, which "
                    "then waits as a standby until it can lead again",
                )

    async def close(self) -> None:
        """Close the lock's connection (the server releases the lock with it)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with anyio.move_on_after(2, shield=True):
                await conn.close()
            if not conn.is_closed():
                conn.terminate()
