"""The HTTP edge: the ASGI entry, routes (thin), request ids, rendering of the
pipeline's results and errors as JSON responses and SSE, and the operator listener
(which operational route is served on which port, :mod:`gateway.http.operator`).

Owns everything Starlette/FastAPI. May import the pipeline, the policies' types,
config, observability; never Redis, aiohttp or the upstream client.
"""
