"""pyproject.toml and the lock files agree with the code and with each other (vgate issue #12).

The runtime dependencies are what ``gateway/`` and ``engines/`` import when they run
(module-level imports; a function-level import such as ``engines/models``' torch runs
in another virtualenv); the extras are grouped by purpose with ``dev`` the union of
them all; ``requirements/*.lock`` pin every package with hashes and satisfy
pyproject.toml, so a lock left behind by an edit of pyproject.toml fails here before
it fails ``pip install --require-hashes`` on a fresh machine. Nothing is downloaded:
module names are mapped to distributions through this virtualenv's metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OURS = {"gateway", "engines"}

#: Runtime dependencies no module imports, each with where the code asks for it.
NAMED_NOT_IMPORTED = {
    "uvloop": 'uvicorn.Config(loop="uvloop") in gateway/cli/main.py, uvicorn.run(loop="uvloop") '
    "in engines/stub/server.py",
    "httptools": 'uvicorn.run(http="httptools") in engines/stub/server.py; the gateway runs '
    "a subclass of uvicorn's HttpToolsProtocol (gateway/http/connections.py)",
}

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*\\)?$")


def requirements(entries: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(entry) for entry in entries]
    return {canonicalize_name(req.name): req for req in parsed}


def runtime() -> dict[str, Requirement]:
    return requirements(PROJECT["dependencies"])


def extra(name: str) -> dict[str, Requirement]:
    return requirements(PROJECT["optional-dependencies"][name])


def module_level_imports(path: Path) -> set[str]:
    """Top-level names imported when ``path`` is imported (function bodies skipped)."""
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return found


def third_party_imports() -> dict[str, list[str]]:
    """Third-party top-level module -> the files of ours that import it."""
    users: dict[str, list[str]] = {}
    for package in sorted(OURS):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in module_level_imports(path):
                if name not in OURS and name not in sys.stdlib_module_names:
                    users.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return users


def read_lock(name: str) -> dict[str, tuple[str, int]]:
    """``requirements/<name>``: canonical name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pin = PIN.match(line)
        if pin:
            current = canonicalize_name(pin[1])
            pins[current] = (pin[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        else:
            raise AssertionError(f"{name}: not a pin or a hash: {line!r}")
    return pins


def test_license_is_an_spdx_expression_with_its_file() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_runtime_dependencies_are_what_the_code_imports() -> None:
    modules = packages_distributions()
    imported: dict[str, list[str]] = {}
    declared = set(runtime())
    for module, users in third_party_imports().items():
        assert module in modules, f"{module} (imported by {users}) is not installed"
        distributions = [canonicalize_name(d) for d in modules[module]]
        if len(distributions) > 1:  # a namespace package (opentelemetry) spans several:
            distributions = [d for d in distributions if d in declared] or distributions
        for distribution in distributions:
            imported.setdefault(distribution, []).extend(users)
    undeclared = {name: users for name, users in imported.items() if name not in declared}
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"
    unused = declared - imported.keys() - NAMED_NOT_IMPORTED.keys()
    assert not unused, f"in [project.dependencies] but imported by nothing: {unused}"
    assert {"fastapi", "aiohttp", "redis"} <= imported.keys()  # not vacuous


def test_named_not_imported_dependencies_are_still_named() -> None:
    for path in ("gateway/cli/main.py", "engines/stub/server.py"):
        assert 'loop="uvloop"' in (ROOT / path).read_text(), path
    assert 'http="httptools"' in (ROOT / "engines/stub/server.py").read_text()
    assert "(HttpToolsProtocol)" in (ROOT / "gateway/http/head_fields.py").read_text()


def test_extras_are_grouped_by_purpose_and_dev_is_all_of_them() -> None:
    groups = PROJECT["optional-dependencies"]
    assert set(groups) == {"deploy", "test", "bench", "lint", "dev"}
    assert extra("deploy").keys() <= extra("test").keys()  # the suite runs the deploy checks
    assert extra("test").keys() | extra("bench").keys() <= extra("lint").keys()  # mypy reads both
    others = [extra(name) for name in ("deploy", "test", "bench", "lint")]
    assert set(map(str, extra("dev").values())) == {str(r) for g in others for r in g.values()}
    assert not {"httpx", "pytest", "openai"} & runtime().keys()


def test_locks_pin_every_package_with_hashes_and_satisfy_pyproject() -> None:
    gateway, dev = read_lock("gateway.lock"), read_lock("dev.lock")
    for name, pins in (("gateway.lock", gateway), ("dev.lock", dev)):
        unhashed = sorted(package for package, (_, hashes) in pins.items() if not hashes)
        assert not unhashed, f"{name}: pins without hashes: {unhashed}"
    wanted = [("gateway.lock", gateway, runtime()), ("dev.lock", dev, runtime() | extra("dev"))]
    for name, pins, reqs in wanted:
        for package, req in reqs.items():
            assert package in pins, f"{name} lacks {req}: run scripts/lock.sh"
            version = pins[package][0]
            assert req.specifier.contains(version, prereleases=True), (
                f"{name} pins {package}=={version}, pyproject wants {req}: run scripts/lock.sh"
            )


def test_gateway_lock_is_the_runtime_alone_and_agrees_with_dev_lock() -> None:
    gateway, dev = read_lock("gateway.lock"), read_lock("dev.lock")
    tools = extra("dev").keys() - runtime().keys()
    assert not tools & gateway.keys(), "a dev tool is in the runtime lock"
    assert gateway.keys() <= dev.keys()
    differ = {p: (gateway[p][0], dev[p][0]) for p in gateway if gateway[p][0] != dev[p][0]}
    assert not differ, f"versions differ between gateway.lock and dev.lock: {differ}"
