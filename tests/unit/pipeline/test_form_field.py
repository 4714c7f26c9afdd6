"""find_field: one form field of a multipart body, found by boundary, hostile input refused."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.form_field import (
    MAX_PARTS,
    boundary_of,
    find_field,
    replace_field,
)

B = b"xyzBOUNDARY"


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--" + B + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + B + b"--\r\n"


def test_the_field_is_found_among_files_and_fields() -> None:
    audio = b"RIFF\r\n--not-the-boundary\r\n" + bytes(range(256))
    body = form(part("file", audio, "a.wav"), part("model", b"whisper"), part("language", b"en"))
    span = find_field(body, B, b"model")
    assert span is not None and span.value == b"whisper"
    assert body[span.start : span.end] == b"whisper"
    renamed = replace_field(body, span, b"served-name")
    assert find_field(renamed, B, b"model").value == b"served-name"  # type: ignore[union-attr]
    assert find_field(renamed, B, b"file").value == audio  # type: ignore[union-attr]


def test_absent_field_and_preamble() -> None:
    body = b"a preamble\r\n" + form(part("file", b"x"))
    assert find_field(body, B, b"model") is None


def test_unquoted_names_and_header_case() -> None:
    body = b"--" + B + b"\r\ncontent-DISPOSITION: form-data; NAME=model\r\n\r\nm1\r\n--" + B + b"--"
    assert find_field(body, B, b"model").value == b"m1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        form(part("model", b"a"), part("model", b"b")),  # the engine might read the other one
        b"--" + B + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nno end',
        b"--" + B + b'\r\nContent-Disposition: form-data; name="model"',  # headers never end
        b"no boundary at all",
        b"--" + B,  # the delimiter line never ends
        b"".join(part("f", b"") for _ in range(MAX_PARTS + 1)) + b"--" + B + b"--",
        # RFC 2231 names: python-multipart up to 0.0.29 reads each as a second `model`,
        # which a key allowed only the first could use (bug hunt).
        form(part("model", b"a"), part("x", b"b").replace(b'name="x"', b"name*=utf-8''model")),
        form(part("model", b"a"), part("x", b"b").replace(b'name="x"', b"name*0=model")),
        form(part("model", b"a"), part("x", b"b").replace(b'name="x"', b"name*0=mo; name*1=del")),
    ],
)
def test_malformed_or_ambiguous_bodies_are_400(body: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        find_field(body, B, b"model")


def test_boundary_of() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of('Multipart/Form-Data; charset=utf-8; boundary="a b"') == b"a b"
    for bad in (
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "x" * 71,
        "multipart/form-data; boundary=abc; boundary*=utf-8''def",
    ):
        with pytest.raises(InvalidRequestError):
            boundary_of(bad)
