"""`python -m builtin_encoder ...`: the built-in encoder program (see cli.py for the flags)."""

import os
import sys

# numpy's OpenBLAS on one thread, set before numpy is imported: SSIM's small matrix products
# (metrics.ssim) run 2-3x slower with OpenBLAS's worker threads, which spin on the cores the
# codec's own threads need. An explicit OPENBLAS_NUM_THREADS in the environment still wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from builtin_encoder.cli import main  # noqa: E402 -- after the environment is set

if __name__ == "__main__":
    sys.exit(main())
