"""Watching a blocking library call from another thread: a stall told from a slow call, and the scheduler.

SVT-AV1 4.1 sometimes deadlocks inside a call that blocks by design (codec_svtav1.py), and as root it
makes its threads real-time. These helpers know nothing of any codec: they read /proc/self (Linux) and
the process's CPU time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

IDLE_CPU_S = 0.005  # CPU seconds per poll below which the process counts as idle (the poll itself uses ~1 ms)


def threads_to_normal_priority() -> int:
    """Moves this process's real-time threads back to the normal scheduler; returns how many it moved.

    SVT-AV1 4.1, wherever it may (as root, or with CAP_SYS_NICE), gives the thread that calls
    svt_av1_enc_init and the threads that init creates SCHED_FIFO at priority 99, and the calling
    thread keeps it after deinit. Such an encode runs ahead of everything on the machine: the agent
    that answers its requests, a second worker's encode, the shell; `nice` has no hold on it. The
    built-in encoder runs as an ordinary program instead (SCHED_OTHER, priority 0), as x264 and VP9
    do. Linux only (it walks /proc/self/task); elsewhere there is nothing to move.
    """
    tasks = Path("/proc/self/task")
    if not hasattr(os, "sched_setscheduler") or not tasks.is_dir():
        return 0
    moved = 0
    for task in tasks.iterdir():
        tid = int(task.name)
        try:
            if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                moved += 1
        except OSError:  # the thread ended meanwhile
            continue
    return moved


def other_thread_runnable() -> bool:
    """True if a thread of this process other than the caller is running or waiting for a CPU (state R).

    A starved encode (another process's real-time threads hold the cores) has runnable threads; a
    deadlocked one has none. Linux only: elsewhere False, and the CPU time alone decides.
    """
    me = str(threading.get_native_id())
    try:
        tasks = [t for t in os.listdir("/proc/self/task") if t != me]
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"R":  # "pid (comm) S ...": comm may hold spaces
            return True
    return False


def wait_unless_stalled(done: threading.Event, stall_s: float, poll_s: float = 0.25) -> bool:
    """Waits for `done`; returns False instead once the process has been idle for `stall_s` seconds.

    Idle: between two polls the process used under IDLE_CPU_S of CPU time (all its threads) and no
    other thread of it was runnable. A slow or starved encode is never idle, so only a deadlock ends
    the wait early, however loaded the machine.
    """
    idle_since: float | None = None
    cpu = time.process_time()
    while not done.wait(poll_s):
        now_cpu = time.process_time()
        busy = now_cpu - cpu > IDLE_CPU_S or other_thread_runnable()
        cpu = now_cpu
        now = time.monotonic()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= stall_s:
            return False
    return True


class CallerThread:
    """A daemon thread, named `name`, that runs blocking library calls, one at a time, while the thread that
    submits them watches (wait_unless_stalled). A thread per call cost 0.7-2.4 ms each on the loaded 2-core VM,
    this one 0.06-0.54 ms (BENCHMARKS.md §3.9)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """Ends the thread after the job it runs, if any."""
        self._jobs.put(None)
