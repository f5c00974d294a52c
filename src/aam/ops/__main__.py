"""`python -m aam.ops`: the backend table and self-checks (same as `aam kernels`)."""

from aam.ops.diagnostics import main

if __name__ == "__main__":
    raise SystemExit(main())
