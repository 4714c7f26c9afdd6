"""Server-Timing from a request's marks: what it went through, in milliseconds."""

from __future__ import annotations

from gateway.observability.timeline import AttemptMark, Timeline


def parsed(value: bytes) -> dict[str, float]:
    entries = [part.strip().split(";dur=") for part in value.decode().split(",")]
    return {name: float(duration) for name, duration in entries}


def test_an_answer_from_an_engine_names_every_stage() -> None:
    t = Timeline(10.0)
    t.authed, t.limiting, t.admitted, t.looked_up = 10.001, 10.002, 10.005, 10.006
    t.queued, t.queue_left = 10.006, 10.010
    t.upstream_started, t.upstream_first_byte = 10.010, 10.0224
    stages = parsed(t.server_timing())
    assert list(stages) == ["auth", "limit", "cache", "queue", "upstream"]
    assert stages == {"auth": 1.0, "limit": 3.0, "cache": 1.0, "queue": 4.0, "upstream": 12.4}
    assert t.durations_ms()["upstream"] == 12.4


def test_a_hit_and_a_refusal_say_only_what_applies() -> None:
    hit = Timeline(1.0)
    hit.authed, hit.limiting, hit.admitted, hit.looked_up = 1.0, 1.0, 1.002, 1.003
    assert list(parsed(hit.server_timing())) == ["auth", "limit", "cache"]
    refused = Timeline(1.0)
    refused.authed = 1.004
    assert parsed(refused.server_timing()) == {"auth": 4.0, "limit": 0.0}


def test_attempts_are_kept_only_when_someone_reads_them() -> None:
    assert Timeline(0.0).attempts is None and not Timeline(0.0).detailed
    followed = Timeline(0.0, detailed=True)
    assert followed.attempts == [] and followed.detailed
    mark = AttemptMark("http://u:p@10.0.0.1:8001", "e-1", 0.5)
    assert (mark.failure, mark.status, mark.first_byte) == (None, None, 0.0)
