"""``server.workers: 2`` (what the shipped deploy configs run): every ``/metrics``
scrape, whichever worker the kernel hands it to, carries every worker's figures, each
labelled ``worker``, so that counters summed over workers never jump between scrapes
(they did: one scrape saw one worker's counters, the next another's, and ``rate()``
read that as resets). A real gateway (its own supervisor), a real redis-server and a
stub engine, over real HTTP.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.redis_server import run_redis
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, start_gateway, start_stub

REQUESTS = 40
"""Each on its own connection: the kernel spreads them over both workers."""
SCRAPES = 8
run_stub = contextlib.contextmanager(start_stub)
run_gateway = contextlib.contextmanager(start_gateway)


def _workers_in(text: str) -> tuple[dict[str, float], float]:
    """Per worker label: its ``vgate_requests_total`` of the stub model; and
    ``vgate_metrics_workers_missing`` (the text must parse as a Prometheus exposition)."""
    totals: dict[str, float] = {}
    missing = -1.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vgate_metrics_workers_missing":
                missing = sample.value
            worker = sample.labels.get("worker")
            if worker is not None:
                totals.setdefault(worker, 0.0)
            if sample.name == "vgate_requests_total" and sample.labels["model"] == STUB_MODEL:
                assert worker is not None
                totals[worker] += sample.value
    return totals, missing


def test_every_scrape_shows_every_workers_figures(tmp_path: Path) -> None:
    with run_redis() as redis_url, run_stub("--model", STUB_MODEL) as stub:
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
            "redis": {"url": redis_url},
            "server": {"workers": 2, "public_metrics": True},
        }
        with run_gateway(config, tmp_path) as gateway:
            scrape_urls = [f"{gateway.operator_url}/metrics", f"{gateway.url}/metrics"]

            def both_workers_answer() -> bool:
                totals, missing = _workers_in(httpx.get(scrape_urls[0]).text)
                return missing == 0 and set(totals) == {"0", "1"}

            holds_soon(both_workers_answer, 30, "both workers serving their metrics")
            body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(REQUESTS):  # a new connection each
                answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
            for index in range(SCRAPES):
                text = httpx.get(scrape_urls[index % 2]).text  # operator and public port
                totals, missing = _workers_in(text)
                assert set(totals) == {"0", "1"} and missing == 0, text
                assert sum(totals.values()) == REQUESTS, totals
                assert all(totals.values()), totals  # both served some of them
                assert text.count("# TYPE vgate_requests_total ") == 1
