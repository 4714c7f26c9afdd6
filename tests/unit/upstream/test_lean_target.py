"""Engine URLs parsed once for the lean client, and the request bytes built from them."""

from __future__ import annotations

import base64

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from gateway.upstream.target import Target, request_bytes


def test_a_plain_url_keeps_its_path_query_and_port() -> None:
    target = Target.parse("http://engine:8000/v1/chat/completions?x=1")
    assert (target.origin, target.tls, target.basic_auth) == (("http", "engine", 8000), False, b"")
    assert target.post_head == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: engine:8000\r\n"
        b"Accept-Encoding: identity\r\n"  # answers as they are: never gzip to relay
    )


def test_https_defaults_to_443_and_ipv6_keeps_its_brackets_in_host() -> None:
    target = Target.parse("https://[::1]/v1/x")
    assert (target.host, target.port, target.tls) == ("::1", 443, True)
    assert b"Host: [::1]\r\n" in target.post_head


def test_userinfo_becomes_basic_auth_and_leaves_the_host_header() -> None:
    target = Target.parse("http://user:pa%40ss0123456789@engine:8000/v1/x")
    encoded = base64.b64encode(b"user:pa@ss0123456789")
    assert target.basic_auth == b"Authorization: Basic " + encoded + b"\r\n"
    assert b"user" not in target.post_head


@pytest.mark.parametrize("url", ["ftp://engine/x", "http:///x", "engine:8000"])
def test_what_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        Target.parse(url)


def test_the_request_is_one_bytes_object_with_its_length() -> None:
    target = Target.parse("http://user:pw0123456789@e:1/p")
    sent = request_bytes(target, {"Content-Type": "application/json"}, b"{}")
    assert sent == (
        b"POST /p HTTP/1.1\r\nHost: e:1\r\nAccept-Encoding: identity\r\nAuthorization: Basic "
        + base64.b64encode(b"user:pw0123456789")
        + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    keyed = request_bytes(target, {"Authorization": "Bearer k"}, b"")
    assert b"Basic" not in keyed and b"Authorization: Bearer k\r\n" in keyed


@pytest.mark.parametrize("value", ["a\r\nX: 1", "a\nX: 1", "a\rb"])
def test_a_line_break_in_a_header_is_refused(value: str) -> None:
    with pytest.raises(UpstreamError):
        request_bytes(Target.parse("http://e/p"), {"X-Request-Id": value}, b"")


LIMITS = Deadlines(connect_s=1.0, ttft_s=None, idle_s=1.0, total_s=None)


async def test_an_unusable_engine_url_is_told_without_the_parsers_words() -> None:
    """The parser's message (which names the URL's parts) goes to the log, not to the
    client's 502."""
    upstream = LeanUpstream(UpstreamSettings())
    try:
        with pytest.raises(UpstreamError) as failed:
            await upstream.post("ftp://secret-host.internal/v1/x", b"{}", {}, LIMITS)
    finally:
        await upstream.close()
    assert failed.value.message == "the engine's URL cannot be used"
