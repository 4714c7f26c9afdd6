"""The stages of a completion request (auth → parse → admission → cache → route →
forward/stream → settle) and the one object that owns a request's resources.

Returns domain results (an answer, an event stream, a replayed entry) and raises
:class:`gateway.errors.GatewayError`; knows nothing of HTTP frameworks. May import
the policies, ``upstream``, ``pool``, ``observability``, ``config``.
"""
