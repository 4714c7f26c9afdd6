"""Reading one figure out of a Prometheus text exposition (what /metrics answers)."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"([a-z_:]+)\{(.*)\} (\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total
