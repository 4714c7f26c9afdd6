"""Building the gateway's app in a fresh interpreter, to see what that alone does to the
process (what it imports, the collector's settings): tests cannot see it in theirs,
where earlier tests have imported and set everything already."""

from __future__ import annotations

import subprocess
import sys

_BUILD = (
    "import gc, sys\n"
    "gc.set_threshold(700, 10, 10)\n"
    "from gateway.app import create_app\n"
    "from gateway.config.settings import Settings\n"
    "create_app(Settings.model_validate("
    "{'models': [{'name': 'm', 'endpoints': ['http://127.0.0.1:9']}]}))\n"
)


def after_building_the_app(expression: str) -> str:
    """``expression`` (Python, ``gc`` and ``sys`` imported) printed by a fresh interpreter
    that has built the app for a one-model config, with GC thresholds (700, 10, 10)."""
    done = subprocess.run(
        [sys.executable, "-c", f"{_BUILD}print({expression})"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()
