"""Shared test setup: the project root on sys.path, one torch thread per process, and --runslow for the long runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One torch (OpenMP) thread in every test process and in the programs the tests start (make_policy.py, bench
# scripts; main.py already defaults to --torch-threads 1): ./test.sh runs one pytest worker per core, and a second
# thread per worker only contends for the cores. With both cores busy, a 200-update SAC run of test_sac_agent
# took 54 s on two threads and 10 s on one (TESTING.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long run: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
