"""Compile the gateway's request path with mypyc into build/native (see gateway/native.py).

Usage: ``.venv/bin/python scripts/build_native.py [--force]`` (into ``$VGATE_NATIVE_DIR``
when set, else ``build/native``). Nothing is done when the
build already matches the sources on disk. The manifest is removed first and written
last, so a build that fails or is interrupted never matches (the gateway then runs
from source). Needs a C compiler and the interpreter's headers (``Python.h``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from setuptools import Distribution  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's gateway
from gateway.native import (
    BUILD_DIR,
    GROUP,
    MANIFEST,
    MODULES,
    PACKAGE_DIR,
    manifest_for,
    matching_build,
    source_path,
)

ROOT = PACKAGE_DIR.parent  # the checkout (or a copy of it): pyproject.toml is mypy's config
C_DIR = ROOT / "build" / "native-c"
TEMP_DIR = ROOT / "build" / "native-temp"


def build() -> None:
    from mypyc.build import mypycify  # the dev tools' mypy: imported only to build

    os.chdir(ROOT)  # mypy reads the project's configuration (pyproject.toml) from here
    before = manifest_for(MODULES)
    (BUILD_DIR / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR / "gateway", ignore_errors=True)  # only what a build writes
    paths = [str(source_path(module).relative_to(ROOT)) for module in MODULES]
    extensions = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(C_DIR))
    # A Distribution of its own: setup() would read pyproject.toml, which is the
    # project's and asks for a newer setuptools than a venv may have.
    distribution = Distribution({"name": "vgate-native", "ext_modules": extensions})
    command = distribution.get_command_obj("build_ext")
    command.build_lib = str(BUILD_DIR)
    command.build_temp = str(TEMP_DIR)
    command.parallel = 2
    distribution.run_command("build_ext")
    if manifest_for(MODULES) != before:
        raise SystemExit("sources changed while they were compiled: run it again")
    (BUILD_DIR / MANIFEST).write_text(json.dumps(before, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build_native.py", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if not args.force and matching_build() is not None:
        print(f"native build up to date ({len(MODULES)} modules, {BUILD_DIR})")
        return 0
    began = time.monotonic()
    # Said before the work starts: the compilation prints nothing for about a minute.
    print(f"native build: compiling {len(MODULES)} modules with mypyc into {BUILD_DIR} "
          "(about a minute on 2 cores; again only when a file of the gateway package changes)",
          flush=True)  # fmt: skip
    build()
    if matching_build() is None:
        print("the native build does not match its sources after building", file=sys.stderr)
        return 1
    print(f"native build: {len(MODULES)} modules in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
