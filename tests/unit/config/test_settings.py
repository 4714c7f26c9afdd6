"""Configuration: YAML, environment precedence, CLI overrides, unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.settings import ConfigError, load_settings, with_overrides


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vgate.yaml"
    path.write_text(text)
    return path


def test_defaults_without_any_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VGATE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == 20 * 1024 * 1024  # a 10 MiB image
    assert settings.server.max_body_bytes_in_flight == 256 * 1024 * 1024
    assert settings.models == ()
    assert settings.routing.policy == "least_outstanding"


def test_yaml_models_and_sections(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 9100}
models:
  - name: smollm2-135m
    endpoints: [http://127.0.0.1:8001/, http://127.0.0.1:8002]
redis: {url: redis://127.0.0.1:6379/0}
cache: {enabled: false, ttl_s: 60}
routing: {policy: round_robin}
""",
    )
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.models[0].endpoints == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert settings.models[0].served_name == "smollm2-135m"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.routing.policy == "round_robin"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "server: {port: 9100, host: 0.0.0.0}\n")
    monkeypatch.setenv("VGATE_SERVER__PORT", "9200")
    settings = load_settings(path)
    assert settings.server.port == 9200
    assert settings.server.host == "0.0.0.0"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_CONFIG", str(_write(tmp_path, "server: {port: 9300}\n")))
    assert load_settings().server.port == 9300


def test_command_line_overrides_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_SERVER__PORT", "9200")
    settings = with_overrides(load_settings(_write(tmp_path, "{}")), port=9400, host=None)
    assert settings.server.port == 9400
    assert settings.server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("servr: {}\n", "servr: unknown key"),
        ("server: {prot: 1}\n", "server.prot: unknown key"),
        ("models: [{name: a, endpoint: [http://x]}]\n", "models.0.endpoint: unknown key"),
        ("models: [{name: a, endpoints: [ftp://x]}]\n", "models.0.endpoints"),
        ("models: [{name: a}, {name: a}]\n", "duplicate model names: a"),
        ("server: {port: lots}\n", "server.port"),
        ("routing: {policy: random}\n", "routing.policy"),
        ('models: [{name: "a\\x85b"}]\n', "control character"),  # C1 (NEL)
        ('models: [{name: a, upstream_model: "a\\u200bb"}]\n', "an invisible one"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    assert named in str(caught.value)


def test_unknown_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_SEVRER__PORT", "1")
    with pytest.raises(ConfigError, match="VGATE_SEVRER__PORT"):
        load_settings(_write(tmp_path, "{}"))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(_write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("auth: {enabled: true}\n", "auth.enabled needs keys"),
        ("auth: {keys: [{name: 'a b', key: sk-12345678}]}\n", "auth.keys.0.name"),
        ("auth: {admin_key: short}\n", "auth.admin_key"),
        ("auth: {keys: [{name: a, key: short}]}\n", "auth.keys.0.key"),
        ('auth: {admin_key: "admin-0123456789abcdef\\n"}\n', "trailing newline"),
        ('auth: {keys: [{name: a, key: " sk-12345678"}]}\n', "visible ASCII"),
        ('auth: {keys: [{name: a, key: "sk-1234567\u00e9"}]}\n', "auth.keys.0.key"),
        (
            "auth: {keys: [{name: a, key: sk-12345678}, {name: a, key: sk-87654321}]}\n",
            "names must be unique",
        ),
        (
            "server: {workers: 2}\nauth: {keys: [{name: a, key: sk-12345678, rpm: 10}]}\n",
            "need redis.url",
        ),
        ("ratelimit: {on_redis_error: ignore}\n", "ratelimit.on_redis_error"),
        ("cache: {scope: everyone}\n", "cache.scope"),
    ],
)
def test_auth_and_cache_sections_are_checked(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    assert named in str(caught.value)


def test_a_static_key_with_an_empty_models_list_is_refused(tmp_path: Path) -> None:
    """``models: []`` reads as "no models" but meant every model; refused at load, as
    ``POST /admin/keys`` refuses it, naming the key and the way to mean every model."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            _write(tmp_path, "auth: {keys: [{name: team-a, key: sk-12345678, models: []}]}\n")
        )
    assert "'team-a'" in str(caught.value)
    assert "omit `models`" in str(caught.value)
    every = load_settings(_write(tmp_path, "auth: {keys: [{name: team-a, key: sk-12345678}]}\n"))
    assert every.auth.keys[0].models == ()
    some = "auth: {keys: [{name: team-a, key: sk-12345678, models: [m]}]}\n"
    assert load_settings(_write(tmp_path, some)).auth.keys[0].models == ("m",)


def test_an_empty_models_list_from_the_environment_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "VGATE_AUTH__KEYS", '[{"name": "env-key", "key": "sk-12345678", "models": []}]'
    )
    with pytest.raises(ConfigError, match="'env-key'"):
        load_settings(_write(tmp_path, "{}"))


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ("redis: {url: 'redis://:s3cret@127.0.0.1:99999/0'}", "redis.url"),
        ("cache: {redis_url: 'redis://:s3cret@[::1/0'}", "cache.redis_url"),
        ("redis: {url: 'http://:s3cret@127.0.0.1:6379'}", "redis.url"),
        ("redis: {url: 'redis://:s3cret@127.0.0.1:6379/abc'}", "redis.url"),  # read as DB 0
        ("redis: {url: 'redis://:s3cret@127.0.0.1:6379/\u00b2'}", "redis.url"),  # '²': DB 0
    ],
)
def test_a_redis_url_the_client_cannot_read_is_a_config_error(
    tmp_path: Path, section: str, url: str
) -> None:
    """A bad port (or scheme) was a traceback from inside the Redis client at start-up;
    now a config error naming the field, never repeating the URL (it holds a password)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, section + "\n"))
    assert url in str(caught.value) and "s3cret" not in str(caught.value)


def test_redis_urls_of_every_scheme_load(tmp_path: Path) -> None:
    text = "redis: {url: 'rediss://:pw@redis.internal:6380/1'}\n"
    text += "cache: {redis_url: 'unix:///run/redis/redis.sock'}\n"
    for plain in ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://h/15"):
        assert load_settings(_write(tmp_path, f"redis: {{url: '{plain}'}}\n")).redis.url == plain
    settings = load_settings(_write(tmp_path, text))
    assert settings.redis.url == "rediss://:pw@redis.internal:6380/1"
    assert settings.cache.redis_url == "unix:///run/redis/redis.sock"
