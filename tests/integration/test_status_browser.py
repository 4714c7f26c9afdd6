"""The status page in a real browser (issue #18, acceptance 3): headless Chromium
loads ``/status`` from the operator listener; the engines table and a chart with data
are in the DOM, and the figures change within 2 s of traffic. A screenshot is saved
under the test's tmp dir (its path is printed; ``pytest -s`` shows it)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cdp import Page, chromium_page, find_chromium
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary found (chromium, chromium-browser, google-chrome or "
    "$VGATE_CHROMIUM); scripts/test.sh installs Debian's chromium",
)

CHANGE_WITHIN_S = 2.0
"""The issue's bound: the page shows new traffic within 2 s."""
LOAD_TIMEOUT_S = 30.0
"""A first page load on a busy machine (browser start-up is separate)."""

ENGINE_CELLS = "Array.from(document.querySelectorAll('#engines tbody tr:not(:has(.empty))'))"
REQUESTS = (
    "Array.from(document.querySelectorAll('#models tbody tr'))"
    f".filter(r => r.cells[0].textContent === {json.dumps(STUB_MODEL)})"
    ".map(r => r.querySelector('[data-field=requests]').textContent)[0] || null"
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--ttft-ms", "10", "--itl-ms", "1")


@pytest.fixture(scope="module")
def gateway(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "upstream": {"health_interval_s": 0.5, "metrics_interval_s": 0.5},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("status-browser"))


def send_traffic(gateway: Gateway, requests: int) -> None:
    """``requests`` streamed chat completions, each read to its end."""
    client = gateway.client()
    for i in range(requests):
        stream = client.chat.completions.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": f"hi {i}"}], stream=True
        )
        for _chunk in stream:
            pass


async def screenshot(page: Page, path: Path) -> None:
    await page.screenshot(path)
    print(f"status page screenshot: {path}")


async def test_status_page_shows_engines_a_chart_and_live_figures(
    gateway: Gateway, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    await asyncio.to_thread(send_traffic, gateway, 5)  # the chart has data from the start
    async with chromium_page(CHROMIUM, tmp_path / "profile") as page:
        try:
            await page.navigate(f"{gateway.operator_url}/status")
            await page.wait_for(f"{ENGINE_CELLS}.length", LOAD_TIMEOUT_S)
            ids = await page.evaluate(f"{ENGINE_CELLS}.map(r => r.cells[0].textContent)")
            assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{8}", ids[0])
            state = await page.evaluate(f"{ENGINE_CELLS}[0].cells[3].textContent")
            assert state == "healthy"
            # a chart with data: uPlot's canvas, and non-zero points in its series
            await page.wait_for("!!document.querySelector('#rate-chart canvas')", LOAD_TIMEOUT_S)
            points = await page.wait_for(
                "Number(document.getElementById('rate-chart').dataset.points)", LOAD_TIMEOUT_S
            )
            assert points >= 1
            before = await page.wait_for(REQUESTS, LOAD_TIMEOUT_S)
            assert int(before) >= 5

            await asyncio.to_thread(send_traffic, gateway, 10)
            sent = time.monotonic()
            # The page may have shown part of the traffic while it was sent (a frame
            # mid-way on a busy machine): wait for all of it, within the bound.
            want = int(before) + 10
            after = await page.wait_for(
                f"(v => v !== null && Number(v) >= {want} && v)({REQUESTS})", CHANGE_WITHIN_S
            )
            took = time.monotonic() - sent
            assert int(after) >= want, (before, after)
            print(f"figures changed {took:.2f} s after the traffic")
            assert await page.evaluate("Number(document.body.dataset.frames)") >= 2
        finally:
            await screenshot(page, tmp_path / "status.png")
