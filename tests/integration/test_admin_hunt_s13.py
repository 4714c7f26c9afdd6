"""The operator's surface against a real gateway and stub engine, and the real ``vgate``
command (bug hunt):

* ``POST /admin/rollouts/{model}/promote`` after small weights (``vgate rollout set
  roll stable=0.0000001 canary=0``, accepted: every weight above 0 is) set every
  variant's weight to 0: the new weights were rounded to 6 decimals, a positive one
  to 0, and the rollout answered every client 503 ``every variant ... has weight 0``,
  the state ``/weights`` refuses to set ("these weights leave the rollout no traffic").
* ``vgate keys list --config F`` (and every command reading a config) with a file
  that is not UTF-8 (a config saved as UTF-16 or Latin-1) died with a
  ``UnicodeDecodeError`` traceback and exit status 1, where every other bad config
  file is one ``vgate: ...`` line and exit status 2.
* The same with a ``VGATE_*`` variable that must hold JSON and does not
  (``VGATE_AUTH__KEYS=[{...`` cut short, ``VGATE_MODELS=smollm2``): a pydantic
  ``SettingsError`` traceback, exit status 1. Now one line naming the variable, and
  never its value (``VGATE_AUTH__KEYS`` holds secrets).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

STABLE, CANARY, ROLLOUT = "hunt-stable", "hunt-canary", "hunt-roll"
ADMIN_KEY = "sk-admin-hunt-s13-0123456789"
CLIENT_KEY = "sk-client-hunt-s13-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STABLE, "--model", CANARY)


@pytest.fixture(scope="module")
def gateway(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": STABLE, "endpoints": [engine.url]},
            {"name": CANARY, "endpoints": [engine.url]},
        ],
        "rollouts": [
            {
                "model": ROLLOUT,
                "variants": [
                    {"model": STABLE, "weight": 90},
                    {"model": CANARY, "weight": 10, "canary": True},
                ],
            }
        ],
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": "client", "key": CLIENT_KEY}],
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("admin-hunt-s13"))


def _admin(gateway: Gateway, action: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.operator_url}/admin/rollouts/{ROLLOUT}/{action}",
        json=body,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )


def _chat(gateway: Gateway) -> httpx.Response:
    body = {"model": ROLLOUT, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    )


def test_a_promotion_from_small_weights_leaves_the_rollout_serving(gateway: Gateway) -> None:
    small = _admin(gateway, "weights", {"weights": {STABLE: 1e-7, CANARY: 0}})
    assert small.status_code == 200, small.text
    assert _chat(gateway).status_code == 200

    promoted = _admin(gateway, "promote", {})
    assert promoted.status_code == 200, promoted.text
    weights = {v["model"]: v["weight"] for v in promoted.json()["variants"]}
    shares = {v["model"]: v["share_percent"] for v in promoted.json()["variants"]}
    assert all(w > 0 for w in weights.values()), weights
    assert shares[CANARY] == pytest.approx(10.0), shares  # the first step, as with any weights
    served = _chat(gateway)
    assert served.status_code == 200, served.text

    restored = _admin(gateway, "weights", {"weights": {STABLE: 90, CANARY: 10}})
    assert restored.status_code == 200, restored.text


@pytest.mark.parametrize(
    "content",
    [
        "models: []\n".encode("utf-16"),
        "# café\nmodels: []\n".encode("latin-1"),
        b"\xff\xfe\x00",
    ],
)
def test_a_config_file_that_is_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes
) -> None:
    config = tmp_path / "vgate.yaml"
    config.write_bytes(content)
    for command in (["keys", "list", "--json"], ["rollout", "status"], ["serve"]):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"vgate: {config}"), done.stderr
        assert "UTF-8" in done.stderr, done.stderr
        assert done.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VGATE_AUTH__KEYS", '[{"name": "a", "key": "sk-SECRET-in-env-0123"'),
        ("VGATE_MODELS", "smollm2"),
        ("VGATE_ROLLOUTS", "{"),
    ],
)
def test_an_env_variable_that_is_not_json_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    config = tmp_path / "vgate.yaml"
    config.write_text("auth: {enabled: false}\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VGATE_")}
    for command in (["keys", "list", "--json"], ["serve"]):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=environ | {variable: value},
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("vgate: "), done.stderr
        assert variable in done.stderr, done.stderr
        assert value not in done.stderr and "SECRET" not in done.stderr, done.stderr
        assert done.stdout == ""
