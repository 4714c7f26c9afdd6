"""Review: the gateway reads a multipart form exactly as the engine will, or refuses it.

The audio routes route (and check the key's model allowlist) by the ``model`` form
field the gateway finds; the engine (vLLM: starlette over python-multipart) then
reads the body itself. Wherever the two parsers could disagree, a client could be
routed and authorised for one model while the engine serves another (an engine
serving a base model and LoRA adapters serves several). These bodies and headers
were each read one way by the gateway and another way by python-multipart 0.0.34:
the gateway must now refuse them (400) or read them as the engine does.
"""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.form_field import boundary_of, find_field

B = b"xyzBOUNDARY"


def _body(*parts: tuple[bytes, bytes]) -> bytes:
    """A form of (Content-Disposition value, content) parts."""
    out = b""
    for disposition, value in parts:
        out += (
            b"--" + B + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"
        )
    return out + b"--" + B + b"--\r\n"


def test_a_second_boundary_parameter_is_refused() -> None:
    # python-multipart keeps the last parameter of a name: the engine frames the body
    # by BBB while the gateway framed it by AAA.
    with pytest.raises(InvalidRequestError):
        boundary_of("multipart/form-data; boundary=AAA; boundary=BBB")


def test_a_semicolon_inside_a_quoted_parameter_does_not_split_it() -> None:
    # The engine reads x as '; boundary=AAA' and the boundary as BBB.
    assert boundary_of('multipart/form-data; x="; boundary=AAA"; boundary=BBB') == b"BBB"


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/form-data; boundary="a\\"b"',  # the engine unescapes it to a"b
        "multipart/form-data; boundary=AAA; junk",
        'multipart/form-data; boundary=AAA"',
    ],
)
def test_boundaries_the_engine_reads_otherwise_are_refused(content_type: str) -> None:
    with pytest.raises(InvalidRequestError):
        boundary_of(content_type)


def test_plain_and_quoted_boundaries_still_read() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of('multipart/form-data ; charset=utf-8 ;boundary="a b"') == b"a b"
    assert boundary_of("multipart/form-data; boundary=abc;") == b"abc"


@pytest.mark.parametrize(
    "disposition",
    [
        # The engine: name=model (x@ is one quoted parameter); the old walker: name=file.
        b'form-data; name=model; x@="; name=file; "',
        # The engine keeps the backslash (mo\del); the old walker read "model".
        b'form-data; name="mo\\del"',
        # A vertical tab is not the engine's whitespace: its key is "name\x0b".
        b"form-data; name\x0b=model",
        # The engine's disposition type runs to the quote's end: name=model is inside it.
        b'x"; name=model; "',
    ],
)
def test_dispositions_the_engine_reads_otherwise_are_refused(disposition: bytes) -> None:
    # Alone in the form: the old walker found a model field where the engine found
    # none, or none (or another name) where the engine found one.
    body = _body((disposition, b"other"))
    with pytest.raises(InvalidRequestError):
        find_field(body, B, b"model")


def test_a_boundary_followed_by_more_than_padding_is_refused() -> None:
    # python-multipart reads "\r\n--BOUNDARYxyz" as part data: the engine sees no second
    # part, so no model field (it serves its default model), where the gateway routed
    # and authorised by the one it found.
    body = (
        b"--" + B + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        b"RIFF\r\n--" + B + b'xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        b"allowed\r\n--" + B + b"--\r\n"
    )
    with pytest.raises(InvalidRequestError):
        find_field(body, B, b"model")


def test_space_padding_after_a_boundary_is_read_as_the_engine_reads_it() -> None:
    body = b"--" + B + b' \t\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--'
    body += B + b"--\r\n"
    span = find_field(body, B, b"model")
    assert span is not None and span.value == b"m"


def test_star_parameters_are_refused_since_engines_read_them_differently() -> None:
    """python-multipart up to 0.0.29 decodes ``name*=`` into the part's name, later
    versions ignore it (0.0.34 refuses the body): which one an engine runs is unknown."""
    body = _body(
        (b"form-data; name*=UTF-8''model; name=\"file\"", b"x"), (b"form-data; name=model", b"m")
    )
    with pytest.raises(InvalidRequestError):
        find_field(body, B, b"model")
