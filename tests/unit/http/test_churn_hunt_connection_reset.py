"""Found by the churn hunt: a keep-alive connection that the client reset (RST, not
FIN) after an answer left uvicorn's keep-alive timer armed (uvicorn cancels it only for
a clean close), and the timer held the closed connection's protocol, transport and
last request for ``server.keepalive_timeout_s`` (75 s). ~8 KB each: a client resetting
a few thousand connections a second made a worker hold gigabytes, outside
``server.max_connections`` (closed connections no longer count). No timer outlives a
connection now, however it ends."""

from __future__ import annotations

import pytest

from tests.unit.http.test_connections import Connection, get


@pytest.mark.parametrize(
    "ending",
    [ConnectionResetError(104, "Connection reset by peer"), None],
    ids=["reset", "closed"],
)
async def test_no_timer_holds_a_connection_after_it_ends(ending: Exception | None) -> None:
    conn = Connection(keep_alive_s=75)
    conn.send(get("/"))
    await conn.settle()
    assert conn.transport.written.startswith(b"HTTP/1.1 200 ")
    assert [t for t in conn.clock.timers if not t.cancelled]  # keep-alive armed, tick
    conn.protocol.connection_lost(ending)
    assert [t.callback for t in conn.clock.timers if not t.cancelled] == []
