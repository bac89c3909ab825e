"""The daemon's watchdog: WATCHDOG=1 goes to systemd only while no loop's pass is stuck."""

from __future__ import annotations

import anyio
import pytest

from keeper.service.daemon import Heartbeat, _watchdog
from keeper.service.health import HealthState
from tests.support.notify_socket import NotifySocket, notify_socket  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio


def test_a_pass_counts_as_stuck_only_beyond_the_stall_limit() -> None:
    beat = Heartbeat(stall_after=3600)
    with beat.busy("tx"):
        assert beat.stuck() == []
    stalled = Heartbeat(stall_after=0)
    with stalled.busy("plan"), stalled.busy("tx"):
        assert stalled.stuck() == ["plan", "tx"]
    assert stalled.stuck() == []  # a finished pass is not busy


async def test_pings_are_withheld_while_a_loop_is_stuck(
    notify_socket: NotifySocket,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 0.05 s
    state = HealthState(chain_id=1, role="leader")
    beat = Heartbeat(stall_after=0)
    async with anyio.create_task_group() as tg:
        with beat.busy("tx"):
            tg.start_soon(_watchdog, state, beat)
            await anyio.to_thread.run_sync(
                lambda: notify_socket.wait_for(lambda m: "STATUS" in m.fields, timeout=5)
            )
            await anyio.sleep(0.3)  # several intervals
            stuck = notify_socket.messages
            assert stuck and not any("WATCHDOG" in m.fields for m in stuck)
        mark = len(notify_socket.messages)
        await anyio.to_thread.run_sync(
            lambda: notify_socket.wait_for(
                lambda m: m.fields.get("WATCHDOG") == "1", timeout=5, start=mark
            )
        )
        tg.cancel_scope.cancel()
    assert all(m.fields.get("STATUS", "").startswith("leader") for m in stuck)
