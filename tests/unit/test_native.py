"""The compiled request path (gateway/native.py): loaded only when built from the sources
on disk, by this interpreter; from source otherwise, and with ``VGATE_NATIVE=0``.

Each case imports the gateway in a child process (the finder is installed once per
process, at the package's import) with ``VGATE_NATIVE_DIR`` pointing at the build or a
doctored copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.settings import load_settings
from gateway.native import BUILD_DIR, MANIFEST, MODULES, matching_build, source_path

PROBE = (
    "import json, gateway.app, gateway.native as n; "
    "print(json.dumps({'native': n.running_native(), 'service': "
    "__import__('gateway.pipeline.service').pipeline.service.__file__}))"
)


def imported(build_dir: Path, **env: str) -> dict[str, object]:
    """What a child process importing the gateway loads, with the build in ``build_dir``."""
    environment = {name: value for name, value in os.environ.items() if name != "VGATE_NATIVE"}
    environment |= {"VGATE_NATIVE_DIR": str(build_dir), **env}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True
    )
    loaded: dict[str, object] = json.loads(result.stdout)
    return loaded


@pytest.fixture
def build() -> Path:
    if matching_build() is None:
        why = "no native build matching the sources: run scripts/build_native.py"
        if os.environ.get("TEST_REQUIRE_NATIVE") == "1":  # scripts/test.sh, once it built
            pytest.fail(why)
        pytest.skip(why + " (scripts/test.sh builds it and requires it)")
    return BUILD_DIR


def test_a_build_made_from_the_sources_on_disk_is_what_the_gateway_runs(build: Path) -> None:
    loaded = imported(build)
    assert loaded["native"] == list(MODULES)
    assert str(loaded["service"]).startswith(str(build)), loaded


def test_with_the_switch_off_everything_runs_from_source(build: Path) -> None:
    loaded = imported(build, VGATE_NATIVE="0")
    assert loaded["native"] == []
    assert loaded["service"] == str(source_path("gateway.pipeline.service"))


def test_a_build_of_other_sources_is_not_loaded(build: Path, tmp_path: Path) -> None:
    """A module edited since the build: the whole group runs from source, never a stale
    compiled copy."""
    copy = tmp_path / "native"
    shutil.copytree(build, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["sources_sha256"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert matching_build(copy) is None
    loaded = imported(copy)
    assert loaded["native"] == []
    assert loaded["service"] == str(source_path("gateway.pipeline.service"))


def test_a_build_with_a_file_missing_or_no_manifest_is_not_loaded(
    build: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "native"
    shutil.copytree(build, copy)
    next(copy.rglob("service*.so")).unlink()
    assert matching_build(copy) is None
    assert imported(copy)["native"] == []
    shutil.rmtree(copy)
    shutil.copytree(build, copy)
    (copy / MANIFEST).unlink()
    assert matching_build(copy) is None


def test_every_compiled_module_exists_and_is_in_the_package() -> None:
    for module in MODULES:
        assert module.startswith("gateway.") and source_path(module).is_file(), module
    assert len(set(MODULES)) == len(MODULES)


def test_its_switches_are_not_taken_for_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``VGATE_*`` variables are settings, and unknown ones are refused: the image sets
    ``VGATE_NATIVE_DIR``, which the gateway refused to start with."""
    config = tmp_path / "vgate.yaml"
    config.write_text("models: [{name: m, endpoints: ['http://127.0.0.1:1']}]\n")
    monkeypatch.setenv("VGATE_NATIVE", "0")
    monkeypatch.setenv("VGATE_NATIVE_DIR", str(tmp_path))
    assert load_settings(config).models[0].name == "m"
