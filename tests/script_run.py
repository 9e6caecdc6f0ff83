"""Runs a command-line script in the test process, as `python SCRIPT ARGS` would, without a new interpreter.

For checks that end before any work (--help, refused flags): a subprocess spends ~2.5 s importing torch
for them, which the test process has already done. What the script prints and its exit status are
returned as a subprocess's would be: sys.exit(n) gives n, sys.exit("text") prints text and gives 1,
and an exception that escapes is printed with its traceback, status 1. Loggers the script sets up
(handlers on the captured stderr, propagation, levels, filters) are put back as they were. Scripts that
encode, sleep or install signal handlers are run as real subprocesses instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str


def _loggers() -> list[logging.Logger]:
    named = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger(), *(g for g in named if isinstance(g, logging.Logger))]


def run_script(script: Path, *args: str, cwd: Path | None = None) -> ScriptResult:
    """`python script *args` (run as __main__, in `cwd` if given), in this process."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
    saved_logs = {g: (list(g.handlers), list(g.filters), g.propagate, g.level, g.disabled) for g in _loggers()}
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as the interpreter puts the script's folder first
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    code = 1
                else:
                    code = e.code or 0
            except Exception:  # what the interpreter would print for an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        for g in _loggers():
            g.handlers[:], g.filters[:], g.propagate, g.level, g.disabled = saved_logs.get(g, ([], [], True, 0, False))
    return ScriptResult(code, out.getvalue(), err.getvalue())
