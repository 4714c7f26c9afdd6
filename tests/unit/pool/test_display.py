"""How engines are shown: no credentials in display URLs, ids, metrics or /ready's detail."""

from __future__ import annotations

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.pool.display import display_url, engine_id, netloc
from gateway.pool.engine_pool import EnginePool

SECRET = "http://vgate-user:s3cret@10.0.0.5:8000"


@pytest.mark.parametrize(
    ("url", "shown", "target"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000", "10.0.0.5:8000"),
        (SECRET, "http://10.0.0.5:8000", "10.0.0.5:8000"),
        ("https://token@engine.example.com", "https://engine.example.com", "engine.example.com"),
        ("http://u:p@ss@[::1]:9000/v/x?key=1#f", "http://[::1]:9000/v/x", "[::1]:9000"),
    ],
)
def test_display_drops_userinfo_query_and_fragment(url: str, shown: str, target: str) -> None:
    assert display_url(url) == shown
    assert netloc(url) == target


def test_engine_id_is_short_stable_and_blind_to_credentials() -> None:
    assert engine_id(SECRET) == engine_id("http://10.0.0.5:8000")
    assert engine_id(SECRET) != engine_id("http://10.0.0.6:8000")
    assert len(engine_id(SECRET)) == 8 and int(engine_id(SECRET), 16) >= 0


def test_the_pool_connects_with_the_full_url_and_shows_the_display_one() -> None:
    pool = EnginePool({"m": [SECRET]})
    assert pool.urls() == (SECRET,)  # what the upstream client connects to
    assert pool.health() == {"m": {"http://10.0.0.5:8000": True}}
    assert [s.url for s in pool.states()] == ["http://10.0.0.5:8000"]
    assert pool.engine_id(SECRET) == engine_id(SECRET)
    assert pool.any_healthy()
    pool.set_health(SECRET, False)
    assert not pool.any_healthy()


def test_metrics_label_engines_without_credentials() -> None:
    pool = EnginePool({"m": [SECRET]})
    metrics = GatewayMetrics()
    metrics.watch_engines(pool.states)
    text = metrics.render().decode()
    assert 'engine="http://10.0.0.5:8000"' in text
    assert "s3cret" not in text and "vgate-user" not in text
