"""``models[].endpoints`` with a query or a fragment (bug hunt): request paths are
appended to the URL, so ``http://h:8000/?x=1`` was asked ``/?x=1/v1/chat/completions``.
Refused when the config loads, without echoing credentials or the query; userinfo
(documented: sent as HTTP basic auth) and a path are still accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config.models import ModelSettings
from gateway.config.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    "url",
    [
        "http://h:8000/?x=1",
        "http://h:8000?x=1",
        "http://h:8000#f",
        "http://h:8000/#f",
        "http://h:8000/v1?",
        "https://h#",
        "http://user:secret@h:8000/?token=abc",
        "http://user:pw#0123456789@h:8000",  # an unescaped '#' in the password
    ],
)
def test_an_endpoint_with_a_query_or_fragment_is_refused_at_load(url: str, tmp_path: Path) -> None:
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "endpoints": [url]}]}))
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    message = str(refused.value)
    assert "models.0.endpoints" in message and "query" in message and "fragment" in message
    for secret in ("secret", "0123456789", "token", "abc", "x=1"):
        assert secret not in message


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("https://h/engines/a/", "https://h/engines/a"),
        ("http://user:p%3F0123456789@h:8000/", "http://user:p%3F0123456789@h:8000"),
    ],
)
def test_base_urls_with_userinfo_or_a_path_are_still_accepted(url: str, kept: str) -> None:
    assert ModelSettings(name="m", endpoints=(url,)).endpoints == (kept,)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://", "names no host"),
        ("http://:8000", "names no host"),
        ("http://h:99999", "invalid port"),
        ("http://h:abc", "invalid port"),
        ("http://h:0", "invalid port"),
        ("http://h :8000", "space or a control character"),
        ("http://h:8000\n", "space or a control character"),
        ("ftp://user:secret0123456789@h", "must start with"),  # the message hides userinfo
    ],
)
def test_an_endpoint_without_a_usable_host_and_port_is_refused(
    url: str, why: str, tmp_path: Path
) -> None:
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "endpoints": [url]}]}))
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    message = str(refused.value)
    assert why in message and "secret" not in message


def test_ipv6_hosts_are_accepted() -> None:
    assert ModelSettings(name="m", endpoints=("http://[::1]:8000",)).endpoints == (
        "http://[::1]:8000",
    )
