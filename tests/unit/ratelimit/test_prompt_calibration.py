"""The per-key calibration of the prompt estimate (``gateway/ratelimit/calibration.py``)
and how admission applies and teaches it: raised at once to what a settlement shows
(clamped), lowered a step per window of ordinary text only, never by alternating
benign and crafted requests; tiny prompts and unbelievable usage teach nothing; at
most ``max_keys`` keys remembered. Admission reserves the calibrated prompt for the
next request of the key, and only for that key."""

from __future__ import annotations

import pytest

from gateway.auth.authenticator import KeyDirectory
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.sections import RateLimitSettings, StaticKey
from gateway.errors import RateLimitError
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.calibration import (
    DECAY_AFTER,
    DECAY_INTERVAL_S,
    MAX_FACTOR,
    MIN_ESTIMATE,
    SMALL_ALLOWANCE,
    PromptCalibration,
    calibrated,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh() -> tuple[PromptCalibration, Clock]:
    clock = Clock()
    return PromptCalibration(clock=clock), clock


def test_a_crafted_prompt_raises_the_factor_at_once_to_what_it_showed() -> None:
    calibration, _ = fresh()
    assert calibration.factor("k") == 1.0
    calibration.observe("k", 100, 400)  # 1 character a token
    assert calibration.factor("k") == 4.0
    assert calibration.factor("other") == 1.0
    assert calibrated(100, 4.0) == 400
    assert calibrated(101, 1.5) == 152  # rounded up
    assert calibrated(101, 1.0) == 101


def test_the_factor_is_clamped() -> None:
    calibration, _ = fresh()
    calibration.observe("k", 100, 100 * 1000)  # usage no text could need
    assert calibration.factor("k") == MAX_FACTOR


def test_ordinary_text_and_tiny_prompts_teach_nothing() -> None:
    calibration, _ = fresh()
    calibration.observe("k", 1000, 800)  # English: fewer tokens than estimated
    calibration.observe("k", MIN_ESTIMATE - 1, 60 * MIN_ESTIMATE)  # the template's overhead
    calibration.observe("k", 1000, -5)
    assert calibration.factor("k") == 1.0
    assert len(calibration) == 0  # keys at 1 hold no entry


def test_small_crafted_prompts_teach_pooled() -> None:
    """236 CJK characters: estimated at 63 tokens, counted 708 by byte-level BPE. Each
    was charged ~11 times less than it used, and none taught anything."""
    calibration, _ = fresh()
    calibration.observe("k", 63, 708)
    assert calibration.factor("k") == 1.0  # pooled: 63 estimated tokens are not enough
    calibration.observe("k", 63, 708)
    assert calibration.factor("k") == (2 * 708 - 2 * SMALL_ALLOWANCE) / (2 * 63)  # 10.7
    assert calibrated(63, calibration.factor("k")) >= 708 - SMALL_ALLOWANCE


def test_honest_short_prompts_never_raise_the_factor() -> None:
    """A chat template's own tokens (a default system prompt, role markers) dominate
    short prompts: however many there are, they teach nothing."""
    calibration, _ = fresh()
    for estimate in (1, 5, 20, 40, MIN_ESTIMATE - 1):
        for _ in range(500):
            calibration.observe("k", estimate, estimate + 30)
    assert calibration.factor("k") == 1.0
    assert len(calibration) == 0


def test_small_settlements_let_a_factor_come_down() -> None:
    calibration, clock = fresh()
    calibration.observe("k", 100, 400)
    clock.now += DECAY_INTERVAL_S
    for _ in range(DECAY_AFTER * 4):  # each pair of these is one settlement under it
        calibration.observe("k", 32, 40)
    assert calibration.factor("k") == 2.5


def test_at_most_max_keys_pools_are_held() -> None:
    calibration = PromptCalibration(max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        calibration.observe(key, 40, 400)
    for key in ("c", "b", "a"):  # "a"'s pool, the least recent, was dropped
        calibration.observe(key, 40, 400)
    assert [calibration.factor(k) for k in ("a", "b", "c")] == [1.0, 9.2, 9.2]


def test_the_factor_comes_down_a_step_per_window_of_ordinary_text_only() -> None:
    calibration, clock = fresh()
    calibration.observe("k", 100, 500)
    for _ in range(DECAY_AFTER * 3):  # many settlements, but within one window
        calibration.observe("k", 100, 90)
    assert calibration.factor("k") == 5.0
    clock.now += DECAY_INTERVAL_S
    calibration.observe("k", 100, 90)
    assert calibration.factor("k") == 3.0  # half the way back to 1
    clock.now += DECAY_INTERVAL_S
    calibration.observe("k", 100, 90)  # a window, but only one settlement in it
    assert calibration.factor("k") == 3.0
    for _ in range(DECAY_AFTER):
        calibration.observe("k", 100, 90)
    assert calibration.factor("k") == 2.0
    for _ in range(5):  # 2 -> 1.5 -> 1.25 -> 1.125 -> 1.0625 -> forgotten
        clock.now += DECAY_INTERVAL_S
        for _ in range(DECAY_AFTER):
            calibration.observe("k", 100, 90)
    assert calibration.factor("k") == 1.0
    assert len(calibration) == 0


def test_alternating_benign_and_crafted_never_lowers_it() -> None:
    calibration, clock = fresh()
    calibration.observe("k", 100, 400)
    for _ in range(50):  # 50 windows, each with a crafted request among ordinary ones
        clock.now += DECAY_INTERVAL_S
        for _ in range(DECAY_AFTER):
            calibration.observe("k", 100, 90)
        calibration.observe("k", 100, 400)
    assert calibration.factor("k") == 4.0


def test_a_step_down_stops_at_the_highest_ratio_its_window_showed() -> None:
    calibration, clock = fresh()
    calibration.observe("k", 100, 800)
    clock.now += DECAY_INTERVAL_S
    for _ in range(DECAY_AFTER):
        calibration.observe("k", 100, 700)  # a little less crafted
    assert calibration.factor("k") == 7.0


def test_at_most_max_keys_are_remembered_the_least_recently_settled_forgotten() -> None:
    clock = Clock()
    calibration = PromptCalibration(max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        calibration.observe(key, 100, 300)
    calibration.observe("a", 100, 100)  # settled again: the most recent
    calibration.observe("d", 100, 300)
    assert len(calibration) == 3
    assert calibration.factor("b") == 1.0
    assert [calibration.factor(k) for k in ("a", "c", "d")] == [3.0, 3.0, 3.0]


TPM = 10_000
SECRET = "Bearer sk-crafty-0123456789"


def crafted(chars: int) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "a" * chars}], "max_tokens": 1}


@pytest.fixture
def keyed() -> tuple[Admission, KeyDirectory]:
    admission = Admission(MemoryLimiter(), RateLimitSettings(), GatewayMetrics())
    keys = KeyDirectory(
        [
            StaticKey(name="crafty", key="sk-crafty-0123456789", tpm=TPM),
            StaticKey(name="honest", key="sk-honest-0123456789", tpm=TPM),
        ],
        None,
    )
    return admission, keys


async def test_admission_reserves_the_calibrated_prompt_for_that_key_only(
    keyed: tuple[Admission, KeyDirectory],
) -> None:
    admission, keys = keyed
    crafty = keys.known(SECRET)
    honest = keys.known("Bearer sk-honest-0123456789")
    assert crafty is not None and honest is not None
    first = await admission.admit(crafty.scopes("m"), crafted(4000))
    assert first.prompt == first.estimate == 1004  # (4000 + 16) / 4
    first.settle(4001, prompt_used=4000)  # the engine counted a token a character
    second = await admission.admit(crafty.scopes("m"), crafted(4000))
    assert second.estimate == 1004
    assert second.prompt >= 3990  # what the engine will count, about
    assert second.reserved == second.prompt + 1
    other = await admission.admit(honest.scopes("m"), crafted(4000))
    assert other.prompt == 1004
    with pytest.raises(RateLimitError) as refused:  # 4001 settled + 4001 + 4001 > 10,000
        await admission.admit(crafty.scopes("m"), crafted(4000))
    assert "tokens per min" in refused.value.message


async def test_admission_learns_from_small_prompts(
    keyed: tuple[Admission, KeyDirectory],
) -> None:
    admission, keys = keyed
    crafty = keys.known(SECRET)
    assert crafty is not None
    for _ in range(2):
        ticket = await admission.admit(crafty.scopes("m"), crafted(236))
        assert (ticket.estimate, ticket.learns) == (63, True)  # (236 + 16) / 4
        ticket.settle(709, prompt_used=708)  # three tokens a character
    following = await admission.admit(crafty.scopes("m"), crafted(236))
    assert following.estimate == 63
    assert following.prompt >= 708 - SMALL_ALLOWANCE


async def test_usage_not_to_believe_teaches_nothing(
    keyed: tuple[Admission, KeyDirectory],
) -> None:
    admission, keys = keyed
    crafty = keys.known(SECRET)
    assert crafty is not None
    (await admission.admit(crafty.scopes("m"), crafted(4000))).settle(10, prompt_used=-1)
    (await admission.admit(crafty.scopes("m"), crafted(4000))).settle(10, prompt_used="9000")
    (await admission.admit(crafty.scopes("m"), crafted(4000))).settle(None, prompt_used=9000)
    ticket = await admission.admit(crafty.scopes("m"), crafted(4000))
    assert ticket.prompt == 1004
