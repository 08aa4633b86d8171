"""Keypoint tracks for the face motion stage: every training clip's motion in the trained renderer's keypoints and
expression codes.

    prepare_tracks(face, config, emit)      # writes {output_dir}/face_tracks/{train,valid}.npz, fills the motion stats
    tracks_path(config, "train")            # where the motion rows read them (`merg_jax.data.face_corpus`)

A clip's motion is its frames' keypoints and codes minus its portrait's (`FaceGenerator` docstring). The files carry a
fingerprint of the keypoint detector's weights: a retrained renderer makes them again, a resumed run reuses them.
Clips that do not decode are skipped and counted; `data.face_max_clips` (0: all) caps the clips per split. Writes
are atomic.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CHUNK = 64  # frames per detector call (one compiled shape)


def tracks_path(config, split: str) -> pathlib.Path:
    suffix = f".p{jax.process_index()}" if jax.process_count() > 1 else ""
    return pathlib.Path(str(config.train.output_dir)) / "face_tracks" / f"{split}{suffix}.npz"


def detector_fingerprint(face) -> str:
    h = hashlib.sha1(repr(face.cfg.to_dict()).encode())
    for leaf in jax.tree.leaves(nnx.state(face.renderer.kp, nnx.Param)):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def motion_fn(face) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(uint8 portrait [S, S, 3], uint8 frames [N, S, S, 3]) → motion [N, 2K + E] (float32; `motion_of`), the
    detector run in chunks of one compiled shape."""
    from merg_jax.models.face.generator import motion_of

    graphdef, state = nnx.split(face.renderer.kp)

    @jax.jit
    def detect(state, frames):
        return nnx.merge(graphdef, state).detect(frames.astype(jnp.float32) / 255.0)

    def run(portrait: np.ndarray, frames: np.ndarray) -> np.ndarray:
        frames = np.concatenate([portrait[None], frames])
        kps, codes = [], []
        for s in range(0, len(frames), CHUNK):
            x = frames[s:s + CHUNK]
            pad = CHUNK - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            kp, code = detect(state, jnp.asarray(x))
            kps.append(np.asarray(kp)[:CHUNK - pad])
            codes.append(np.asarray(code)[:CHUNK - pad])
        kp, code = np.concatenate(kps), np.concatenate(codes)
        return np.asarray(motion_of(kp[1:], code[1:], kp[0], code[0]), np.float32)

    return run


def make_tracks(face, records: list[dict], emit: Callable[[str], None], *, what: str = "") -> dict[str, np.ndarray]:
    """{offsets, motion, index} of the records' clips (see `merg_jax.data.face_corpus.load_tracks`)."""
    from merg_jax.data.face_corpus import clip_frames, clip_portrait

    cfg = face.cfg
    motion_of_clip = motion_fn(face)

    def load(rec):
        try:
            frames = clip_frames(rec["video"], cfg.size, cfg.fps)
            return frames, clip_portrait(rec, cfg.size, frames), None
        except Exception as e:  # noqa: BLE001 - one bad clip is skipped and counted
            return None, None, f"{rec['video']}: {type(e).__name__}: {e}"

    motions, index, bad = [], [], []
    t0 = last = time.perf_counter()
    n_frames = 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for i, (rec, (frames, portrait, err)) in enumerate(zip(records, pool.map(load, records))):
            if err is not None:
                bad.append(err)
                continue
            motions.append(motion_of_clip(portrait, frames))
            index.append(int(rec["index"]))
            n_frames += len(frames)
            now = time.perf_counter()
            if now - last > 30 or i + 1 == len(records):
                rate = (i + 1) / (now - t0)
                emit(f"face tracks{what}: {i + 1}/{len(records)} clips, {n_frames} frames, {rate:.1f} clips/s, "
                     f"ETA {(len(records) - i - 1) / max(rate, 1e-9):.0f} s")
                last = now
    if bad:
        emit(f"face tracks{what}: {len(bad)} clip(s) skipped (do not decode), e.g. {bad[0]}")
    if not motions:
        raise ValueError(f"face tracks{what}: no clip decoded ({len(records)} tried)")
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in motions])]).astype(np.int64)
    return {"offsets": offsets, "motion": np.concatenate(motions), "index": np.asarray(index, np.int64)}


def _write(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _read_fingerprint(path: pathlib.Path) -> str | None:
    try:
        with np.load(path) as z:
            return str(z["fingerprint"]) if "fingerprint" in z.files else None
    except Exception:  # noqa: BLE001 - a broken file is made again
        return None


def prepare_tracks(face, config, emit: Callable[[str], None]) -> None:
    """Makes (or reuses) the train tracks — and the valid split's when the stage validates (`eval_every`) — and sets
    `face.motion_mean` / `motion_std` from train's."""
    from merg_jax.data.face_corpus import clip_records, load_tracks, motion_records

    root = str(config.data.root)
    limit = int(config.data.get("face_max_clips", 0) or 0)
    fingerprint = detector_fingerprint(face)
    stage = (config.get("stage") or {}).get("face_motion") or {}
    validates = int(stage.get("eval_every", config.train.get("eval_every", 0)) or 0) > 0
    for split in ("train", "valid"):
        if split == "valid" and not (validates and (pathlib.Path(root) / "valid.json").exists()):
            continue
        path = tracks_path(config, split)
        if path.exists() and _read_fingerprint(path) == fingerprint:
            emit(f"face tracks ({split}): reusing {path}")
            continue
        records = motion_records(clip_records(root, split), face.cfg.max_frames, face.cfg.fps)
        if limit:
            records = records[:limit]
        emit(f"face tracks ({split}): the keypoints of {len(records)} clips → {path}")
        arrays = make_tracks(face, records, emit, what=f" ({split})")
        _write(path, {**arrays, "fingerprint": np.asarray(fingerprint)})
    t = load_tracks(tracks_path(config, "train"))
    motion = t["motion"]
    face.motion_mean[...] = jnp.asarray(motion.mean(0), jnp.float32)
    face.motion_std[...] = jnp.asarray(np.maximum(motion.std(0), 1e-3), jnp.float32)
    emit(f"face tracks: {len(t['index'])} training clips, {len(motion)} frames; motion std "
         f"{float(motion.std(0).mean()):.4f} (keypoint units)")


__all__ = ["detector_fingerprint", "make_tracks", "motion_fn", "prepare_tracks", "tracks_path"]
