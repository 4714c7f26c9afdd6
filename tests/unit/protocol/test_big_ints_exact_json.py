""":func:`encoded_exactly`: a body the gateway changed, written with the client's
integers beyond 64 bits as their digits (orjson read them as floats), and every change
of the gateway's as the gateway made it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocol.exact_json import encoded_exactly, with_exact_integers

SOURCE = (
    b'{"model": "alias", "max_tokens": 9000, "stream_options": {"include_usage": false, '
    b'"x_id": 18446744073709551616}, "tools": [{"parameters": {"maximum": '
    b"123456789012345678901234, "
    b'"minimum": -9223372036854775809, "small": 7, "float": 1.8446744073709552e19}}]}'
)


def test_unchanged_big_integers_are_written_as_the_client_wrote_them() -> None:
    body = orjson.loads(SOURCE)
    changed = body | {"model": "served", "max_tokens": 512}
    encoded = encoded_exactly(changed, SOURCE)
    assert b'"maximum":123456789012345678901234' in encoded
    assert b'"minimum":-9223372036854775809' in encoded
    assert b'"x_id":18446744073709551616' in encoded
    assert b'"small":7' in encoded
    # A float the client wrote as a float stays one; the gateway's changes stay its own.
    assert b'"float":1.8446744073709552e+19' in encoded
    assert orjson.loads(encoded)["model"] == "served"
    assert orjson.loads(encoded)["max_tokens"] == 512


def test_a_value_the_gateway_changed_keeps_the_gateways_value() -> None:
    body: dict[str, Any] = orjson.loads(SOURCE)
    merged = body["stream_options"] | {"include_usage": True}
    changed = body | {"stream_options": merged, "tools": [{"parameters": {"maximum": 5.0e20}}]}
    encoded = encoded_exactly(changed, SOURCE)
    written = orjson.loads(encoded)
    assert written["stream_options"]["include_usage"] is True
    assert b'"x_id":18446744073709551616' in encoded  # untouched inside the changed object
    assert written["tools"] == [{"parameters": {"maximum": 5.0e20}}]


def test_a_body_without_big_numbers_is_orjsons_encoding() -> None:
    source = b'{"model": "m", "tools": [{"maximum": 9223372036854775807}], "n": 1.5}'
    body = orjson.loads(source) | {"model": "served"}
    assert encoded_exactly(body, source) == orjson.dumps(body)


@pytest.mark.parametrize(
    "digits", [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 308]
)
def test_every_integer_read_as_a_float_is_written_with_an_exponent(digits: bytes) -> None:
    """What makes the cheap check sound: orjson writes each float it reads for an
    integer beyond 64 bits with ``e+``, so a body whose encoding has none holds none."""
    assert b"e+" in orjson.dumps(orjson.loads(digits))
    assert orjson.dumps(with_exact_integers(b'{"a": %s}' % digits, {})) == b'{"a":%s}' % digits
