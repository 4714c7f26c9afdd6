"""README.md tells the truth about the knobs, the CLI and the metrics.

Each test walks what the code defines and looks for it where README documents it, so
a new settings field, CLI option or metric fails here until it is documented:

* settings: every field of the models in ``gateway/config/`` (and ``engines.spec``),
  by dotted path (``ratelimit.on_redis_error``, ``models.engine.health.interval_s``;
  ``*`` for a mapping's keys), is a key at its place in the YAML block of README's
  "Configuration reference". A nested section the block shows as ``null`` counts as
  documented when the same section (or one that extends it) is shown in full
  elsewhere in the block (``models[].routing``: the top-level ``routing``).
* defaults: outside lists (whose entries are examples), the value the block gives a
  field is the code's default.
* CLI: every command ``vgate`` parses, and every option of it, is in the first cell of
  its row in "CLI reference" (commands that hand over to another parser, such as
  ``vgate engines stub``, are checked against that parser).
* metrics: every family a running gateway's ``/metrics`` declares is named in the
  "Metrics" section.
* config files: every ``deploy/`` config loads through the settings, and README's YAML
  blocks of settings use no key the settings refuse; every ``VGATE_<SECTION>__<KEY>``
  they name is a settings field.
"""

from __future__ import annotations

import argparse
import re
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.app import create_app
from gateway.cli.main import main as vgate_main
from gateway.config.settings import Settings, load_settings
from tests.helpers.readme import (
    load_yaml,
    readme_text,
    section,
    table_first_cells,
    yaml_blocks,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIGS = (
    "deploy/docker/gateway.yaml",
    "deploy/docker/engine.yaml",
    "deploy/docker/engine-cpu.yaml",
    "deploy/k8s/base/gateway.yaml",
    "deploy/k8s/base/engine.yaml",
    "deploy/k8s/overlays/cpu-dev/engine.yaml",
)
# What the deployments set through the environment (their Secrets), never in the files.
DEPLOY_ENV = {
    "VGATE_REDIS__URL": "redis://gateway:password@redis:6379/0",
    "VGATE_AUTH__ADMIN_KEY": "sk-admin-0123456789abcdef",
}


def _reference() -> dict[str, Any]:
    blocks = yaml_blocks(section("Configuration reference"))
    assert blocks, "README's configuration reference has no ```yaml block"
    reference = load_yaml(blocks[0])
    assert isinstance(reference, dict)
    return reference


# --- settings ----------------------------------------------------------------------


def _unwrapped(annotation: Any) -> tuple[Any, str]:
    """``annotation`` without ``| None``, and how it holds its values: ``one``, ``list``
    (a tuple or list of them) or ``map`` (a dict's values)."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            annotation = inner[0]
    origin = get_origin(annotation)
    if origin in (tuple, list):
        return get_args(annotation)[0], "list"
    if origin is dict:
        return get_args(annotation)[1], "map"
    return annotation, "one"


def _section_class(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    inner, shape = _unwrapped(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner, shape
    return None, shape


def _entries(value: Any, shape: str) -> list[dict[str, Any]]:
    """The mappings the reference gives for a nested section (none when it shows
    ``null``, ``{}`` or ``[]``)."""
    if shape == "list" and isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    if shape == "map" and isinstance(value, dict):
        return [item for item in value.values() if isinstance(item, dict)]
    if shape == "one" and isinstance(value, dict) and value:
        return [value]
    return []


def _shown_in_full(
    model: type[BaseModel], entries: Sequence[dict[str, Any]], found: set[type[BaseModel]]
) -> None:
    """Record every section class the reference shows as a mapping."""
    if entries:
        found.add(model)
    for name, field in model.model_fields.items():
        nested, shape = _section_class(field.annotation)
        if nested is None:
            continue
        inner = [e for entry in entries if name in entry for e in _entries(entry[name], shape)]
        _shown_in_full(nested, inner, found)


def _field_paths(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}"
        yield path
        nested, shape = _section_class(field.annotation)
        if nested is not None:
            yield from _field_paths(nested, f"{path}.*" if shape == "map" else path)


def _undocumented(
    model: type[BaseModel],
    entries: Sequence[dict[str, Any]],
    prefix: str,
    shown: set[type[BaseModel]],
) -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        holding = [entry for entry in entries if name in entry]
        if not holding:
            yield path
            continue
        nested, shape = _section_class(field.annotation)
        if nested is None:
            continue
        inner = [e for entry in holding for e in _entries(entry[name], shape)]
        below = f"{path}.*." if shape == "map" else f"{path}."
        if inner:
            yield from _undocumented(nested, inner, below, shown)
        elif not any(issubclass(cls, nested) for cls in shown):
            yield from _field_paths(nested, below.rstrip("."))


def test_every_settings_field_is_in_the_configuration_reference() -> None:
    reference = _reference()
    shown: set[type[BaseModel]] = set()
    _shown_in_full(Settings, [reference], shown)
    missing = [
        f"settings field {path} not documented in README's configuration reference"
        for path in _undocumented(Settings, [reference], "", shown)
    ]
    assert not missing, "\n".join(missing)


def _stated_defaults(
    model: type[BaseModel], shown: dict[str, Any], prefix: str
) -> Iterator[tuple[str, Any, Any]]:
    """``(path, README's value, the code's default)`` for every scalar the reference
    gives outside lists; a nested section shown as a mapping is walked too."""
    for name, field in model.model_fields.items():
        if name not in shown:
            continue
        value = shown[name]
        nested, shape = _section_class(field.annotation)
        if nested is not None:
            if shape == "one" and isinstance(value, dict):
                yield from _stated_defaults(nested, value, f"{prefix}{name}.")
            continue
        if shape != "one" or field.is_required():
            continue  # lists and mappings: the reference shows examples
        yield f"{prefix}{name}", value, field


def test_defaults_in_the_configuration_reference_are_the_codes() -> None:
    wrong = []
    checked = 0
    for path, value, field in _stated_defaults(Settings, _reference(), ""):
        default = field.get_default(call_default_factory=True)
        try:
            stated = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError:
            stated = value
        checked += 1
        if stated != default:
            wrong.append(
                f"README's configuration reference gives {path}: {value!r}, "
                f"the code's default is {default!r}"
            )
    assert checked > 50, "the reference's defaults were not found"
    assert not wrong, "\n".join(wrong)


# --- config files ------------------------------------------------------------------


def _unknown_keys(data: dict[str, Any]) -> list[str]:
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        return [
            ".".join(str(part) for part in error["loc"])
            for error in exc.errors()
            if error["type"] == "extra_forbidden"
        ]
    return []


def test_readme_yaml_blocks_use_only_keys_the_settings_take() -> None:
    sections = set(Settings.model_fields)
    checked = 0
    problems = []
    for number, block in enumerate(yaml_blocks(readme_text()), start=1):
        data = load_yaml(block)
        if not isinstance(data, dict) or not set(data) & sections:
            continue  # not a gateway config (a Compose file, a Kubernetes object)
        checked += 1
        first_line = block.splitlines()[0]
        problems += [
            f"README's YAML block {number} ({first_line!r}): {key} is refused by the settings"
            for key in _unknown_keys(data)
        ]
    assert checked >= 5, "README's config examples were not found"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("relative", DEPLOY_CONFIGS)
def test_deploy_configs_load_through_the_settings(
    relative: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(REPO / relative)
    assert settings.redis.url is not None


_ENV_OVERRIDE = re.compile(r"\bVGATE_([A-Z0-9_]+?(?:__[A-Z0-9_]+)+)\b")


def _is_settings_path(parts: Sequence[str]) -> bool:
    """Whether ``parts`` (a variable's names, lower case) lead to a settings field; a
    list or a mapping is set whole (as JSON), never one of its entries' fields."""
    model: type[BaseModel] | None = Settings
    for depth, part in enumerate(parts, start=1):
        if model is None or part not in model.model_fields:
            return False
        model, shape = _section_class(model.model_fields[part].annotation)
        if shape != "one" and depth < len(parts):
            return False
    return True


def test_env_overrides_in_deploy_files_and_readme_name_settings_fields() -> None:
    files = [REPO / "README.md", *(f for f in (REPO / "deploy").rglob("*") if f.is_file())]
    found = 0
    wrong = []
    for path in files:
        for match in _ENV_OVERRIDE.finditer(path.read_text(encoding="utf-8", errors="replace")):
            found += 1
            if not _is_settings_path(match.group(1).lower().split("__")):
                wrong.append(
                    f"VGATE_{match.group(1)} in {path.relative_to(REPO)} names no settings "
                    "field (the gateway refuses it at start-up)"
                )
    assert found >= 10, "no VGATE_<SECTION>__<KEY> variables found"
    assert not wrong, "\n".join(sorted(set(wrong)))


# --- CLI ---------------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def _parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``vgate <argv>`` parses its arguments with (caught, never run)."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    with monkeypatch.context() as patched:
        patched.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Parsed) as caught:
            vgate_main(argv)
    return caught.value.parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        if path and parser.get_default("handler") is None and not parser.add_help:
            parser = _parser_of(list(path), monkeypatch)  # handed over: `engines stub`
        yield path, parser
        return
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*path, name), monkeypatch)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def _row_of(command: str, rows: Sequence[str]) -> str | None:
    for cell in rows:
        text = cell.replace("`", "")
        if text == command or text.startswith(f"{command} "):
            return text
    return None


def test_every_cli_command_and_option_is_in_the_cli_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = table_first_cells(section("CLI reference"))
    top = _parser_of([], monkeypatch)
    problems = []
    commands = list(_commands(top, (), monkeypatch))
    for path, parser in commands:
        command = " ".join(("vgate", *path))
        row = _row_of(command, rows)
        if row is None:
            problems.append(f"CLI command `{command}` not documented in README's CLI reference")
            continue
        problems += [
            f"CLI option {option} of `{command}` not documented in README's CLI reference "
            "(the first cell of its row)"
            for option in _options(parser)
            if re.search(rf"{re.escape(option)}(?![\w-])", row) is None
        ]
    assert len(commands) >= 10, "the CLI's commands were not found"
    assert not problems, "\n".join(problems)


# --- metrics -----------------------------------------------------------------------


async def _declared_metrics() -> list[str]:
    """Every family /metrics declares, for a config with every feature that brings
    metrics of its own (rollouts with a shadow, the cache, keys)."""
    endpoint = ["http://127.0.0.1:9"]
    settings = Settings.model_validate(
        {
            "server": {"public_metrics": True},
            "models": [{"name": name, "endpoints": endpoint} for name in ("a", "b", "c")],
            "rollouts": [
                {
                    "model": "r",
                    "variants": [{"model": "a", "weight": 1}, {"model": "b", "weight": 1}],
                    "shadow": {"model": "c", "share": 0.5},
                }
            ],
            "cache": {"enabled": True},
            "auth": {"enabled": True, "keys": [{"name": "k", "key": "sk-docs-truth"}]},
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return re.findall(r"^# TYPE (\S+) \S+$", answer.text, re.MULTILINE)


async def test_every_metric_is_in_the_metrics_list() -> None:
    declared = await _declared_metrics()
    listed = set(re.findall(r"`([a-z_:][a-z0-9_:]*)[`{]", section("Metrics")))
    missing = [
        f"metric {name} not documented in README's metrics list (section Metrics)"
        for name in declared
        if name not in listed
    ]
    assert len(declared) > 20, "the gateway's metrics were not found"
    assert not missing, "\n".join(missing)
