"""VP9's q_index scale (0..255) and the quantiser step behind it (no libvpx needed)."""

from __future__ import annotations

import math

QP_MIN = 0  # VP9 q_index range
QP_MAX = 255

# VP9's AC quantiser step per q_index, 8-bit (the bitstream spec's ac_qlookup table).
AC_QSTEP = (
    4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88,
    89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120, 122,
    124, 126, 128, 130, 132, 134, 136, 138, 140, 142, 144, 146, 148, 150, 152, 155, 158, 161, 164, 167, 170, 173,
    176, 179, 182, 185, 188, 191, 194, 197, 200, 203, 207, 211, 215, 219, 223, 227, 231, 235, 239, 243, 247, 251,
    255, 260, 265, 270, 275, 280, 285, 290, 295, 300, 305, 311, 317, 323, 329, 335, 341, 347, 353, 359, 366, 373,
    380, 387, 394, 401, 408, 416, 424, 432, 440, 448, 456, 465, 474, 483, 492, 501, 510, 520, 530, 540, 550, 560,
    571, 582, 593, 604, 615, 627, 639, 651, 663, 676, 689, 702, 715, 729, 743, 757, 771, 786, 801, 816, 832, 848,
    864, 881, 898, 915, 933, 951, 969, 988, 1007, 1026, 1046, 1066, 1087, 1108, 1129, 1151, 1173, 1196, 1219, 1243,
    1267, 1292, 1317, 1343, 1369, 1396, 1423, 1451, 1479, 1508, 1537, 1567, 1597, 1628, 1660, 1692, 1725, 1759,
    1793, 1828,
)  # fmt: skip
assert len(AC_QSTEP) == QP_MAX + 1


def qstep_level(q: float) -> float:
    """6*log2 of the AC quantiser step at (real) q_index `q`, linearly interpolated between indices.

    This is VP9's q_index on the H.264 QP scale (+6 = twice the step), the unit the rate-control
    model's exponent uses (ratecontrol.CodecRcParams.level).
    """
    q = min(max(q, float(QP_MIN)), float(QP_MAX))
    i = min(int(q), QP_MAX - 1)
    step = AC_QSTEP[i] + (q - i) * (AC_QSTEP[i + 1] - AC_QSTEP[i])
    return 6.0 * math.log2(step)


def q_for_level(level: float) -> int:
    """The q_index whose qstep_level is closest to `level` (the inverse of qstep_level on integers)."""
    return min(range(QP_MIN, QP_MAX + 1), key=lambda q: abs(qstep_level(q) - level))


def qindex_for_quantizer(quantizer: int) -> int:
    """libvpx's map from its 0..63 "quantizer" scale (--min-q, --max-q, --cq-level) to q_index."""
    return {62: 249, 63: 255}.get(quantizer, 4 * quantizer)


def quantizer_for_qindex(q: int) -> int:
    """The 0..63 quantizer whose q_index is nearest `q`."""
    return min(range(64), key=lambda k: abs(qindex_for_quantizer(k) - q))
