"""The server section's operator settings: defaults and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.sections import ServerSettings
from gateway.config.settings import ConfigError, Settings, load_settings


def test_operator_routes_are_closed_by_default() -> None:
    server = ServerSettings()
    assert server.admin_port is None and server.admin_host == "127.0.0.1"
    assert not server.public_metrics and not server.debug_headers


def test_the_operator_port_must_differ_from_the_public_one() -> None:
    with pytest.raises(ValidationError, match="admin_port must differ"):
        ServerSettings(port=8000, admin_port=8000)
    assert ServerSettings(port=8000, admin_port=9100).admin_port == 9100


@pytest.mark.parametrize("port", [0, 65536])
def test_the_operator_port_is_a_real_port(port: int) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(admin_port=port)


def test_the_operator_token_is_a_secret_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "operator-token-0123456789-from-env"
    monkeypatch.setenv("VGATE_SERVER__OPERATOR_TOKEN", token)
    settings = Settings(models=[{"name": "m", "endpoints": ["http://127.0.0.1:9"]}])
    server = settings.server
    assert server.operator_token is not None
    assert server.operator_token.get_secret_value() == token
    assert token not in repr(settings) and token not in str(settings.model_dump())
    assert ServerSettings().operator_token is None  # unset by default


@pytest.mark.parametrize(
    "token", ["too-short", "operator-token-0123456789\n", "with space 0123456789"]
)
def test_an_operator_token_no_client_could_send_is_refused(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="operator_token"):
        ServerSettings(operator_token=token)
    monkeypatch.delenv("VGATE_CONFIG", raising=False)
    monkeypatch.setenv("VGATE_SERVER__OPERATOR_TOKEN", token)
    with pytest.raises(ConfigError, match="operator_token") as refused:
        load_settings(None)
    assert token.strip() not in str(refused.value)  # what is printed never shows the secret


def test_an_operator_token_that_is_also_a_client_key_is_refused() -> None:
    """The token reads every key's consumption: a tenant holding it as its key would too."""
    token = "operator-token-0123456789-shared"
    models = [{"name": "m", "endpoints": ["http://127.0.0.1:9"]}]
    keys = [{"name": "tenant", "key": token}]
    with pytest.raises(ValidationError, match="operator_token must differ") as refused:
        Settings(models=models, server={"operator_token": token}, auth={"keys": keys})
    assert token not in str(refused.value)
    other = {"operator_token": "operator-token-0123456789-apart"}
    assert Settings(models=models, server=other, auth={"keys": keys}).server.operator_token


def test_an_operator_token_that_is_also_the_admin_key_is_refused() -> None:
    """The token reads, never changes: as the admin key, whoever holds it (Prometheus's
    credentials file) could make and revoke keys."""
    token = "operator-token-0123456789-shared"
    models = [{"name": "m", "endpoints": ["http://127.0.0.1:9"]}]
    with pytest.raises(ValidationError, match=r"must differ from auth\.admin_key") as refused:
        Settings(models=models, server={"operator_token": token}, auth={"admin_key": token})
    assert token not in str(refused.value)
    apart = {"admin_key": "admin-key-0123456789-apart-from-it"}
    assert Settings(models=models, server={"operator_token": token}, auth=apart).auth.admin_key
