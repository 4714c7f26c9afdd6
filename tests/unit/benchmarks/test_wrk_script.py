"""The wrk driver's pure parts: the Lua script it writes, wrk's report read back, and
that report as the load generator's result (what the sweep tables are built from)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from benchmarks.clients import UNIQUE
from benchmarks.loadgen import LoadSpec
from benchmarks.stats import EMPTY
from benchmarks.wrk import (
    MARK,
    RUN_PREFIX_HEX,
    THREAD_DIGITS,
    WrkReport,
    lua_script,
    lua_string,
    parse_done,
    run_result,
    whole_seconds,
    wrk_argv,
)


def unescape(literal: str) -> bytes:
    """A Lua string literal as written by lua_string, read back."""
    assert literal[0] == literal[-1] == '"'
    inner = literal[1:-1]
    assert '"' not in re.sub(r"\\\d{3}", "", inner), "an unescaped quote would end the string"
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), inner).encode("latin-1")


@pytest.mark.parametrize(
    "data",
    [b"plain", b'{"a": "b"}', b"back\\slash", b"new\nline\r\t", "é ü 中".encode(), b"]]--[[", b""],
)
def test_lua_strings_hold_any_bytes(data: bytes) -> None:
    literal = lua_string(data)
    assert literal.isascii() and literal.isprintable()
    assert unescape(literal) == data


def test_a_body_without_the_marker_is_sent_as_is() -> None:
    script = lua_script(b'{"model": "m"}', {"Authorization": "Bearer sk-1"}, "abcd1234")
    assert 'wrk.method = "POST"' in script
    assert "wrk.body = " in script and "function request" not in script
    assert 'wrk.headers["Authorization"] = "Bearer sk-1"' in script
    assert "function done(summary, latency, requests)" in script


def test_a_marked_body_gets_a_value_exactly_as_wide_as_the_marker() -> None:
    body = b'{"prompt": "hi ' + UNIQUE + b'"}'
    script = lua_script(body, {}, "abcd1234")
    assert "wrk.body" not in script and "function request()" in script
    match = re.search(r'string\.format\("abcd1234%0(\d+)d%0(\d+)d"', script)
    assert match is not None
    assert (int(match.group(1)), RUN_PREFIX_HEX) == (THREAD_DIGITS, 8)
    assert RUN_PREFIX_HEX + THREAD_DIGITS + int(match.group(2)) == len(UNIQUE)
    parts = re.search(r"local parts = \{(.*)\}\n", script)
    assert parts is not None
    pieces = [unescape(p) for p in re.findall(r'"(?:[^"\\]|\\\d{3})*"', parts.group(1))]
    assert pieces == body.split(UNIQUE)
    assert "thread:set" in script  # each thread numbers its own requests


@pytest.mark.parametrize("prefix", ["abc", "abcd123456", 'abcd12"3', "abcd123é"])
def test_the_run_prefix_must_be_eight_plain_characters(prefix: str) -> None:
    with pytest.raises(ValueError, match="run prefix"):
        lua_script(UNIQUE, {}, prefix)


WRK_OUTPUT = f"""Running 2s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 64 connections
Requests/sec:  23322.21
{MARK}{{"duration_us":2000000,"requests":1000,"bytes":400000,"errors":{{"connect":0,"read":2,\
"write":0,"status":10,"timeout":1}},"latency_us":{{"mean":2780.5,"max":12810,"p50":900,\
"p95":9937,"p99":12948}}}}
"""


def test_the_done_line_is_read_from_wrk_output() -> None:
    report = parse_done(WRK_OUTPUT)
    assert report.duration_us == 2_000_000 and report.requests == 1000
    assert report.errors == {"connect": 0, "read": 2, "write": 0, "status": 10, "timeout": 1}
    assert report.latency_us["p99"] == 12948.0


def test_output_without_a_done_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="VGATE-WRK"):
        parse_done("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_report_becomes_a_result_in_milliseconds_with_errors_by_kind() -> None:
    result = run_result(parse_done(WRK_OUTPUT), "gateway", {"k": 1}, warmup_requests=500)
    assert result.ok == 990  # wrk counts a 4xx/5xx answer as a request and as an error
    assert result.errors == {"http_4xx_5xx": 10, "socket_read": 2, "timeout": 1}
    assert result.error_count == 13
    assert result.rps == pytest.approx(495.0)
    assert (result.e2e.p50, result.e2e.p95, result.e2e.p99) == (0.9, 9.937, 12.948)
    assert result.e2e.mean == pytest.approx(2.7805) and result.e2e.max == 12.81
    assert result.warmup_or_late == 500  # so CPU per request divides by the warm-up's too
    assert math.isnan(result.tokens_per_s) and result.ttft == EMPTY and result.chunks == 0


def test_a_run_without_answers_has_no_latencies() -> None:
    report = WrkReport(1_000_000, 0, 0, {"connect": 64}, {"mean": 0, "max": 0, "p50": 0,
                                                          "p95": 0, "p99": 0})  # fmt: skip
    result = run_result(report, "x", {})
    assert result.ok == 0 and result.e2e == EMPTY and result.errors == {"connect_failed": 64}


def test_durations_are_whole_seconds_of_at_least_one() -> None:
    assert [whole_seconds(s) for s in (0.2, 1.4, 2.5, 3.6, 10.0)] == [1, 1, 2, 4, 10]


def test_wrk_is_pinned_with_taskset_when_a_cpu_is_given() -> None:
    spec = LoadSpec(url="http://127.0.0.1:1/x", body=b"{}", concurrency=64, grace_s=10.0)
    argv = wrk_argv("/usr/bin/wrk", spec, Path("/tmp/s.lua"), 4, 1)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[3:] == ["/usr/bin/wrk", "-t1", "-c64", "-d4s", "--timeout=10s", "-s",
                        "/tmp/s.lua", "http://127.0.0.1:1/x"]  # fmt: skip
    assert wrk_argv("wrk", spec, Path("/tmp/s.lua"), 4, None)[0] == "wrk"
