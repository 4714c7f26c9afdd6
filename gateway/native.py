"""The request path compiled with mypyc, loaded when it was built from the sources on disk.

Issue #16 asks for a gateway that costs almost nothing per request. Its profile is
flat: ~500 Python calls per request, no function above a few percent. So the modules
every request runs through (:data:`MODULES`: the pipeline's stages, the limiter, the
cache, the Redis client, the engine client, the request's clocks and tallies) are
compiled to C by mypyc (the compiler mypy ships, which builds mypy itself) from the
same typed source: 21% fewer instructions per fully-on request under callgrind
(``benchmarks/RESULTS.md``). The source stays the truth; the build is an artefact.

``scripts/build_native.py`` (run by ``scripts/bootstrap.sh``) compiles them into
:data:`BUILD_DIR` (``build/native`` beside the ``gateway`` package, git-ignored, or
``$VGATE_NATIVE_DIR``) with a manifest: the SHA-256 of every source file of the
package (compiled code also holds what it knew at build time of the modules it
imports: the types it checks their values against) and the interpreter's extension
suffix. :func:`install` (called once, from ``gateway/__init__.py``, before any other
module of the package is imported) puts a finder at the head of ``sys.meta_path``
that loads those modules from the build, but only when the manifest matches what is
on disk now. Any file of the package edited since the build, a build for another
interpreter, a missing file, or a library that does not load (a warning), and every
module runs from its ``.py`` as before: the modules are compiled as one group that
calls across itself in C, so it is all or nothing, and an edited source never runs
as stale compiled code. ``VGATE_NATIVE=0`` runs everything from source (for a
debugger, or to compare).

What compiled code does differently, and the source respects: annotations are
checked at run time (a value of another type than declared raises ``TypeError``),
classes are native (no ``__dict__``, no weak references unless marked
``native_class=False``), and a module's globals cannot be replaced from outside
(monkeypatching). Async generators are not supported, so modules with them are not
in :data:`MODULES`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
DIRECTORY_VARIABLE = "VGATE_NATIVE_DIR"
"""Where the build is, when not in ``build/native`` beside the package (the image's)."""
BUILD_DIR = Path(os.environ.get(DIRECTORY_VARIABLE) or PACKAGE_DIR.parent / "build" / "native")
MANIFEST = "manifest.json"
GROUP = "gateway.native_group"
"""mypyc's group name: the shared library is ``gateway.native_group__mypyc``."""
ENVIRONMENT_SWITCH = "VGATE_NATIVE"

MODULES: tuple[str, ...] = (
    "gateway.auth.authenticator",
    "gateway.auth.prefix_salt",
    "gateway.backends.redis.cache",
    "gateway.backends.redis.limiter",
    "gateway.backends.redis.limiter_wire",
    "gateway.backends.redis.resp",
    "gateway.backends.redis.resp_wire",
    "gateway.cache.entry",
    "gateway.cache.key",
    "gateway.cache.response_cache",
    "gateway.cache.singleflight",
    "gateway.observability.live",
    "gateway.observability.tallies",
    "gateway.observability.timeline",
    "gateway.pipeline.answer_checks",
    "gateway.pipeline.engine_answers",
    "gateway.pipeline.exchange",
    "gateway.pipeline.parsing",
    "gateway.pipeline.plan",
    "gateway.pipeline.priority",
    "gateway.pipeline.request_meta",
    "gateway.pipeline.results",
    "gateway.pipeline.service",
    "gateway.pipeline.usage",
    "gateway.ratelimit.admission",
    "gateway.ratelimit.calibration",
    "gateway.ratelimit.cost",
    "gateway.ratelimit.limits",
    "gateway.ratelimit.refusal",
    "gateway.upstream.connection",
    "gateway.upstream.connection_pool",
    "gateway.upstream.lean",
    "gateway.upstream.target",
)
"""The modules compiled, as one group (the hot path of a proxied completion)."""


@dataclass(frozen=True)
class NativeBuild:
    """A build that matches the sources: where each compiled module's library is."""

    libraries: dict[str, Path]

    @property
    def modules(self) -> list[str]:
        return sorted(name for name in self.libraries if name != shared_library_name())


def source_path(module: str) -> Path:
    """The ``.py`` file of one of :data:`MODULES`."""
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def shared_library_name() -> str:
    return f"{GROUP}__mypyc"


def library_path(build_dir: Path, module: str) -> Path:
    """Where the build keeps ``module``'s compiled library (``build_ext``'s layout)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return build_dir.joinpath(*module.split(".")).with_name(module.split(".")[-1] + suffix)


def package_sources() -> list[Path]:
    """Every ``.py`` file of the ``gateway`` package, in a fixed order."""
    return sorted(PACKAGE_DIR.rglob("*.py"))


def sources_digest(files: Sequence[Path]) -> str:
    """SHA-256 over each file's path (relative to the package) and bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes())
        digest.update(b"\x00")
    return digest.hexdigest()


def manifest_for(modules: Sequence[str]) -> dict[str, object]:
    """What a build records (``scripts/build_native.py``) and :func:`matching_build` checks:
    the modules compiled and the digest of the *whole* package's sources, since compiled
    code also holds what it knew at build time of the modules it imports (the types it
    checks their values against, their constants)."""
    return {
        "modules": list(modules),
        "sources_sha256": sources_digest(package_sources()),
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
    }


def matching_build(build_dir: Path = BUILD_DIR) -> NativeBuild | None:
    """The build in ``build_dir``, if it was made from exactly the sources on disk by
    this interpreter and all its files are there; None otherwise."""
    try:
        recorded = json.loads((build_dir / MANIFEST).read_text())
        if recorded != manifest_for(MODULES):
            return None
    except (OSError, ValueError):
        return None
    libraries = {
        module: library_path(build_dir, module) for module in (*MODULES, shared_library_name())
    }
    if not all(path.is_file() for path in libraries.values()):
        return None
    return NativeBuild(libraries)


class NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled library of each module of a matching build; any other
    module is left to the usual finders."""

    def __init__(self, build: NativeBuild) -> None:
        self.build = build

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        library = self.build.libraries.get(fullname)
        if library is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(library))
        return importlib.util.spec_from_file_location(fullname, library, loader=loader)


def install(build_dir: Path = BUILD_DIR) -> NativeBuild | None:
    """Load :data:`MODULES` from a matching build from now on (once per process); None
    when running from source (no matching build, or ``VGATE_NATIVE=0``)."""
    for finder in sys.meta_path:
        if isinstance(finder, NativeFinder):
            return finder.build
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return None
    build = matching_build(build_dir)
    if build is None:
        return None
    finder = NativeFinder(build)
    sys.meta_path.insert(0, finder)
    try:  # the group's library holds all the code: if it loads, the modules do
        importlib.import_module(shared_library_name())
    except (ImportError, OSError) as exc:  # e.g. built against a newer C library
        sys.meta_path.remove(finder)
        sys.modules.pop(shared_library_name(), None)
        warnings.warn(
            f"compiled request path not loaded ({exc}): running from source", stacklevel=2
        )
        return None
    return build


def running_native() -> list[str]:
    """The modules of :data:`MODULES` imported from their compiled library."""
    return [
        name
        for name in MODULES
        if (module := sys.modules.get(name)) is not None
        and not str(getattr(module, "__file__", "")).endswith(".py")
    ]
