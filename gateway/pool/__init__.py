"""The engines this gateway knows: health, load scraping, circuit breakers, load
shedding, where engines come from (static URLs, a supervisor, the registry), and
whether the gateway is ready (``readiness``: about the gateway, not engine health).

May import ``routing`` (snapshot types), ``engines``, ``config``, ``observability``,
``background``; never ``pipeline`` or ``http``.
"""
