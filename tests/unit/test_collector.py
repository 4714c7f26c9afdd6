"""The serving process sizes the collector's youngest generation; the older ones keep
their thresholds."""

from __future__ import annotations

import gc

from gateway.collector import GEN0_THRESHOLD, size_young_generation
from tests.helpers.fresh_app import after_building_the_app


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
    assert after_building_the_app("gc.get_threshold()[0]") == "700"
