"""The server section's operator settings: defaults and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.sections import ServerSettings


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
