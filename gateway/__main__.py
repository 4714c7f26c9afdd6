"""``python -m gateway`` is the ``vgate`` command."""

from gateway.cli import main

raise SystemExit(main())
