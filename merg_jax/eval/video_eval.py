"""`merg-jax eval`'s video figures: the face generator against the real talking-face clips of a split.

    figures = evaluate_video(loaded, "data/avamerg_mini", "test", limit=20, sync_dir="runs/x/judges/sync")

For each of `limit` clips with audio, video and an avatar portrait (a fixed, seeded sample of the split):

- **renderer**: each frame rebuilt from the clip's first frame and that frame's keypoints; SSIM on the full frame
  and the mouth region beside the copy-the-first-frame baseline;
- **generator** (speech in, frames out): the portrait animated by the clip's real speech in the style of the real
  clip (`style_from_reference`, read against the portrait), and — for clips with an annotated emotion — in the
  label style of that emotion. Against the real clip: SSIM and PSNR (full frame, mouth region) beside the still
  portrait's; mouth opening measured from the pixels (the share of mouth-region pixels darker than the portrait's
  darkest percent; `mouth_opening`) correlated with the side-car's `mouth_open` track and with the speech's energy
  envelope, for generated, real and still clips; identity (SSIM of everything but the mouth region against the
  portrait); CPBD sharpness (every 64-pixel block that fits, `partial_blocks=True`: the published metric alone
  sees only the top-left block of a 96×96 frame);
- **sync**: LSE-C / LSE-D from our sync judge (`merg_jax.eval.sync`, trained contrastively on the training split
  once and kept in `sync_dir`) on generated, real and still clips, with the judge's accuracy at finding the true
  audio offset of real clips beside them;
- **emotion**: our emotion judge (`merg_jax.eval.emotion_judge`, trained on the training split's labelled speaker
  clips once and kept in `emotion_dir`; it reads each frame as a change from the avatar's portrait) on generated
  clips (label- and reference-driven), on the portrait moved by the real clip's own keypoints and codes
  (`real_motion`: what the renderer can show with perfect motion), on the real clips and on the still portrait;
- **real-time factor**: seconds of animation (content, motion, rendering; batch 1, after compilation) per second
  of video, at the trained size and at 256×256.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from merg_jax import labels

log = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114])
DARK_PERCENTILE = 1.0


def mouth_opening(frames: np.ndarray, portrait: np.ndarray, region) -> np.ndarray:
    """Per frame, the share of mouth-region pixels darker than the portrait's darkest `DARK_PERCENTILE` percent
    there: the open mouth's dark inside, measured from pixels alone (ρ ≈ 0.97 with the side-car's `mouth_open` on
    real AvaMERG-mini clips)."""
    r0, r1, c0, c1 = region
    threshold = np.percentile(portrait[r0:r1, c0:c1].astype(np.float64) @ _LUMA, DARK_PERCENTILE)
    lum = frames[:, r0:r1, c0:c1].astype(np.float64) @ _LUMA
    return (lum < threshold).mean(axis=(1, 2))


def energy_envelope(wave: np.ndarray, sr: int, fps: float, n: int) -> np.ndarray:
    """RMS of the speech over a window 1.5 frames wide around each video frame's centre."""
    w = np.asarray(wave, np.float64)
    energy = np.concatenate([[0.0], np.cumsum(w * w)])
    centre = (np.arange(n) + 0.5) * sr / fps
    half = 0.75 * sr / fps
    lo = np.clip(np.round(centre - half).astype(np.int64), 0, w.size)
    hi = np.clip(np.round(centre + half).astype(np.int64), 0, w.size)
    return np.sqrt(np.maximum(energy[hi] - energy[lo], 0.0) / np.maximum(hi - lo, 1))


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's ρ; None when either side is constant (a still face has no correlation to report)."""
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
    if n < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def identity_ssim(frames: np.ndarray, portrait: np.ndarray, region) -> float:
    """Mean SSIM of every pixel outside the mouth region against the portrait (the SSIM map's inner pixels)."""
    from merg_jax.eval.video import ssim_map

    r0, r1, c0, c1 = region
    out = []
    for f in frames:
        m = ssim_map(f, portrait)
        if m.ndim == 3:
            m = m.mean(-1)
        keep = np.ones(m.shape, bool)
        keep[r0:r1, c0:c1] = False
        keep[:5], keep[-5:], keep[:, :5], keep[:, -5:] = False, False, False, False
        out.append(float(m[keep].mean()))
    return float(np.mean(out))


def _sidecar(video: str) -> dict | None:
    path = pathlib.Path(video).with_suffix(".json")
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _kept_judge(directory: str | None, load: Callable, train: Callable, save: Callable):
    """The judge kept in `directory`, or `train()`ed and kept there (when `directory` is set)."""
    if directory and (pathlib.Path(directory) / "config.json").exists():
        return load(directory)
    model = train()
    if directory:
        save(model, directory)
    return model


def sync_judge(data_root: str, sync_dir: str | None, emit: Callable[[str], None], *, steps: int = 1500,
               max_clips: int = 800):
    """The sync judge kept in `sync_dir`, trained on `data_root`'s training split when it is not there yet."""
    from merg_jax.eval.sync import load_sync_model, save_sync_model, train_sync_model

    def train():
        emit(f"video eval: training the sync judge on {data_root} (train split, {steps} steps)")
        return train_sync_model(data_root, split="train", steps=steps, max_clips=max_clips, log=emit)

    return _kept_judge(sync_dir, load_sync_model, train, save_sync_model)


def emotion_judge(data_root: str, emotion_dir: str | None, emit: Callable[[str], None], *, steps: int = 400,
                  max_clips: int = 600):
    """The emotion judge kept in `emotion_dir`, trained on `data_root`'s training split when it is not there yet."""
    from merg_jax.eval.emotion_judge import load_emotion_judge, save_emotion_judge, train_emotion_judge

    def train():
        emit(f"video eval: training the emotion judge on {data_root} (train split, {steps} steps)")
        return train_emotion_judge(data_root, split="train", steps=steps, max_clips=max_clips, log=emit)

    return _kept_judge(emotion_dir, load_emotion_judge, train, save_emotion_judge)


def _sync(judge, frames, wave, sr) -> dict | None:
    from merg_jax.eval.sync import sync_scores

    try:
        return dict(sync_scores(judge, frames, wave, sr))
    except ValueError:  # a clip shorter than the judge's offsets span: no score for it
        return None


class ClipRebuilder:
    """The renderer's own test: every frame of a clip rebuilt from the clip's first frame and that frame's keypoints
    and expression code (compiled once for chunks of `chunk` frames).

        rebuild = ClipRebuilder(face.renderer)
        rec = rebuild(real)        # uint8 [T, S, S, 3] → uint8 [T, S, S, 3]
    """

    def __init__(self, renderer, chunk: int = 32):
        import jax
        from flax import nnx

        graphdef, self._state = nnx.split(renderer)
        self._fn = jax.jit(lambda state, s, d: nnx.merge(graphdef, state)(s, d))
        self.chunk = chunk

    def __call__(self, real: np.ndarray) -> np.ndarray:
        import jax.numpy as jnp

        x = jnp.asarray(real, jnp.float32) / 255.0
        out = []
        for s in range(0, len(real), self.chunk):
            d = x[s:s + self.chunk]
            if len(d) < self.chunk:  # one compiled shape: pad with the last frame
                d = jnp.concatenate([d, jnp.repeat(d[-1:], self.chunk - len(d), 0)])
            out.append(np.asarray(self._fn(self._state, jnp.broadcast_to(x[:1], d.shape), d))[: len(real) - s])
        return (np.concatenate(out) * 255.0 + 0.5).astype(np.uint8)


def renderer_scores(rebuilt: np.ndarray, real: np.ndarray, mouth) -> dict[str, float]:
    """SSIM of a rebuilt clip, full frame and mouth region, beside copying the first frame to every frame."""
    from merg_jax.eval.video import video_ssim

    first = np.repeat(real[:1], len(real), 0)
    return {"ssim": video_ssim(rebuilt, real), "ssim_mouth": video_ssim(rebuilt, real, mouth),
            "copy_ssim": video_ssim(first, real), "copy_ssim_mouth": video_ssim(first, real, mouth)}


def pick_clips(data_root: str, split: str, limit: int) -> list[dict]:
    """The evaluated clips: `limit` of the split's clips with audio, video and an avatar portrait, drawn with seed 0
    (the same ones on every call)."""
    from merg_jax.data.face_corpus import clip_records

    records = [r for r in clip_records(str(data_root), split) if r["audio"] and r["portrait"]]
    if not records:
        raise ValueError(f"{data_root}: no {split} clip has audio, video and an avatar portrait to evaluate")
    pick = np.random.default_rng(0).permutation(len(records))[: max(1, int(limit))]
    return [records[i] for i in sorted(pick)]


def evaluate_video(loaded, data_root: str, split: str = "test", *, limit: int = 20, sync_dir: str | None = None,
                   sync_steps: int = 1500, emotion_dir: str | None = None, emotion_steps: int = 400,
                   judge_clips: int | None = None, emit: Callable[[str], None] | None = None) -> dict[str, Any]:
    from merg_jax.data.face_corpus import clip_frames, read_image
    from merg_jax.data.speech_corpus import read_speech
    from merg_jax.eval.emotion_judge import clip_emotion
    from merg_jax.eval.video import MOUTH_REGION_96, scale_region, video_cpbd, video_psnr, video_ssim
    from merg_jax.infer.face import Animator

    emit = emit or log.info
    face = loaded.model.face
    anim = Animator(face)
    cfg = face.cfg
    size, fps, sr = cfg.size, cfg.fps, cfg.sample_rate
    mouth = scale_region(MOUTH_REGION_96, size)
    records = pick_clips(data_root, split, limit)
    rebuild = ClipRebuilder(face.renderer)
    # judge_clips: at most that many training clips decoded for each judge trained here (a quick run's choice)
    clips = {} if judge_clips is None else {"max_clips": int(judge_clips)}
    emotions = None
    if emotion_steps > 0:  # 0: no emotion figures (a quick run's choice)
        try:
            emotions = emotion_judge(str(data_root), emotion_dir, emit, steps=emotion_steps, **clips)
        except ValueError as e:
            emit(f"video eval: no emotion judge ({e})")
    from merg_jax.eval.sync import offset_accuracy

    try:
        judge = sync_judge(str(data_root), sync_dir, emit, steps=sync_steps, **clips)
    except ValueError as e:
        emit(f"video eval: no sync judge ({e})")
        judge = None
    # warm up every compiled shape before timing
    warm = np.zeros((int(fps), cfg.content_dim), np.float32)
    anim.animate(np.zeros((size, size, 3), np.uint8) + 128, warm, None)
    rows: list[dict[str, Any]] = []
    real_clips, compute, seconds = [], 0.0, 0.0
    for k, r in enumerate(records):
        try:
            real = clip_frames(r["video"], size, fps)
            wave = read_speech(r["audio"], sr)
            portrait = read_image(r["portrait"], size)
        except Exception as e:  # noqa: BLE001 - one bad clip is skipped and counted
            emit(f"video eval: skipped {r['video']}: {type(e).__name__}: {e}")
            continue
        row: dict[str, Any] = {"video": r["video"]}
        row["renderer"] = renderer_scores(rebuild(real), real, mouth)
        first = np.repeat(real[:1], len(real), 0)
        # the generator, in the real clip's style (timed)
        t0 = time.perf_counter()
        content = anim.content_from_speech(wave, sr)
        real_motion = anim.motion_of_clip(real, portrait)
        gen = anim.animate(portrait, content, anim.style_from_motion(real_motion))
        compute += time.perf_counter() - t0
        seconds += len(gen) / fps
        n = min(len(gen), len(real))
        gen, ref = gen[:n], real[:n]
        still = np.repeat(portrait[None], n, 0)
        row["ssim"] = {"generated": video_ssim(gen, ref), "still": video_ssim(still, ref),
                       "copy_first": video_ssim(first[:n], ref)}
        row["ssim_mouth"] = {"generated": video_ssim(gen, ref, mouth), "still": video_ssim(still, ref, mouth),
                             "copy_first": video_ssim(first[:n], ref, mouth)}
        row["psnr"] = {"generated": video_psnr(gen, ref), "still": video_psnr(still, ref)}
        row["psnr_mouth"] = {"generated": video_psnr(gen, ref, mouth), "still": video_psnr(still, ref, mouth)}
        envelope = energy_envelope(wave, sr, fps, n)
        side = _sidecar(r["video"])
        track = np.asarray(side["mouth_open"], np.float64)[:n] if side and "mouth_open" in side else None
        opening = {"generated": mouth_opening(gen, portrait, mouth), "real": mouth_opening(ref, portrait, mouth),
                   "still": mouth_opening(still, portrait, mouth)}
        row["mouth_vs_energy"] = {k2: correlation(v, envelope) for k2, v in opening.items()}
        if track is not None:
            row["mouth_vs_track"] = {k2: correlation(v, track) for k2, v in opening.items()}
        row["identity_ssim"] = {"generated": identity_ssim(gen, portrait, mouth),
                                "real": identity_ssim(ref, portrait, mouth)}
        row["cpbd"] = {"generated": video_cpbd(gen[::5], partial_blocks=True),
                       "real": video_cpbd(ref[::5], partial_blocks=True)}
        if judge is not None:
            row["sync"] = {name: _sync(judge, clip, wave, sr)
                           for name, clip in (("generated", gen), ("real", ref), ("still", still))}
            real_clips.append((ref, wave, sr))
        if emotions is not None and r["emotion7"] >= 0:
            label = anim.animate(portrait, content, anim.style_from_label(labels.EMOTIONS_7[r["emotion7"]]))
            replay = anim.render(portrait, real_motion)  # the renderer's ceiling: the real clip's own motion
            row["emotion"] = {"gold": r["emotion7"]} | {
                name: clip_emotion(emotions, clip, portrait) for name, clip in (
                    ("label_driven", label), ("reference_driven", gen), ("real_motion", replay), ("real", ref),
                    ("still", still))}
        rows.append(row)
        if (k + 1) % 5 == 0:
            emit(f"video eval: {k + 1}/{len(records)} clips")
    if not rows:
        raise ValueError(f"video eval: none of the {len(records)} {split} clips could be read")
    out: dict[str, Any] = {"clips": len(rows), "size": size, "fps": fps, "mouth_region": list(mouth),
                           "real_time_factor": compute / max(seconds, 1e-9), "generated_seconds": seconds}
    out["renderer"] = {k: _mean(r["renderer"][k] for r in rows) for k in rows[0]["renderer"]}
    for key in ("ssim", "ssim_mouth", "psnr", "psnr_mouth", "mouth_vs_energy", "mouth_vs_track", "identity_ssim",
                "cpbd"):
        have = [r[key] for r in rows if key in r]
        if have:
            out[key] = {k: _mean(h.get(k) for h in have) for k in have[0]}
    if judge is not None:
        out["sync"] = {side: {m: _mean(r["sync"][side][m] for r in rows if r["sync"][side]) for m in ("lse_c", "lse_d")}
                       for side in ("generated", "real", "still")}
        try:
            out["sync"]["judge_offset_accuracy"] = offset_accuracy(judge, real_clips)
        except ValueError as e:  # every clip too short to shift
            out["sync"]["judge_offset_accuracy"] = None
            emit(f"video eval: no offset accuracy ({e})")
    emo = [r["emotion"] for r in rows if "emotion" in r]
    if emo:
        out["emotion"] = {k: float(np.mean([e[k] == e["gold"] for e in emo]))
                          for k in ("label_driven", "reference_driven", "real_motion", "real", "still")}
        out["emotion"].update(clips=len(emo), chance=1.0 / len(labels.EMOTIONS_7))
    # the real-time factor at 256×256 on the first clip
    wave = read_speech(records[0]["audio"], sr)
    portrait = read_image(records[0]["portrait"])
    content = anim.content_from_speech(wave, sr)
    anim.animate(portrait, content[: int(fps)], None, size=256)  # compile
    t0 = time.perf_counter()
    big = anim.animate(portrait, content, None, size=256)
    out["real_time_factor_256"] = (time.perf_counter() - t0) / (len(big) / fps)
    return out


__all__ = ["ClipRebuilder", "correlation", "energy_envelope", "emotion_judge", "evaluate_video", "identity_ssim",
           "mouth_opening", "pick_clips", "renderer_scores", "sync_judge"]
