"""`python -m builtin_encoder ...`: the built-in encoder program (see cli.py for the flags)."""

import sys

from builtin_encoder.cli import main

if __name__ == "__main__":
    sys.exit(main())
