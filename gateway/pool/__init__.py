"""The engines this gateway knows: health, load scraping, circuit breakers, load
shedding, and where engines come from (static URLs, a supervisor, the registry).

May import ``routing`` (snapshot types), ``engines``, ``config``, ``observability``,
``background``; never ``pipeline`` or ``http``.
"""
