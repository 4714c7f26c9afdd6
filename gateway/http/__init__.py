"""The HTTP edge: the ASGI entry, routes (thin), request ids, and rendering of the
pipeline's results and errors as JSON responses and SSE.

Owns everything Starlette/FastAPI. May import the pipeline, the policies' types,
config, observability; never Redis, aiohttp or the upstream client.
"""
