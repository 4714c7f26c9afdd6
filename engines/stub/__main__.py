"""``python -m engines.stub``: the deterministic fake engine."""

from engines.stub.server import stub_main

if __name__ == "__main__":
    raise SystemExit(stub_main())
