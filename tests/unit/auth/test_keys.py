"""Key records decode tolerantly: fields a newer vgate adds are ignored, everything else
that is wrong raises ValueError (which stores turn into a skipped record)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
import pytest

from gateway.auth.keys import KeyRecord, new_key
from gateway.ratelimit.limits import Limits


def record_json(**changes: Any) -> bytes:
    _, record = new_key("team-a", ("m",), Limits(rpm=10, tpm=1000), expires_at=None)
    data = asdict(record)
    data["model_limits"] = {"m": {"rpm": 5, "tpm": None, "max_concurrent": 2}}
    data.update(changes)
    return orjson.dumps(data)


def test_a_record_round_trips() -> None:
    _, record = new_key("team-a", ("m", "n"), Limits(1, 2, 3), expires_at=None)
    assert KeyRecord.decode(record.encode()) == record


def test_unknown_fields_are_ignored_at_the_top_and_inside_limits() -> None:
    raw = orjson.loads(record_json(future_field={"x": 1}, owner="billing"))
    raw["limits"]["rpd"] = 100_000  # a kind of limit this version does not know
    raw["model_limits"]["m"]["burst"] = 4
    record = KeyRecord.decode(orjson.dumps(raw))
    assert record.name == "team-a" and record.models == ("m",)
    assert record.limits == Limits(rpm=10, tpm=1000)
    assert record.model_limits == {"m": Limits(rpm=5, max_concurrent=2)}


def test_optional_fields_may_be_absent_or_null() -> None:
    record = KeyRecord.decode(b'{"name": "n", "digest": "d", "limits": null, "models": null}')
    assert record == KeyRecord("n", "d")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"digest": "d"}',
        b'{"name": "", "digest": "d"}',
        b'{"name": "n", "digest": 7}',
        b'{"name": "n", "digest": "d", "models": "m"}',
        b'{"name": "n", "digest": "d", "models": [1]}',
        b'{"name": "n", "digest": "d", "limits": {"rpm": "10"}}',
        b'{"name": "n", "digest": "d", "limits": {"rpm": true}}',
        b'{"name": "n", "digest": "d", "limits": {"rpm": 1.5}}',
        b'{"name": "n", "digest": "d", "limits": [1]}',
        b'{"name": "n", "digest": "d", "model_limits": {"m": 3}}',
        b'{"name": "n", "digest": "d", "model_limits": [1]}',
        b'{"name": "n", "digest": "d", "created_at": "yesterday"}',
        b'{"name": "n", "digest": "d", "expires_at": false}',
    ],
)
def test_anything_else_that_is_wrong_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every reason is a ValueError
        KeyRecord.decode(raw)


@pytest.mark.parametrize("name", ["team-a\n", "team\na", "\nteam", ""])
def test_a_key_name_with_a_newline_is_refused(name: str) -> None:
    """``$`` matched before a trailing newline: ``team-a\\n`` was accepted and printed
    like ``team-a`` in errors, metric labels and listings."""
    with pytest.raises(ValueError, match="invalid key name"):
        new_key(name)
