"""The serving process sizes the collector's youngest generation; the older ones keep
their thresholds."""

from __future__ import annotations

import gc
import subprocess
import sys

from gateway.collector import GEN0_THRESHOLD, size_young_generation


def test_the_young_generation_is_sized_and_the_older_ones_kept() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        size_young_generation()
        assert gc.get_threshold() == (GEN0_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*before)


def test_building_the_app_in_process_leaves_the_collector_alone() -> None:
    """Only the serving paths (run_gateway, each worker's factory) size it."""
    code = (
        "import gc; from gateway.app import create_app; from gateway.config.settings import "
        "Settings; gc.set_threshold(700, 10, 10); "
        "create_app(Settings.model_validate({'models': [{'name': 'm', 'endpoints': "
        "['http://127.0.0.1:9']}]})); print(gc.get_threshold()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "700"
