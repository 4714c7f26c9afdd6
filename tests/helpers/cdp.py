"""Headless Chromium driven over the DevTools protocol, for browser tests.

No Playwright or Selenium (they download browsers of their own): Debian's
``chromium`` runs with ``--remote-debugging-port=0``, writes the port it chose to
``DevToolsActivePort`` in its profile directory, and one page target is driven
over a WebSocket (aiohttp's client) with three commands: navigate, evaluate a
JavaScript expression, capture a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.processes import run_process

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 60.0
"""A first start on a busy two-core machine takes seconds (profile, fonts)."""
COMMAND_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    """A Chromium binary on the PATH (``$VGATE_CHROMIUM`` first), or None."""
    candidates = (os.environ.get("VGATE_CHROMIUM"), *BROWSERS)
    return next((path for c in candidates if c and (path := shutil.which(c))), None)


class CdpError(RuntimeError):
    """The browser answered a command with an error, or a script threw."""


class Page:
    """One browser tab; each method is one DevTools command."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send ``method`` and return its result (events received meanwhile are dropped)."""
        message_id = next(self._ids)
        await self._socket.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            while True:
                message = await self._socket.receive_json()
                if message.get("id") != message_id:
                    continue
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def navigate(self, url: str) -> None:
        await self.command("Page.enable")
        result = await self.command("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigate to {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable values only)."""
        result = await self.command(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, poll_s: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy and return it; TimeoutError after
        ``timeout_s`` with the last value in the message."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"{expression!r} still {value!r} after {timeout_s} s")

    async def screenshot(self, path: Path) -> Path:
        """The page as a PNG at ``path``."""
        result = await self.command("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))
        return path


@contextlib.asynccontextmanager
async def chromium_page(
    binary: str, profile: Path, width: int = 1400, height: int = 1000
) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh ``profile`` directory, and its first tab;
    the browser's whole process group is stopped on exit."""
    argv = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with run_process(argv, None):
        port = await _devtools_port(profile / "DevToolsActivePort")
        async with aiohttp.ClientSession() as session:
            socket_url = await _page_socket(session, port)
            async with session.ws_connect(socket_url, max_msg_size=64 * 1024 * 1024) as ws:
                yield Page(ws)


async def _devtools_port(path: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((await asyncio.to_thread(path.read_text)).splitlines()[0])
        await asyncio.sleep(0.1)
    raise TimeoutError(f"Chromium wrote no {path} within {START_TIMEOUT_S} s")


async def _page_socket(session: aiohttp.ClientSession, port: int) -> str:
    """The WebSocket URL of the browser's first page target."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
                for target in targets:
                    if target.get("type") == "page":
                        url: str = target["webSocketDebuggerUrl"]
                        return url
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no page target on Chromium's DevTools port {port}")
