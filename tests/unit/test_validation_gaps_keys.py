"""Key requests with careless or hostile input (bug hunt): ``vgate keys create --models``
strips each name and refuses an empty one; ``/admin/keys`` checks its ``models`` as it
checks ``variants`` (printable, bounded length, bounded count); an expiry is ASCII
(``٣s`` is not 3 s) and an empty one is an error, not "never"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.auth import key_admin
from gateway.auth.key_admin import KeyRequestError, NewKey, create_key
from gateway.auth.keys import parse_expiry
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.cli import keys as cli_keys
from gateway.cli.main import main
from gateway.config.settings import Settings

ADMIN_KEY = "sk-admin-gaps-0123456789abcdef"
MAX_MODELS = 1000
"""The bound on a key's ``models`` (``key_admin.MAX_MODELS``, checked below)."""


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MemoryKeyStore:
    """``vgate keys`` against a memory store instead of Redis; the config names a Redis
    that is never called."""
    memory = MemoryKeyStore()

    def with_store(
        _: Settings, action: Callable[[MemoryKeyStore], Coroutine[Any, Any, Any]]
    ) -> Any:
        return asyncio.run(action(memory))

    monkeypatch.setattr(cli_keys, "_with_store", with_store)
    (tmp_path / "vgate.yaml").write_text("redis: {url: 'redis://127.0.0.1:1/0'}\n")
    monkeypatch.chdir(tmp_path)
    return memory


def vgate_keys_create(*args: str) -> int:
    return main(["keys", "create", "--config", "vgate.yaml", "--json", *args])


def test_cli_models_are_stripped(store: MemoryKeyStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert vgate_keys_create("--name", "spaced", "--models", " a, b ,c") == 0
    assert orjson.loads(capsys.readouterr().out)["models"] == ["a", "b", "c"]
    (record,) = asyncio.run(store.load_all())
    assert record.models == ("a", "b", "c")


@pytest.mark.parametrize("models", ["a,,b", "a,", ",a", "a, ,b", "", " "])
def test_cli_an_empty_model_name_is_refused_and_nothing_is_stored(
    store: MemoryKeyStore, capsys: pytest.CaptureFixture[str], models: str
) -> None:
    """``--models ""`` too: it must not quietly make a key for every model."""
    assert vgate_keys_create("--name", "holes", "--models", models) == 2
    assert "--models" in capsys.readouterr().err
    assert asyncio.run(store.load_all()) == []


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--max-concurrent"])
@pytest.mark.parametrize("value", ["٣", "1_000", "-5", "2.0", "\uff11"])
def test_cli_limits_are_ascii_whole_numbers(
    store: MemoryKeyStore, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """argparse's ``int`` takes Unicode digits and underscores: ``--rpm ٣`` made rpm 3."""
    with pytest.raises(SystemExit) as refused:
        vgate_keys_create("--name", "digits", flag, value)
    assert refused.value.code == 2
    assert "whole number" in capsys.readouterr().err
    assert asyncio.run(store.load_all()) == []


def test_cli_limits_in_digits_are_kept(
    store: MemoryKeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vgate_keys_create("--name", "ok", "--rpm", "60", "--max-concurrent", "2") == 0
    created = orjson.loads(capsys.readouterr().out)
    assert (created["rpm"], created["max_concurrent"]) == (60, 2)


def test_cli_an_empty_expiry_is_refused(
    store: MemoryKeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vgate_keys_create("--name", "blank", "--expires", "") == 2
    assert "expiry is empty" in capsys.readouterr().err
    assert asyncio.run(store.load_all()) == []


@pytest.mark.parametrize(
    "models",
    [
        ["a\nb"],
        ["a\x00"],
        ["a\rb"],
        ["a\x7f"],
        ["a\x85"],  # a C1 control character
        ["a\u2028b"],  # a line separator
        [""],
        ["x" * 257],
        [f"m{i}" for i in range(MAX_MODELS + 1)],
    ],
)
def test_admin_bad_model_names_or_too_many_are_refused(models: list[str]) -> None:
    with pytest.raises(KeyRequestError) as refused:
        NewKey.parse({"name": "k", "models": models})
    assert str(refused.value).startswith("models")
    assert len(str(refused.value)) < 200  # the input is not echoed in full


def test_admin_models_within_the_bounds_are_kept() -> None:
    assert getattr(key_admin, "MAX_MODELS", None) == MAX_MODELS
    names = [f"org/model-{i}:v1.5 (ß)" for i in range(MAX_MODELS - 1)] + ["x" * 256]
    assert NewKey.parse({"name": "k", "models": names}).models == names


async def test_admin_api_answers_400_in_openai_shape_and_stores_nothing() -> None:
    settings = Settings(
        models=[{"name": "m", "endpoints": ["http://127.0.0.1:9"]}],
        auth={"enabled": True, "admin_key": ADMIN_KEY},
    )
    app = create_app(settings)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for body in (
                {"name": "nl", "models": ["m\nX-Injected: 1"]},
                {"name": "many", "models": ["m"] * (MAX_MODELS + 1)},
                {"name": "arabic", "expires": "\u0663s"},
                {"name": "blank", "expires": ""},
            ):
                made = await client.post("/admin/keys", json=body, headers=headers)
                assert made.status_code == 400, made.text
                error = made.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "invalid_request_error"
            listing = await client.get("/admin/keys", headers=headers)
    assert listing.json()["data"] == []


@pytest.mark.parametrize(
    "expires",
    [
        "\u0663s",  # ARABIC-INDIC DIGIT THREE
        "\uff13d",  # FULLWIDTH DIGIT THREE
        "1\u0660h",
        "\u0968w",  # DEVANAGARI DIGIT TWO
        "2030-01-0\u0661",
        "",
        "   ",
    ],
)
def test_an_expiry_that_is_not_ascii_or_is_empty_is_refused(expires: str) -> None:
    with pytest.raises(ValueError, match="expiry"):
        parse_expiry(expires, now=0.0)


@pytest.mark.parametrize("expires", ["\u0663s", "", " "])
async def test_admin_such_an_expiry_is_refused_and_nothing_is_stored(expires: str) -> None:
    store = MemoryKeyStore()
    with pytest.raises(KeyRequestError):
        await create_key(store, NewKey.parse({"name": "k", "expires": expires}), ())
    assert await store.load_all() == []


async def test_no_expiry_is_still_never() -> None:
    """Left out or null: the key never expires (the documented contract)."""
    for body in ({"name": "k1"}, {"name": "k2", "expires": None}):
        _, record = await create_key(MemoryKeyStore(), NewKey.parse(body), ())
        assert record.expires_at is None


def test_ascii_durations_still_count_from_now() -> None:
    assert parse_expiry(" 3s ", now=10.0) == 13.0
    assert parse_expiry("30d", now=0.0) == 30 * 86400


@pytest.mark.parametrize("name", ["", "a\nb", "a\x00", "x" * 257, "a\u2028b"])
def test_config_key_models_are_checked_like_the_admin_apis(name: str) -> None:
    from pydantic import ValidationError

    from gateway.config.sections import StaticKey

    with pytest.raises(ValidationError, match="invalid model name"):
        StaticKey(name="k", key="sk-0123456789", models=(name,))
    assert StaticKey(name="k", key="sk-0123456789", models=("stub-model",)).models == (
        "stub-model",
    )


ROLLOUT = {
    "model": "split",
    "variants": [{"model": "m", "weight": 1}, {"model": "m2", "weight": 0}],
}
PINS_REFUSED = [{"nope": "m"}, {"split": "m3"}, {"split": "split"}]


@pytest.mark.parametrize("pins", PINS_REFUSED)
async def test_a_pin_to_no_rollout_or_no_variant_of_it_is_refused(pins: dict[str, str]) -> None:
    """Before, such a pin was stored and then ignored at every request, silently."""
    models = [{"name": name, "endpoints": ["http://127.0.0.1:9"]} for name in ("m", "m2")]
    with pytest.raises(ValueError, match="variants"):
        Settings(
            models=models,
            rollouts=[ROLLOUT],
            auth={
                "enabled": True,
                "keys": [{"name": "k", "key": "sk-k-01234567", "variants": pins}],
            },
        )
    settings = Settings(
        models=models, rollouts=[ROLLOUT], auth={"enabled": True, "admin_key": ADMIN_KEY}
    )
    app = create_app(settings)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            made = await client.post(
                "/admin/keys", json={"name": "k", "variants": pins}, headers=headers
            )
            assert made.status_code == 400 and "variants" in made.json()["error"]["message"]
            good = {"name": "ok", "variants": {"split": "m2"}}
            assert (await client.post("/admin/keys", json=good, headers=headers)).status_code == 201


def test_cli_a_pin_to_no_variant_is_refused(
    store: MemoryKeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    (Path("vgate.yaml")).write_text(
        "redis: {url: 'redis://127.0.0.1:1/0'}\n"
        "models: [{name: m, endpoints: ['http://127.0.0.1:9']}, "
        "{name: m2, endpoints: ['http://127.0.0.1:9']}]\n"
        "rollouts: [{model: split, variants: [{model: m, weight: 1}, {model: m2, weight: 1}]}]\n"
    )
    assert vgate_keys_create("--name", "pin", "--variant", "split=m3") == 2
    assert "variants" in capsys.readouterr().err
    assert asyncio.run(store.load_all()) == []
    assert vgate_keys_create("--name", "pin", "--variant", "split=m2") == 0
