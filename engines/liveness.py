"""Whether a running engine works: its /metrics read, and the stuck check.

The stuck check sends the probe of :meth:`EngineProcess.probe_work` (a tiny piece of
the engine's work). That probe waits its turn behind the requests already running:
an engine saturated for longer than ``probe_timeout_s`` failed it and was restarted,
with every request it was serving, when it was busiest. So a failed probe counts as
stuck only when the engine generated no token meanwhile (vLLM's
``generation_tokens`` counter, read before and after): busy is not stuck. An engine
whose /metrics does not answer is judged by the probe alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.process import EngineProcess
from engines.stats import EngineStats

if TYPE_CHECKING:
    import aiohttp

_METRICS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class WorkCheck:
    """The stuck check's verdict."""

    works: bool
    busy_tokens: float = 0.0
    """Tokens generated while the probe failed (> 0: busy, not stuck)."""


async def read_stats(session: aiohttp.ClientSession, process: EngineProcess) -> EngineStats | None:
    """The engine's /metrics, read (None: no answer within 2 s)."""
    import aiohttp  # (the supervisor's session loaded it)

    try:
        async with session.get(
            f"{process.plan.url}/metrics",
            headers=process.plan.auth_headers(),
            timeout=aiohttp.ClientTimeout(total=_METRICS_TIMEOUT_S),
        ) as response:
            return EngineStats.from_text(await response.text())
    except (TimeoutError, aiohttp.ClientError):
        return None


async def check_work(
    session: aiohttp.ClientSession, process: EngineProcess, timeout_s: float
) -> WorkCheck:
    """The probe done within ``timeout_s``, or else tokens generated meanwhile."""
    before = await read_stats(session, process)
    if await process.probe_work(session, timeout_s):
        return WorkCheck(works=True)
    after = await read_stats(session, process)
    if before is None or after is None or after.generation_tokens <= before.generation_tokens:
        return WorkCheck(works=False)
    return WorkCheck(works=True, busy_tokens=after.generation_tokens - before.generation_tokens)
