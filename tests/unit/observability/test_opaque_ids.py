"""Generated request ids are unique and do not count the process's requests (a counter
let a tenant learn how many requests others made between two of its own)."""

from __future__ import annotations

import itertools
import pickle
import re

from gateway.observability.opaque_ids import OpaqueIds


def test_ids_are_unique_prefixed_and_of_one_length() -> None:
    ids = OpaqueIds("req_")
    drawn = [ids.next() for _ in range(20_000)]
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in drawn)


def test_consecutive_ids_do_not_count() -> None:
    """With a counter, consecutive ids differ by one (and ids sort in order)."""
    ids = OpaqueIds("")
    values = [int(ids.next(), 16) for _ in range(200)]
    steps = {b - a for a, b in itertools.pairwise(values)}
    assert len(steps) == len(values) - 1  # no two steps alike
    assert values != sorted(values)


def test_two_processes_draw_different_ids() -> None:
    first, second = OpaqueIds("x"), OpaqueIds("x")
    assert {first.next() for _ in range(50)}.isdisjoint({second.next() for _ in range(50)})


def test_a_copy_pickled_into_another_process_draws_its_own_ids() -> None:
    """uvicorn pickles its config (the connection limits' refusal ids in it) into every
    worker process: each copy carried the same secret and counter, so every worker gave
    its refused heads the same ids, in the same order (and a restarted one repeated them)."""
    ids = OpaqueIds("req_")
    first, second = pickle.loads(pickle.dumps(ids)), pickle.loads(pickle.dumps(ids))
    drawn = [{copy.next() for _ in range(50)} for copy in (ids, first, second)]
    assert drawn[0].isdisjoint(drawn[1]) and drawn[1].isdisjoint(drawn[2])
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in drawn[1])
