"""What a run prints: the log's format and levels, and each epoch's progress bar."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable

from tqdm import tqdm

import log_limit
from io_runner import DETAILED, Step

log = logging.getLogger("rlrc")


def signed(x: float, digits: int = 3, sign: str = "+") -> str:
    """A number for the log, 'n/a' when unknown (NaN)."""
    return "n/a" if math.isnan(x) else f"{x:{sign}.{digits}f}"


def setup_logging(level: int) -> None:
    logging.addLevelName(DETAILED, "DETAIL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.propagate = False
    log_limit.install(log)  # the same error is printed a few times, then counted
    log.setLevel({0: logging.ERROR, 1: logging.INFO, 2: DETAILED, 3: logging.DEBUG}[level])


class EpochProgress:
    """One epoch's progress in mini-GOPs (tqdm), with rate, ETA, λ and the video's bitrate error so far.

    On a terminal's stderr a live bar; otherwise one line when the epoch ends (logs stay clean).
    Nothing at log level 0.
    """

    def __init__(self, epoch: int, last: int, total_mini_gops: int, level: int, lam: Callable[[], float]) -> None:
        self.lam = lam
        self.enabled = level >= 1
        self.live = self.enabled and sys.stderr.isatty()
        self._sink = None if self.live else open(os.devnull, "w")  # noqa: SIM115 (closed in close())
        self.bar = tqdm(
            total=total_mini_gops,
            desc=f"epoch {epoch}/{last}",
            unit="mini-GOP",
            file=sys.stderr if self.live else self._sink,
            disable=not self.enabled,
            dynamic_ncols=True,
            smoothing=0.3 if self.live else 0.0,  # the one line off a terminal: the epoch's mean rate
        )
        self.videos: dict[str, tuple[int, int]] = {}  # video -> (bits, frames) coded so far this epoch
        self.lock = threading.Lock()  # workers report from their own threads

    def start_video(self, video: str = "") -> None:
        with self.lock:
            self.videos[video] = (0, 0)

    def step(self, step: Step, video: str = "") -> None:
        """One mini-GOP coded: advance, and show λ and the bitrate error of `video` so far."""
        if not self.enabled or step.feedback is None:
            return
        with self.lock:
            bits, frames = self.videos.get(video, (0, 0))
            bits, frames = bits + step.feedback.bits, frames + step.feedback.frame_count
            self.videos[video] = (bits, frames)
            req = step.request
            error = bits * req.fps / frames / 1000.0 / req.target_kbps - 1.0
            self.bar.set_postfix_str(f"λ {self.lam():.3f}, bitrate error {100 * error:+.1f}%", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Ends the bar; off a terminal, logs its final state as one line."""
        if not self.enabled:
            return
        line = str(self.bar)
        self.bar.close()
        if self._sink is not None:
            self._sink.close()
            log.info("%s", line)
