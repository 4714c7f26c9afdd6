"""The gateway reads each engine's queue depth from its Prometheus /metrics."""

from __future__ import annotations

from aiohttp import web

from gateway.config.upstream import UpstreamSettings
from gateway.pool.engine_pool import EnginePool
from gateway.pool.health import LoadScraper
from gateway.upstream.client import UpstreamClient
from tests.helpers.processes import free_port

METRICS = (
    "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
    'vllm:num_requests_waiting{engine="1",model_name="m"} 3.0\n'
    'vllm:num_requests_running{engine="0",model_name="m"} 9.0\n'
)


async def test_scraped_queue_depth_reaches_the_routing_snapshot() -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream = UpstreamClient(UpstreamSettings())
    await upstream.start()
    try:
        engine, dead = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
        pool = EnginePool({"m": [engine, dead]})
        await LoadScraper(pool, upstream).scrape_all()
        waiting = {view.url: view.waiting for view in pool.snapshot("m")}
        assert waiting == {engine: 7.0, dead: 0.0}
    finally:
        await upstream.close()
        await runner.cleanup()
