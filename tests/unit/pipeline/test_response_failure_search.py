"""The Responses relay looks for failure events in every batch it relays: one byte
search per batch of deltas (it made three), the failure events still found."""

from __future__ import annotations

from gateway.pipeline.response_failures import has_failure


class CountedBytes(bytes):
    """Bytes that count the searches made in them."""

    searches = 0

    def __contains__(self, key: object) -> bool:
        type(self).searches += 1
        return super().__contains__(key)  # type: ignore[operator]


DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"say \\"error\\" or \\"response.failed\\"","sequence_number":4}\n\n'
)


def test_a_batch_of_deltas_costs_one_search() -> None:
    CountedBytes.searches = 0
    assert not has_failure(CountedBytes(DELTA * 3))
    assert CountedBytes.searches == 1  # unfixed: 3 (one a mark)


def test_failure_events_are_still_found() -> None:
    error = b'data: {"type":"error","code":"x","message":"boom"}\n\n'
    spaced = b'data: {"type": "error", "code": "x", "message": "boom"}\n\n'
    failed = (
        b'data: {"type":"response.failed","response":{"status":"failed",'
        b'"error":{"code":"server_error","message":"at /srv/x.py"}}}\n\n'
    )
    for event in (error, spaced, failed):
        assert has_failure(DELTA + event)
    created = b'data: {"type":"response.created","response":{"error":null}}\n\n'
    assert not has_failure(DELTA + created)
