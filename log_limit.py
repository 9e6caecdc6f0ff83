"""A bounded log: the same warning or error is printed a few times, then only counted.

An encoder that fails the same way on every video of every epoch would otherwise fill the log with
one message. Messages that differ only in their numbers (epoch, session, mini-GOP, exit code) count
as the same. After `limit` copies, one line says the rest are counted; after that a count line at
every power of ten (10, 100, 1000 ... copies), and `summary()` lists what was held back.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class _Seen:
    count: int = 0
    first_line: str = ""


class RepeatLimit(logging.Filter):
    """A filter for a handler: lets through the first `limit` copies of each warning/error, counts the rest."""

    def __init__(self, limit: int = 3) -> None:
        super().__init__()
        self.limit = limit
        self.seen: dict[tuple[int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        seen = self.seen.setdefault((record.levelno, _NUMBER.sub("#", text)), _Seen(first_line=text.split("\n")[0]))
        seen.count += 1
        if seen.count <= self.limit:
            if seen.count == self.limit:
                note = f"(printed {self.limit} times: further copies are only counted)"
                record.msg, record.args = f"{text}\n  {note}", None
            return True
        if _power_of_ten(seen.count):
            record.msg, record.args = f"the same message {seen.count} times so far: {seen.first_line[:200]}", None
            return True
        return False

    def summary(self) -> list[str]:
        """One line per message held back: how often it came, and its first line."""
        return [f"{s.count} times: {s.first_line[:200]}" for s in self.seen.values() if s.count > self.limit]


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def install(logger: logging.Logger, limit: int = 3) -> RepeatLimit:
    """Puts a RepeatLimit on every handler of `logger` (replacing an earlier one); returns it."""
    limiter = RepeatLimit(limit)
    for handler in logger.handlers:
        for f in [f for f in handler.filters if isinstance(f, RepeatLimit)]:
            handler.removeFilter(f)
        handler.addFilter(limiter)
    return limiter


def log_summary(logger: logging.Logger) -> None:
    """Logs what the logger's RepeatLimit held back (nothing if it held nothing back)."""
    for handler in logger.handlers:
        for f in handler.filters:
            if isinstance(f, RepeatLimit) and f.summary():
                logger.warning("messages printed %d times and then only counted:\n  %s", f.limit,
                            "\n  ".join(f.summary()))  # fmt: skip
                return
