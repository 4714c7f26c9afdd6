"""Every Responses and vLLM pass-through route is cut at the shutdown deadline as the
completion routes are (503 ``shutting_down`` JSON, not uvicorn's plain-text 500): each
is an :class:`Endpoint` or wrapped in :class:`CutAtDeadline` (hunt: a retrieve waiting
on a slow store at the deadline got the 500 and a traceback)."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from gateway.http import passthrough, responses
from gateway.http.hot_routes import Endpoint
from gateway.http.shutdown_cut import CutAtDeadline


@pytest.mark.parametrize("module", [responses, passthrough], ids=["responses", "passthrough"])
def test_every_route_is_cut_at_the_deadline(module: object) -> None:
    routes = [route for route in module.router.routes if isinstance(route, Route)]  # type: ignore[attr-defined]
    assert routes
    uncut = [
        (route.path, sorted(route.methods or ()))
        for route in routes
        if not isinstance(route.app, Endpoint | CutAtDeadline)
        and not isinstance(route.endpoint, Endpoint | CutAtDeadline)
    ]
    assert uncut == []
