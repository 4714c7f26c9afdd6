"""DESIGN.md §4's dependency direction, checked over the source tree (vgate issue #12).

The rules and the checker live in :mod:`tests.import_contract`; this module runs them
over the repository and shows on a planted tree that a violation is reported.
"""

from __future__ import annotations

from pathlib import Path

from tests.import_contract import RULES, Violation, check, matches, module_files

ROOT = Path(__file__).resolve().parents[2]

#: Known violations tolerated for now: ``(importing module, imported prefix)``.
#: Each entry must name the change that removes it; an entry that no longer matches
#: a violation fails ``test_allow_list_has_no_stale_entries`` so it gets deleted.
#: Empty: the last entries (``gateway.pipeline.cache_flow`` and ``.service`` importing
#: ``starlette``) went when the pipeline started returning domain results.
ALLOWED: tuple[tuple[str, str], ...] = ()


def is_allowed(violation: Violation) -> bool:
    return any(
        violation.module == module and matches(violation.imported, [imported])
        for module, imported in ALLOWED
    )


def test_source_tree_follows_the_import_contract() -> None:
    modules = {name for name, _ in module_files(ROOT)}
    assert {"gateway.app", "gateway.protocol", "engines.spec"} <= modules  # not vacuous
    violations = [v for v in check(ROOT) if not is_allowed(v)]
    assert not violations, "import contract broken:\n" + "\n".join(map(str, violations))


def test_allow_list_has_no_stale_entries() -> None:
    violations = check(ROOT)
    stale = [
        entry
        for entry in ALLOWED
        if not any(v.module == entry[0] and matches(v.imported, [entry[1]]) for v in violations)
    ]
    assert not stale, f"allow-list entries no longer needed, remove them: {stale}"


def test_every_rule_states_its_reason() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert all(rule.why.strip() for rule in RULES)
    assert all(rule.forbidden or rule.allowed_only is not None for rule in RULES)


def plant(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_planted_violations_are_reported_exactly(tmp_path: Path) -> None:
    plant(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/app.py": "import fastapi\n",
            "gateway/errors.py": "import orjson\n",
            "gateway/config/__init__.py": "",
            "gateway/config/settings.py": "from gateway import errors\n",
            "gateway/routing/__init__.py": "",
            "gateway/routing/bad.py": (
                "from __future__ import annotations\n"
                "import bisect\n"
                "from ..config import settings\n"
                "from starlette.responses import Response\n"
                "import gateway.observability.metrics\n"
            ),
            "gateway/http/__init__.py": "",
            "gateway/http/routes.py": (
                "from . import handlers\n"
                "from ..backends import memory\n"
                "def later() -> None:\n"
                "    import redis.asyncio\n"
            ),
            "gateway/http/handlers.py": "",
            "gateway/backends/__init__.py": "",
            "gateway/backends/memory.py": "",
            "engines/__init__.py": "",
            "engines/x.py": "import os\nfrom gateway.app import create_app\n",
        },
    )

    found = [str(v) for v in check(tmp_path)]

    assert found == [
        "engines.x:2 imports gateway.app (rule: engines-never-import-gateway)",
        "engines.x:2 imports gateway.app (rule: only-cli-imports-the-composition-root)",
        "gateway.http.routes:2 imports gateway.backends.memory "
        "(rule: http-never-touches-redis-or-upstream)",
        "gateway.http.routes:4 imports redis.asyncio (rule: http-never-touches-redis-or-upstream)",
        "gateway.routing.bad:4 imports starlette.responses "
        "(rule: policies-import-no-framework-and-nothing-above)",
        "gateway.routing.bad:5 imports gateway.observability.metrics "
        "(rule: routing-imports-only-config-and-errors)",
    ]


def test_allowed_only_rules_restrict_third_party_or_ours(tmp_path: Path) -> None:
    plant(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/errors.py": "import orjson\nfrom gateway.config import sections\n",
            "gateway/config/__init__.py": "",
            "gateway/config/sections.py": "",
            "gateway/protocol/__init__.py": (
                "from typing import Any\nimport pydantic\nimport redis\n"
            ),
        },
    )

    found = [str(v) for v in check(tmp_path)]

    assert found == [
        "gateway.errors:2 imports gateway.config.sections (rule: errors-import-nothing-of-ours)",
        "gateway.protocol:3 imports redis (rule: protocol-imports-only-pydantic-and-orjson)",
    ]
