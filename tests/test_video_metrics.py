"""merg_jax.eval.video: SSIM and its map against scikit-image (gray, RGB, [0, 1] floats, crops), PSNR by hand,
CPBD on edges of known width and on blurred images, and the copy-the-first-frame baseline on real AvaMERG-mini
clips (printed: it is the floor a talking-face model must beat)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from merg_jax.eval.video import (MOUTH_REGION_96, PSNR_CAP_DB, _marziliano_widths, cpbd, psnr, real_time_factor,
                                 scale_region, ssim, ssim_map, video_cpbd, video_psnr, video_ssim)

MINI_VIDEO = Path("/work/data/mini800/train/video")  # AvaMERG-mini, 96x96 25 fps face clips


def structured(h: int = 72, w: int = 88, seed: int = 0) -> np.ndarray:
    """A uint8 gray image with edges, a gradient and texture: bars and blocks over a ramp, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 60 + 100 * x / w + 30 * np.sin(y / 5.0)
    img[(x // 9) % 2 == 0] += 50
    img[10:30, 20:50] = 20
    return np.clip(img + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def distorted(img: np.ndarray, seed: int = 1) -> np.ndarray:
    """img blurred, brightened and noised: a typical reconstruction error."""
    rng = np.random.default_rng(seed)
    out = ndimage.gaussian_filter(img.astype(float), sigma=[1.0, 1.0, 0][:img.ndim]) * 0.9 + 15
    return np.clip(out + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def rng_images(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    return a, b


# ------------------------------------------------------------------------------------------------------ SSIM


def sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, full: bool = False):
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=data_range, channel_axis=-1 if a.ndim == 3 else None,
                                         full=full)


CASES = {
    "random_gray": lambda: rng_images((40, 56)),
    "random_rgb": lambda: rng_images((40, 56, 3), seed=1),
    "structured_gray": lambda: (structured(), distorted(structured())),
    "structured_rgb": lambda: (np.stack([structured(seed=s) for s in range(3)], -1),
                               distorted(np.stack([structured(seed=s) for s in range(3)], -1))),
}


@pytest.mark.parametrize("case", CASES)
def test_ssim_matches_skimage(case):
    a, b = CASES[case]()
    want, want_map = sk_ssim(a, b, full=True)
    assert ssim(a, b) == pytest.approx(want, abs=1e-10)
    got_map = ssim_map(a, b)
    assert got_map.shape == a.shape
    np.testing.assert_allclose(got_map, want_map, atol=1e-10)


def test_ssim_float_data_range_and_identity():
    a, b = (x.astype(np.float64) / 255.0 for x in CASES["structured_rgb"]())
    assert ssim(a, b, data_range=1.0) == pytest.approx(sk_ssim(a, b, data_range=1.0), abs=1e-10)
    assert ssim(a, a, data_range=1.0) == 1.0
    gray = structured()
    assert ssim(gray, gray) == 1.0
    assert ssim(gray, distorted(gray)) < 0.9


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


def test_video_ssim_is_mean_of_frames_and_crops_regions():
    rng = np.random.default_rng(3)
    base = np.stack([structured(96, 96, seed=s) for s in range(3)], -1)
    # 20 frames: more than one 16-frame filtering chunk
    clip = np.stack([np.clip(base.astype(int) + rng.integers(-30, 31, base.shape), 0, 255) for _ in range(20)])
    clip = clip.astype(np.uint8)
    ref = np.broadcast_to(base, clip.shape)
    per_frame = [ssim(c, r) for c, r in zip(clip, ref)]
    assert video_ssim(clip, ref) == pytest.approx(np.mean(per_frame), abs=1e-12)

    r0, r1, c0, c1 = MOUTH_REGION_96
    mouth = [sk_ssim(c[r0:r1, c0:c1], r[r0:r1, c0:c1]) for c, r in zip(clip, ref)]
    assert video_ssim(clip, ref, region=MOUTH_REGION_96) == pytest.approx(np.mean(mouth), abs=1e-10)
    assert video_ssim(clip[..., 0], ref[..., 0], region=MOUTH_REGION_96) == pytest.approx(
        np.mean([ssim(c[r0:r1, c0:c1, 0], r[r0:r1, c0:c1, 0]) for c, r in zip(clip, ref)]), abs=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        video_ssim(clip, ref, region=(0, 100, 0, 50))
    with pytest.raises(ValueError, match="frames"):
        video_ssim(base[..., 0], base[..., 0])  # one (H, W) image is not a clip


def test_scale_region():
    assert scale_region(MOUTH_REGION_96, 96) == MOUTH_REGION_96
    assert scale_region(MOUTH_REGION_96, 192) == (104, 168, 56, 136)
    assert scale_region(MOUTH_REGION_96, 256) == (139, 224, 75, 181)
    assert scale_region(MOUTH_REGION_96, (192, 96)) == (104, 168, 28, 68)


# ------------------------------------------------------------------------------------------------------ PSNR


def test_psnr_by_hand():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[1, 2] = 16  # MSE = 16^2 / 16 pixels = 16
    assert psnr(a, b) == pytest.approx(10 * math.log10(255.0 ** 2 / 16.0), abs=1e-12)  # 36.09 dB
    assert psnr(a, a) == math.inf
    assert psnr(np.zeros(3, np.uint8), np.full(3, 255, np.uint8)) == pytest.approx(0.0)  # no uint8 wrap-around
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(psnr(a, b), abs=1e-9)

    clip_a, clip_b = np.stack([a, a, a]), np.stack([a, b, a])
    # two identical frames count as the cap, not inf
    assert video_psnr(clip_a, clip_b) == pytest.approx((2 * PSNR_CAP_DB + psnr(a, b)) / 3)
    assert video_psnr(clip_a, clip_b, region=(0, 2, 2, 4)) == pytest.approx(
        (2 * PSNR_CAP_DB + 10 * math.log10(255.0 ** 2 / 64.0)) / 3)  # the 2x2 crop holds the changed pixel


def test_real_time_factor():
    assert real_time_factor(3.0, 6.0) == 0.5
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0.0)


# ------------------------------------------------------------------------------------------------------ CPBD


def ramp_edge(profile: list[float], size: int = 64) -> np.ndarray:
    """A size x size image of identical rows: `profile` in the middle, its end values extended either side."""
    lead = (size - len(profile)) // 2
    row = np.concatenate([np.full(lead, profile[0]), profile, np.full(size - lead - len(profile), profile[-1])])
    return np.tile(row, (size, 1))


def test_marziliano_width_is_distance_between_extrema():
    img = ramp_edge([10, 10, 10, 60, 110, 160, 210, 210, 210], size=16)
    edges = np.zeros(img.shape, bool)
    edges[5, 3 + 5] = True  # the pixel at 160: the local minimum lies 3 pixels left, the maximum 1 pixel right
    widths = _marziliano_widths(img, edges)
    assert widths[5, 8] == 4.0 and np.count_nonzero(widths) == 1
    widths = _marziliano_widths(img[:, ::-1].copy(), edges[:, ::-1].copy())  # a falling edge, mirrored
    assert widths[5, 16 - 1 - 8] == 4.0


def test_cpbd_counts_edges_no_wider_than_jnb_as_sharp():
    # high contrast (> 50 levels): w_JNB = 3, so a 3-pixel ramp is sharp (P_blur = 63.2%) and a 4-pixel one is not
    assert cpbd(ramp_edge([0, 0, 85, 170, 255, 255])) == 1.0
    assert cpbd(ramp_edge([0, 0, 64, 128, 191, 255, 255])) == 0.0
    # low contrast (<= 50 levels): w_JNB = 5, so the same 4-pixel ramp is sharp
    assert cpbd(ramp_edge([100, 100, 110, 120, 130, 140, 140])) == 1.0


def text_like(size: int = 128, seed: int = 0) -> np.ndarray:
    """Dark strokes of random width and height on a light page, and a checkerboard corner: sharp edges."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 215.0)
    for _ in range(60):
        r, c = rng.integers(0, size - 12, 2)
        img[r:r + rng.integers(4, 24), c:c + rng.integers(2, 7)] = rng.uniform(10, 80)
    y, x = np.mgrid[0:40, 0:40]
    img[-40:, -40:] = np.where((y // 8 + x // 8) % 2, 30.0, 220.0)
    return img


def test_cpbd_falls_with_blur():
    sharp = text_like()
    scores = [cpbd(sharp)] + [cpbd(ndimage.gaussian_filter(sharp, s)) for s in (1, 2, 3)]
    assert scores[0] > 0.9
    assert all(hi > lo for hi, lo in zip(scores, scores[1:])), scores


def test_cpbd_saturates_on_binary_edges():
    # A two-level checkerboard (contrast 200: w_JNB 3) has only perfect steps (width 2): every edge is sharp. A
    # Gaussian blur of sigma 1 already spreads every one of them over more than 3 pixels, so CPBD drops to 0 at
    # once: CPBD grades natural images, whose edges have many widths, not binary ones.
    board = np.kron((np.indices((16, 16)).sum(0) % 2) * 200.0 + 25, np.ones((8, 8)))
    assert cpbd(board) == 1.0
    assert cpbd(ndimage.gaussian_filter(board, 1.0)) == 0.0


def test_cpbd_flat_small_and_colour():
    assert cpbd(np.full((128, 128), 120, np.uint8)) == 0.0  # no edges: documented 0.0, not nan
    assert cpbd(text_like()[:40, :40]) == 0.0  # smaller than one 64x64 block
    gray = text_like().astype(np.uint8)
    assert cpbd(np.stack([gray] * 3, -1)) == cpbd(gray)  # equal channels: luma is the gray image
    frames = np.stack([gray, ndimage.gaussian_filter(gray, 2)])
    assert video_cpbd(frames) == pytest.approx((cpbd(frames[0]) + cpbd(frames[1])) / 2)
    # a 96x96 frame has one full block; partial_blocks also scores the right and bottom strips
    strip_only = np.full((96, 96), 200.0)
    strip_only[70:90, 70:74] = 20.0
    assert cpbd(strip_only) == 0.0 and cpbd(strip_only, partial_blocks=True) == 1.0


def test_cpbd_on_camera():
    data = pytest.importorskip("skimage.data")
    cam = data.camera()
    sharp = cpbd(cam)
    # the python-cpbd port (approximate edge detectors) gives 0.748 on this image
    assert sharp == pytest.approx(0.748, abs=0.03)
    assert cpbd(ndimage.gaussian_filter(cam, 1.0)) < sharp - 0.2


# ------------------------------------------------------------------------------------------- real clips


def test_first_frame_baseline_on_avamerg_mini(capsys):
    """Copying each clip's first frame to every frame: the score of a model that does not move the face."""
    if not MINI_VIDEO.is_dir():
        pytest.skip(f"{MINI_VIDEO} not present")
    pytest.importorskip("av")
    iio = pytest.importorskip("imageio.v3")
    paths = sorted(MINI_VIDEO.glob("*.mp4"))
    if len(paths) < 10:
        pytest.skip(f"fewer than 10 clips in {MINI_VIDEO}")
    paths = paths[::len(paths) // 10][:10]  # spread over the split: different speakers and dialogues
    full, mouth, sharp, frames = [], [], [], 0
    for path in paths:
        clip = iio.imread(path, plugin="pyav")  # (T, 96, 96, 3) uint8
        assert clip.ndim == 4 and clip.shape[1:] == (96, 96, 3)
        first = np.broadcast_to(clip[:1], clip.shape)
        full.append(video_ssim(first, clip))
        mouth.append(video_ssim(first, clip, region=MOUTH_REGION_96))
        sharp.append(video_cpbd(clip[::10]))
        frames += len(clip)
    with capsys.disabled():
        print(f"\nfirst-frame baseline, {len(paths)} AvaMERG-mini train clips ({frames} frames): SSIM full "
              f"{np.mean(full):.4f}, mouth {np.mean(mouth):.4f}; ground-truth CPBD {np.mean(sharp):.4f}")
    assert 0.75 <= np.mean(full) <= 0.97
    assert 0.5 <= np.mean(mouth) <= 0.85
    assert np.mean(mouth) < np.mean(full)  # the mouth is what moves
