"""The benchmarks that run real vLLM engines reach them with the key the engines demand.

A managed engine always demands a key (the model's configured one, else a random one
per start): a benchmark that loads an engine straight, or puts a second gateway in
front of it as an external engine, has to configure that key and send it, or every
request it makes is a 401."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import prefix_affinity, real_engine
from gateway.config.settings import load_settings

KEY = "0123456789abcdef0123456789abcdef"


def engine_key_of(path: Path, text: str) -> str | None:
    path.write_text(text)
    (model,) = load_settings(path).models
    return model.api_key.get_secret_value() if model.api_key is not None else None


def test_real_engine_direct_runs_send_the_key_the_engine_demands(tmp_path: Path) -> None:
    config = real_engine.gateway_yaml(tmp_path, "0", KEY)
    assert engine_key_of(tmp_path / "gateway.yaml", config) == KEY
    args = argparse.Namespace(max_tokens=8, duration=1.0, warmup=0.0)
    direct = real_engine.load_spec("http://127.0.0.1:1", 1, args, KEY)
    assert direct.headers == {"Authorization": f"Bearer {KEY}"}
    through = real_engine.load_spec("http://127.0.0.1:2", 1, args)
    assert "Authorization" not in through.headers


def test_prefix_affinity_gateways_share_the_engines_key(tmp_path: Path) -> None:
    managed = prefix_affinity.managed_yaml(tmp_path, 1, KEY)
    affinity = prefix_affinity.affinity_yaml(["http://127.0.0.1:1", "http://127.0.0.1:2"], KEY)
    assert engine_key_of(tmp_path / "managed.yaml", managed) == KEY
    assert engine_key_of(tmp_path / "affinity.yaml", affinity) == KEY
