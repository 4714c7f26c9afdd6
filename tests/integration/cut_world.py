"""What the tests of single-flight readers cut for falling behind
(``test_cache_cut_leader.py``, ``test_cache_cut_follower.py``) share: a gateway with a
shared cache, a small ``cache.max_lag_bytes`` and a long send deadline, one key with a
single concurrency slot (the silent reader's) and one without; a raw-socket client that
reads nothing; and what a test waits on (a reset seen without reading, the slot free
again, the cut counted)."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MAX_LAG = 1024 * 1024
SEND_TIMEOUT_S = 120


def cut_gateway(
    engine: Stub, redis_url: str, directory: Path, run: str, keys: list[dict[str, Any]]
) -> Iterator[Gateway]:
    """The gateway in front of ``engine``, with ``keys``; its cache namespaced by ``run``."""
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "server": {"send_timeout_s": SEND_TIMEOUT_S},
        "auth": {"enabled": True, "keys": keys},
        "cache": {"enabled": True, "namespace": run, "max_lag_bytes": MAX_LAG, "scope": "shared"},
    }
    yield from start_gateway(config, directory)


def silent_client(gateway: Gateway, key: str, body: dict[str, Any]) -> socket.socket:
    """A client of ``key`` that asks for ``body`` and reads nothing (a receive buffer as
    small as the kernel allows)."""
    payload = orjson.dumps(body)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += b"authorization: Bearer %s\r\n" % key.encode()
    head += b"content-length: %d\r\n\r\n" % len(payload)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
    sock.sendall(head + payload)
    return sock


def was_reset(sock: socket.socket) -> bool:
    """Whether the peer reset the connection, seen without reading (``SO_ERROR``)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET


def key_answered(gateway: Gateway, key: str, run: str) -> bool:
    """Whether ``key`` is admitted now (its one concurrency slot free)."""
    prompt = f"{run} again {time.monotonic()}"
    body = {"model": STUB_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
    headers = {"authorization": f"Bearer {key}", "cache-control": "no-store"}
    reply = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=15
    )
    assert reply.status_code in (200, 429), reply.text
    return reply.status_code == 200


def cuts(gateway: Gateway, role: str) -> float:
    """``vgate_slow_clients_cut_total`` of ``role`` (leader or follower)."""
    for line in gateway.metrics().splitlines():
        if line.startswith("vgate_slow_clients_cut_total{") and f'role="{role}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
