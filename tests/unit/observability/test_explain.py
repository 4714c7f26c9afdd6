"""The evidence is for the admin key only, ASCII and bounded."""

from __future__ import annotations

import json

from gateway.observability.explain import MAX_BYTES, Evidence, ExplainGate
from gateway.observability.timeline import AttemptMark, Timeline

ADMIN = "admin-key-0123456789"


def test_only_the_admin_key_opens_it() -> None:
    gate = ExplainGate(ADMIN)
    assert gate.admits(ADMIN)
    for value in (None, "", "1", ADMIN[:-1], ADMIN + " ", "\u0100" * 20):
        assert not gate.admits(value)
    assert not ExplainGate(None).admits(ADMIN)  # no admin key: never


def test_the_evidence_is_ascii_and_cut_to_fit() -> None:
    evidence = Evidence()
    evidence.policy = "least_outstanding"
    evidence.variant = "mod\u00e8le-b"
    evidence.candidates = [{"engine": f"e{i}" * 20, "load": i} for i in range(500)]
    timeline = Timeline(0.0, detailed=True)
    assert timeline.attempts is not None
    timeline.attempts.append(AttemptMark("http://h:1", "e1", 0.0))
    rendered = evidence.render(timeline)
    assert len(rendered) <= MAX_BYTES and rendered.isascii()
    body = json.loads(rendered)
    assert body["variant"] == "mod\u00e8le-b" and body["candidates_omitted"] > 0
    assert body["attempts"] == [{"engine": "e1", "status": None, "failure": None}]
    assert evidence.trailer(timeline).startswith(b": vgate-explain {")
