"""The GOP / mini-GOP structure of an encode: which frames form which mini-GOP of which GOP."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MiniGop:
    """One mini-GOP: `count` consecutive frames starting at display index `first`."""

    index: int  # 0-based mini-GOP number across the encode
    gop: int  # 0-based GOP number
    in_gop: int  # position inside the GOP (0 = the one that starts with the key frame)
    gop_size: int  # mini-GOPs in this GOP
    first: int  # display index of the first frame
    count: int  # frames (the last mini-GOP of a GOP / of the encode may be short)

    @property
    def key_first(self) -> bool:
        """True if the first frame is a key frame (every GOP starts with one)."""
        return self.in_gop == 0

    @property
    def gop_end(self) -> bool:
        """True for the last mini-GOP of its GOP (also the last of the encode)."""
        return self.in_gop == self.gop_size - 1

    @property
    def frames(self) -> range:
        return range(self.first, self.first + self.count)


def build_layout(frames: int, keyint: int, mini_gop: int) -> list[MiniGop]:
    """Splits `frames` frames into GOPs of `keyint` frames and those into mini-GOPs of `mini_gop`.

    The last GOP may be short; its last mini-GOP then holds the remainder.
    """
    if frames < 1 or keyint < 1 or mini_gop < 1 or keyint % mini_gop != 0:
        raise ValueError(f"bad layout: frames={frames} keyint={keyint} mini_gop={mini_gop}")
    out: list[MiniGop] = []
    for gop, gop_first in enumerate(range(0, frames, keyint)):
        gop_frames = min(keyint, frames - gop_first)
        starts = list(range(gop_first, gop_first + gop_frames, mini_gop))
        for pos, first in enumerate(starts):
            count = min(mini_gop, gop_first + gop_frames - first)
            out.append(MiniGop(len(out), gop, pos, len(starts), first, count))
    return out
