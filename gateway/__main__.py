"""``python -m gateway`` is the ``vgate`` command."""

from gateway.cli.main import main

raise SystemExit(main())
