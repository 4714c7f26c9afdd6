"""The import contract of DESIGN.md §4, as data, and a checker over the ``ast`` of a tree.

The layers of ``gateway`` (lowest first: ``errors`` and ``protocol`` → ``config`` →
the policies → ``observability`` → ``backends`` → ``pool`` and ``upstream`` →
``pipeline`` → ``http`` → ``app`` and ``cli``) only stay layers if an import in the
wrong direction fails a test. :data:`RULES` is that direction, one :class:`Rule` per
line of §4, each with the reason it exists; :func:`check` reads every ``.py`` under
``<root>/gateway`` and ``<root>/engines`` without importing anything (so a planted
violation in a scratch tree can be checked the same way as the real one) and returns
one :class:`Violation` per offending import statement.

What counts as an import: every ``import`` and ``from ... import`` statement anywhere
in a module (inside functions and ``if TYPE_CHECKING:`` blocks too, since a lazy
import is still a dependency), relative imports resolved against the module's
package, and ``from package import name`` recorded as ``package.name`` when that
name is a module of the tree (``from gateway.http import admin`` depends on
``gateway.http.admin``, not merely on ``gateway.http``). Imports built from strings
(``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Top-level packages that are "ours"; an ``allowed_only`` rule with ``within="ours"``
#: restricts only imports of these.
OURS = ("gateway", "engines")

HTTP_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")
ABOVE_POLICIES = (
    "gateway.http",
    "gateway.pipeline",
    "gateway.upstream",
    "gateway.pool",
    "gateway.backends",
    "gateway.app",
    "gateway.cli",
)


@dataclass(frozen=True)
class Rule:
    """One line of the contract: what modules under ``sources`` may not import.

    ``forbidden`` lists prefixes no import may match. ``allowed_only``, when set,
    lists the only prefixes an import may match: every import except the standard
    library's (``within="all"``) or every import of ``gateway``/``engines``
    (``within="ours"``). Modules matching ``exempt`` are outside the rule. A prefix
    matches a module name equal to it or below it (``gateway.http`` matches
    ``gateway.http.context``, not ``gateway.httpx``).
    """

    name: str
    sources: tuple[str, ...]
    why: str
    forbidden: tuple[str, ...] = ()
    allowed_only: tuple[str, ...] | None = None
    within: Literal["ours", "all"] = "ours"
    exempt: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule(
        name="engines-never-import-gateway",
        sources=("engines",),
        forbidden=("gateway",),
        why="Engines run (and are supervised) without a gateway: the stub engine and the "
        "model scripts start in their own processes and venvs, and a gateway import "
        "would pull FastAPI and the whole gateway into them and make a cycle.",
    ),
    Rule(
        name="protocol-imports-only-pydantic-and-orjson",
        sources=("gateway.protocol",),
        allowed_only=("pydantic", "orjson", "gateway.protocol"),
        within="all",
        why="The OpenAI wire models (and the exact reading of a JSON body, in orjson's "
        "terms) are the shared vocabulary of every layer; depending on nothing but "
        "pydantic and orjson keeps them importable from anywhere without cycles.",
    ),
    Rule(
        name="errors-import-nothing-of-ours",
        sources=("gateway.errors",),
        allowed_only=("gateway.errors",),
        why="Every layer raises GatewayError subclasses; the module defining them must be "
        "the bottom of the graph.",
    ),
    Rule(
        name="config-imports-only-errors-and-engine-specs",
        sources=("gateway.config",),
        allowed_only=("gateway.config", "gateway.errors", "engines.spec"),
        why="Settings are read by every layer (and by the cli before anything is built); "
        "they describe, they do not reach into the layers they configure.",
    ),
    Rule(
        name="http-never-touches-redis-or-upstream",
        sources=("gateway.http",),
        forbidden=("redis", "aiohttp", "gateway.backends", "gateway.upstream"),
        why="Routes are thin: they hand requests to the pipeline and render its results. "
        "Shared state and engine traffic go through the pipeline, which owns a request's "
        "resources and releases them on every exit path.",
    ),
    Rule(
        name="policies-import-no-framework-and-nothing-above",
        sources=(
            "gateway.auth",
            "gateway.ratelimit",
            "gateway.cache",
            "gateway.routing",
            "gateway.responses",
        ),
        forbidden=(*HTTP_FRAMEWORKS, "aiohttp", "httpx", "redis", *ABOVE_POLICIES),
        why="Policies are decisions over plain values, unit-testable without a server, an "
        "engine or Redis; stores implementing their protocols live in backends, and the "
        "pipeline calls them, never the reverse.",
    ),
    Rule(
        name="routing-imports-only-config-and-errors",
        sources=("gateway.routing",),
        allowed_only=("gateway.routing", "gateway.config", "gateway.errors"),
        why="Routing works on immutable snapshots of the pool, never on live objects, so "
        "a choice is a pure function of its inputs (DESIGN.md §4).",
    ),
    Rule(
        name="ratelimit-never-imports-auth",
        sources=("gateway.ratelimit",),
        forbidden=("gateway.auth",),
        why="Auth depends on ratelimit's limit types (a key carries its limits), not the "
        "reverse; a scope names its owner instead of the limiter parsing auth's keys.",
    ),
    Rule(
        name="backends-import-nothing-above",
        sources=("gateway.backends",),
        forbidden=(
            "gateway.http",
            "gateway.pipeline",
            "gateway.upstream",
            "gateway.pool",
            "gateway.app",
            "gateway.cli",
            "fastapi",
            "starlette",
            "aiohttp",
        ),
        why="Backends implement the policies' store protocols; they may know those types, "
        "errors and config, but nothing that uses them.",
    ),
    Rule(
        name="pipeline-knows-no-http-framework",
        sources=("gateway.pipeline",),
        forbidden=(
            *HTTP_FRAMEWORKS,
            "aiohttp",
            "redis",
            "gateway.http",
            "gateway.app",
            "gateway.cli",
            "gateway.backends",
        ),
        why="The pipeline returns domain results and raises GatewayError; http renders "
        "them. Engine traffic goes through upstream's client, shared state through the "
        "policies' protocols, so the pipeline runs against fakes in unit tests.",
    ),
    Rule(
        name="upstream-never-imports-pipeline-or-http",
        sources=("gateway.upstream",),
        forbidden=(
            "gateway.pipeline",
            "gateway.http",
            "gateway.app",
            "gateway.cli",
            "fastapi",
            "starlette",
        ),
        why="The upstream client is a tool the pipeline uses (behind a Protocol with a "
        "fake for tests); it knows engines and HTTP-to-engines, not the gateway's own "
        "HTTP edge.",
    ),
    Rule(
        name="pool-never-imports-pipeline-or-http",
        sources=("gateway.pool",),
        forbidden=("gateway.pipeline", "gateway.http", "gateway.app", "gateway.cli"),
        why="The pool is the gateway's view of its engines, shared by every request and "
        "by background probes; requests depend on it, not the reverse.",
    ),
    Rule(
        name="observability-and-background-are-leaves",
        sources=("gateway.observability", "gateway.background"),
        forbidden=(
            "gateway.pipeline",
            "gateway.http",
            "gateway.app",
            "gateway.cli",
            "gateway.pool",
            "gateway.upstream",
            "gateway.backends",
        ),
        why="Metrics and periodic tasks are used by nearly every layer; importing any of "
        "those layers back would make cycles.",
    ),
    Rule(
        name="rollouts-sit-beside-the-pipeline",
        sources=("gateway.rollouts",),
        forbidden=("gateway.http", "gateway.pipeline", "gateway.app", "gateway.cli"),
        why="Rollouts (variant choice, shadow copies, the controller) are decisions the "
        "pipeline calls, over config, metrics and the shared-state backends; importing "
        "the pipeline or the HTTP edge back would make a cycle.",
    ),
    Rule(
        name="nothing-below-the-pipeline-imports-rollouts",
        sources=(
            "gateway.errors",
            "gateway.protocol",
            "gateway.config",
            "gateway.auth",
            "gateway.ratelimit",
            "gateway.cache",
            "gateway.routing",
            "gateway.responses",
            "gateway.observability",
            "gateway.background",
            "gateway.backends",
            "gateway.pool",
            "gateway.upstream",
        ),
        forbidden=("gateway.rollouts",),
        why="Rollouts use the layers below the pipeline (config, metrics, backends, the "
        "pool); those layers never depend on them, so the direction stays one way.",
    ),
    Rule(
        name="only-cli-imports-the-composition-root",
        sources=OURS,
        forbidden=("gateway.app",),
        exempt=("gateway.app", "gateway.cli"),
        why="gateway.app builds and wires everything; a layer importing it would depend "
        "on every other layer. The cli imports it lazily to serve.",
    ),
    Rule(
        name="only-the-entry-point-imports-the-cli",
        sources=OURS,
        forbidden=("gateway.cli",),
        exempt=("gateway.cli", "gateway.__main__"),
        why="The cli is the top of the stack (it may import anything), so nothing but "
        "``python -m gateway`` may import it.",
    ),
)


@dataclass(frozen=True)
class Import:
    """One imported module name, as written at ``line`` of ``module``."""

    module: str
    line: int
    imported: str


@dataclass(frozen=True)
class Violation:
    """An import that breaks ``rule``; ``str()`` is the line a failing test prints."""

    module: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported} (rule: {self.rule})"


def matches(name: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or lies below one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_stdlib(name: str) -> bool:
    return name.split(".", 1)[0] in sys.stdlib_module_names


def module_files(root: Path, packages: Sequence[str] = OURS) -> Iterator[tuple[str, Path]]:
    """``(dotted module name, path)`` of every ``.py`` under ``root/<package>``, sorted."""
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def _is_module(root: Path, dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(root: Path, module: str, path: Path) -> list[Import]:
    """Every module ``path`` (the source of ``module``) imports, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(module, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                named = candidate if _is_module(root, candidate) else base
                found.append(Import(module, node.lineno, named))
    found = list(dict.fromkeys(found))
    found.sort(key=lambda i: (i.line, i.imported))
    return found


def breaks(rule: Rule, imp: Import) -> bool:
    """Whether ``imp`` breaks ``rule`` (assuming its module is one of the rule's sources)."""
    if matches(imp.imported, rule.forbidden):
        return True
    if rule.allowed_only is None or matches(imp.imported, rule.allowed_only):
        return False
    if rule.within == "ours":
        return matches(imp.imported, OURS)
    return not is_stdlib(imp.imported)


def check(root: Path, rules: Sequence[Rule] = RULES) -> list[Violation]:
    """Every violation of ``rules`` under ``root/gateway`` and ``root/engines``, sorted."""
    violations: list[Violation] = []
    for module, path in module_files(root):
        applicable = [
            r for r in rules if matches(module, r.sources) and not matches(module, r.exempt)
        ]
        if not applicable:
            continue
        for imp in imports_of(root, module, path):
            violations.extend(
                Violation(module, imp.line, imp.imported, r.name)
                for r in applicable
                if breaks(r, imp)
            )
    return sorted(violations, key=lambda v: (v.module, v.line, v.imported, v.rule))
