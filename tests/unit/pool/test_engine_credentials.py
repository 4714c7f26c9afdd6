"""Engine keys: where they come from (config, registry records), where they go (one map
in the pool), and where they never show (repr, records' repr, config errors)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engines.registry import EngineRecord, InProcessRegistry
from gateway.config.models import ModelSettings
from gateway.config.settings import Settings
from gateway.pool.credentials import EngineCredentials
from gateway.pool.engine_pool import EnginePool
from gateway.pool.sources import RegistryWatcher, engine_keys

SECRET = "fake-engine-key-0123456789"


def test_headers_add_the_engines_key_and_nothing_for_others() -> None:
    keys = EngineCredentials({"http://a": SECRET})
    base = {"X-Request-Id": "r1"}
    assert keys.headers("http://a", base) == {"X-Request-Id": "r1",
                                              "Authorization": f"Bearer {SECRET}"}  # fmt: skip
    assert keys.headers("http://b", base) is base
    assert keys.headers("http://b") == {}
    assert base == {"X-Request-Id": "r1"}  # never modified
    assert SECRET not in repr(keys)
    keys.replace({})
    assert "http://a" not in keys


def test_model_key_from_the_environment_or_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_KEY_VAR", SECRET)
    from_env = ModelSettings(name="m", api_key_env="ENGINE_KEY_VAR")
    assert from_env.engine_api_key == SECRET
    from_file = ModelSettings.model_validate({"name": "m", "api_key": SECRET})
    assert from_file.engine_api_key == SECRET
    assert SECRET not in repr(from_file) and SECRET not in str(from_file.model_dump())
    assert ModelSettings(name="m").engine_api_key is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_key_env": "NOT_SET_ANYWHERE_H1"}, "not set"),
        ({"api_key": SECRET, "api_key_env": "X"}, "not both"),
        ({"api_key": f"{SECRET} more"}, "spaces or control"),
        ({"api_key_env": "1BAD-NAME"}, "pattern"),
    ],
)
def test_bad_key_settings_fail_at_load_without_the_secret(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        ModelSettings.model_validate({"name": "m", **fields})
    errors = [error["msg"] for error in raised.value.errors()]
    assert all(SECRET not in error for error in errors)


def test_adapter_names_collide_with_no_model() -> None:
    engine = {"kind": "stub", "lora_modules": [{"name": "other", "path": "/a"}]}
    with pytest.raises(ValidationError, match="duplicate model names: other"):
        Settings.model_validate({"models": [{"name": "base", "engine": engine}, {"name": "other"}]})
    own = {"kind": "stub", "lora_modules": [{"name": "base", "path": "/a"}]}
    with pytest.raises(ValidationError, match="model's own name"):
        Settings.model_validate({"models": [{"name": "base", "engine": own}]})


async def test_watcher_keys_static_and_managed_engines_and_routes_adapters() -> None:
    settings = Settings.model_validate(
        {
            "models": [
                {"name": "static", "endpoints": ["http://s:1"], "api_key": SECRET},
                {"name": "managed", "api_key": "configured-key"},
            ]
        }
    )
    registry = InProcessRegistry()
    pool = EnginePool({"static": ["http://s:1"]})
    watcher = RegistryWatcher(registry, pool, {"static": ["http://s:1"]}, {}, engine_keys(settings))
    assert pool.credentials.headers("http://s:1") == {"Authorization": f"Bearer {SECRET}"}
    generated = EngineRecord("e1", "base", "http://g:1", "ready", 0.0, "sup",
                             adapters=("sql",), api_key="generated")  # fmt: skip
    configured = EngineRecord("e2", "managed", "http://c:1", "ready", 0.0, "sup")
    await registry.publish(generated)
    await registry.publish(configured)
    await watcher.refresh()
    assert pool.credentials.headers("http://g:1") == {"Authorization": "Bearer generated"}
    assert pool.credentials.headers("http://c:1") == {"Authorization": "Bearer configured-key"}
    assert pool.credentials.headers("http://s:1") == {"Authorization": f"Bearer {SECRET}"}
    assert [v.url for v in pool.snapshot("sql")] == ["http://g:1"]
    assert [v.url for v in pool.snapshot("base")] == ["http://g:1"]
    await registry.remove("e1")
    await watcher.refresh()
    assert not pool.has_model("sql") and "http://g:1" not in pool.credentials


def test_records_carry_adapters_and_a_key_never_shown() -> None:
    record = EngineRecord("e", "m", "http://u", "ready", 1.0, "s", adapters=("a", "b"),
                          api_key=SECRET)  # fmt: skip
    assert EngineRecord.decode(record.encode()) == record
    assert SECRET not in repr(record)
    assert record.models == ("m", "a", "b")
    with pytest.raises(ValueError, match="adapters"):
        EngineRecord.decode(record.encode().replace(b'["a","b"]', b'["a",3]'))
