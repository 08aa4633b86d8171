"""The AvaMERG input pipeline (grain): turns -> decoded media + tokens -> fixed-shape numpy batches.

    it = make_iterator(config, "train")          # config: a merg_jax config with a `data` section
    batch = next(it)                             # dict of numpy arrays, shapes below
    state = it.get_state()                       # JSON-serialisable; a new iterator's set_state(state) resumes
    it.close()

Stages (grain `MapDataset` / `IterDataset`):

    source      records (`pipeline_records`), from the raw dataset (`avamerg.read_split`, media files on disk) or
                from array_record files prepared by the tfds builder (`tfds_avamerg`, media bytes inside)
    shuffle     seeded global shuffle of the split (the same on every host), a different permutation each epoch;
                then repeat
    host slice  the global batch order cut into per-host rows (`HostSlice`): host i of n (jax.process_index/count
                by default) reads, of each global batch of B samples, the rows [i*B/n, (i+1)*B/n) — exactly the
                rows its devices hold when the batch is split over the mesh. The hosts' slices are disjoint and
                cover the split, and n hosts train on the very batches one host would (until a bad sample is
                skipped: each host skips its own)
    decode      per sample, in worker processes if `workers > 0`: wav -> log-mel, mp4 -> frames for each history
                clip and the gold reply (`merg_jax.data.features`), the turn -> tokens (`templates`), labels
    batch       `batch_size` good samples per batch; a sample whose media cannot be decoded is skipped, counted
                and logged with its file (`pipeline_batch`), never stopping the run
    prefetch    `mp_prefetch` over `workers` processes (each decodes every workers-th sample and batches them)

Batch (B = per-host batch size, L = seq_len, C = max_clips; shapes are static, fixed by the config):

    tokens          int32 [B, L]   input ids: `<s>` prompt target (the last token dropped), then pad
    targets         int32 [B, L]   the next token at each position (tokens shifted left by one)
    loss_mask       int32 [B, L]   1 where targets[b, i] is a target token (the CoE/reply text and its `</s>`)
    segment_ids     int32 [B, L]   1 on the sample's tokens, 0 on padding (one turn per row, no packing)
    positions       int32 [B, L]   0, 1, 2, ... on the sample's tokens, 0 on padding
    media_clip      int32 [B, L]   at an `<Aud>`/`<Vid>` input token: the clip c (index into the C axis below) whose
                                   embedding replaces it; -1 elsewhere
    media_kind      int32 [B, L]   1 at `<Aud>`, 2 at `<Vid>`, 0 elsewhere
    clip_utterance  int32 [B, C]   utterance number n (from 1) of clip c; -1 for unused clips. Clips are the
                                   history utterances kept in the prompt, oldest first
    clip_emotion7   int32 [B, C]   the emotion a clip shows: the turn's CoE emotion (7 classes) on the speaker's
                                   clips, -1 on the listener's (not annotated) and unused clips
    audio_mel       f32 [B, C, T_mel, n_mels]  log-mel of each clip's speech (`features.log_mel`), zero-padded/cut
    audio_len       int32 [B, C]   valid mel frames of each clip (<= T_mel)
    audio_mask      bool [B, C]    clip has audio
    video_frames    uint8 [B, C, F, S, S, 3]   each clip's face video at `video.fps` (`features.video_frames`)
    video_len       int32 [B, C]   valid frames;  video_mask bool [B, C]
    reply_mel       f32 [B, T_reply, n_mels_reply]  the gold reply's speech (generator stages)
    reply_mel_len   int32 [B];     reply_audio_mask bool [B]
    reply_frames    uint8 [B, F_reply, S_reply, S_reply, 3]  the gold reply's talking-face video
    reply_frames_len int32 [B];    reply_video_mask bool [B]
    reply_portrait  uint8 [B, S_reply, S_reply, 3]  the listener's avatar image (with reply video, when the model
                   has a face generator)
    emotion7        int32 [B]      CoE speaker emotion among labels.EMOTIONS_7 (mapped from the 32 when named there)
    emotion32       int32 [B]      ... among labels.EMOTIONS_32
    age gender timbre avatar_id  int32 [B]  the listener's profile (the reply's voice and face)
    topic           int32 [B]      labels.TOPICS
    sample_index    int32 [B]      the turn's index in its split (`Split.turns` order); -1 for a padding row
    (every label is -1 when unknown)

The audio/video/reply groups are present only when their frame count in the config is > 0 (`data.audio.frames`
...). A padding row (end of a finite pass with `drop_remainder=False`) has zero tokens and masks.

Packing (`data.pack_segments = n > 0`, for the text stage): each row holds up to n turns one after another
(`merg_jax.data.packing`): `segment_ids` 1..n per turn, `positions` restarting, `media_clip` renumbered into the
row's C clips (so C bounds the clips of all its turns together), and every per-turn field (labels, reply media,
`sample_index`) gains a segment axis: `emotion7 [B, n]`, `reply_mel [B, n, T_reply, n_mels]`, ...; -1 / zeros
for unused segments. A turn that fits no row of a batch opens the next batch (and a saved state re-reads it).

Prompt-only batches (`make_iterator(..., prompt_only=True)`, for evaluation and `respond`): `tokens` hold each
turn's prompt as inference feeds it (`templates.encode_prompt`), `targets` and `loss_mask` are zero.

Decoded features are cached (`data.feature_cache_mb` in memory, `data.feature_cache_dir` on disk, shared by the
workers and by later runs: `merg_jax.data.feature_cache`), so each media file is decoded once.

Resumption: `DataIterator.get_state()` holds grain's iterator state (JSON) and the counters; `set_state` on a new
iterator built with the same config (same workers count) continues with exactly the batches the old one would
have produced next.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from merg_jax.data.features import FeatureConfig
from merg_jax.data.pipeline_batch import SKIPPED_KEY, SkipBadBatchIterDataset, Skipped, decode_skipped
from merg_jax.data.pipeline_features import BadSample, FeatureSpec, make_example
from merg_jax.data.templates import SYSTEM_PROMPT, encode_prompt, media_slots

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ grain setup


def ensure_absl_flags() -> None:
    """grain reads its settings from absl flags, and an unparsed flag raises. Programs that do not run
    `absl.app` (ours, notebooks, pytest) mark the flags parsed, keeping their defaults; a program that parsed them
    keeps its values. Runs in the main process and in every grain worker (`worker_init_fn`)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _worker_init(worker_index: int, worker_count: int) -> None:
    ensure_absl_flags()
    _single_threaded_blas()  # a worker decodes with threads and ffmpeg subprocesses: see _single_threaded_blas
    _exit_with_parent()


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """A grain worker waits for its parent to take a batch; a parent killed with SIGKILL never will, and never asks
    it to stop. So the worker watches its parent and ends itself when the parent is gone (it is re-parented)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="merg-exit-with-parent", daemon=True).start()


# ------------------------------------------------------------------------------------------------ host slice


def _host_slice_class():
    from grain._src.python.dataset import dataset

    class _HostSlice(dataset.MapDataset):
        def __init__(self, parent, *, global_batch: int, host_batch: int, host: int):
            super().__init__(parent)
            if host_batch < 1 or global_batch % host_batch or not 0 <= host < global_batch // host_batch:
                raise ValueError(f"HostSlice: host {host} with {host_batch} of {global_batch} rows per batch")
            self._B, self._b, self._host = global_batch, host_batch, host
            full, rem = divmod(len(parent), global_batch)
            self._length = full * host_batch + min(max(rem - host * host_batch, 0), host_batch)

        def __len__(self) -> int:
            return self._length

        def _parent_index(self, j: int) -> int:
            return (j // self._b) * self._B + self._host * self._b + j % self._b

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            return self._parent[self._parent_index(index)]

        def _getitems(self, indices):
            return self._parent._getitems([self._parent_index(j) for j in indices])

        def __str__(self) -> str:
            return f"HostSlice(host={self._host}, {self._b} of {self._B} rows per batch)"

    return _HostSlice


_HOST_SLICE = None


def HostSlice(parent, *, global_batch: int, host_batch: int, host: int):  # noqa: N802 - a dataset, by its role
    """Host `host`'s rows of each global batch of a grain `MapDataset`: element j is the parent's element
    `(j // b) * B + host * b + j % b` (B = global_batch, b = host_batch). The class is made on first use, so grain
    is imported only with the pipeline."""
    global _HOST_SLICE
    if _HOST_SLICE is None:
        _HOST_SLICE = _host_slice_class()
    return _HOST_SLICE(parent, global_batch=global_batch, host_batch=host_batch, host=host)


# ------------------------------------------------------------------------------------------------ per sample


class SampleTransform:
    """record -> the arrays of one batch row, or `Skipped` when its media cannot be decoded (a grain map)."""

    def __init__(self, tokenizer, spec: FeatureSpec, root: str | None):
        self.tokenizer = tokenizer
        self.spec = spec
        self.root = root

    def __call__(self, record: dict):
        try:
            return make_example(record, self.tokenizer, self.spec, self.root)
        except BadSample as e:
            log.debug("skipping sample %s (conversation %s, turn %s): %s: %s", record.get("index"),
                      record.get("conversation_id"), record.get("turn_id"), e.path, e.message)
            return Skipped(int(record.get("index", -1)), e.path, e.message)


class _PadRows:
    """n padding rows of a spec (picklable, for the batcher in worker processes)."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def __call__(self, n: int) -> dict[str, np.ndarray]:
        return self.spec.empty(n)


def make_dataset(source, tokenizer, spec: FeatureSpec, *, batch_size: int, root: str | None = None,
                 shuffle: bool = True, seed: int = 0, num_epochs: int | None = None, shard_index: int = 0,
                 shard_count: int = 1, workers: int = 0, worker_buffer_size: int = 2, read_threads: int = 1,
                 read_buffer: int = 4, drop_remainder: bool = True, max_bad_in_a_row: int = 1000,
                 pack_segments: int = 0):
    """The grain `IterDataset` of batches (each with the `_skipped` report still inside; `DataIterator` takes it
    out). `source`: random access records (`len`, `[i]`); `root`: the dataset dir that record media names are
    relative to (None when the records carry their media bytes). num_epochs None: forever. pack_segments: 0
    one turn per row; n packs up to n turns per row (`SkipBadBatchIterDataset`)."""
    import grain

    ensure_absl_flags()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if len(source) == 0:
        raise ValueError(f"the source {source!r} has no samples")
    # A system prompt too long for seq_len is a config error: say so now, not from inside a worker.
    encode_prompt(tokenizer, [], max_len=spec.seq_len, max_clips=spec.max_clips, media_tokens=spec.media_tokens,
                  system_prompt=spec.system_prompt)
    if read_threads > 1:
        _single_threaded_blas()
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = HostSlice(ds, global_batch=batch_size * shard_count, host_batch=batch_size, host=shard_index)
    if len(ds) == 0:
        raise ValueError(f"host {shard_index} of {shard_count} gets no sample: the split has only {len(source)} "
                         f"samples for a global batch of {batch_size * shard_count}")
    ds = ds.map(SampleTransform(tokenizer, spec, root))
    # Threads overlap file reads with decoding; ffmpeg decodes in its own subprocess, so threads help there too.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer))
    it = SkipBadBatchIterDataset(it, batch_size, drop_remainder=drop_remainder, pad_fn=_PadRows(spec),
                                 max_bad_in_a_row=max_bad_in_a_row, pack_segments=pack_segments)
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=worker_buffer_size),
                            worker_init_fn=_worker_init)
    return it


def _single_threaded_blas() -> None:
    """OpenBLAS's fork handler deadlocks when one thread forks (ffmpeg decoding an mp4) while another is inside a
    multi-threaded BLAS call (the mel filterbank product): with several read threads, BLAS runs single-threaded
    (its products here are small; the threads give the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


# ------------------------------------------------------------------------------------------------ iterator


def _json_state(state: Any) -> Any:
    """grain states through JSON and back: tuples become lists; dict keys that were ints come back as ints."""
    if isinstance(state, dict):
        return {(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k): _json_state(v)
                for k, v in state.items()}
    if isinstance(state, list):
        return [_json_state(v) for v in state]
    return state


class DataIterator:
    """Batches of a grain pipeline, with the bad-sample report taken out and counted, progress logging and
    checkpointable state.

    stats: {batches, samples, skipped, seconds, samples_per_s}. `skipped_samples`: the last 100 `Skipped`.
    on_progress(stats) is called (and a log line written) every `log_every_s` seconds.
    """

    def __init__(self, dataset, *, name: str = "data", log_every_s: float = 60.0,
                 on_progress: Callable[[dict], None] | None = None):
        self._dataset = dataset
        self._it = iter(dataset)
        self.name = name
        self.log_every_s = log_every_s
        self.on_progress = on_progress
        self.batches = self.samples = self.skipped = 0
        self.skipped_samples: list[Skipped] = []
        self._t0 = self._last_log = time.perf_counter()

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        # Plain arrays: a worker's batch arrives in shared memory, released as soon as this copy is made (a
        # batch held past the end of the program would otherwise leak its shared-memory block).
        batch = {k: np.array(v) for k, v in next(self._it).items()}
        skipped = decode_skipped(batch.pop(SKIPPED_KEY))
        for s in skipped:
            log.warning("%s: skipped sample %d: %s: %s", self.name, s.index, s.path, s.message)
        self.skipped += len(skipped)
        self.skipped_samples = (self.skipped_samples + skipped)[-100:]
        self.batches += 1
        self.samples += int((batch["sample_index"] >= 0).sum())
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            stats = self.stats
            log.info("%s: %d batches, %d samples (%.1f samples/s), %d skipped", self.name, stats["batches"],
                     stats["samples"], stats["samples_per_s"], stats["skipped"])
            if self.on_progress is not None:
                self.on_progress(stats)
        return batch

    @property
    def stats(self) -> dict[str, float]:
        seconds = time.perf_counter() - self._t0
        return {"batches": self.batches, "samples": self.samples, "skipped": self.skipped, "seconds": seconds,
                "samples_per_s": self.samples / seconds if seconds > 0 else 0.0}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable: {"grain": grain's iterator state, "batches", "samples", "skipped"}."""
        state = {"grain": self._it.get_state(), "batches": self.batches, "samples": self.samples,
                 "skipped": self.skipped}
        return json.loads(json.dumps(state))  # a plain, detached copy; fails loudly if grain's were not JSON

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(_json_state(state["grain"]))
        self.batches, self.samples, self.skipped = state["batches"], state["samples"], state["skipped"]

    def close(self) -> None:
        """Stops the worker processes (if any)."""
        if self._it is None:
            return
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        # grain's inner thread-prefetch iterators close themselves in __del__; let that happen now, while the
        # interpreter is whole, rather than at exit (where it prints tracebacks).
        self._it = None
        gc.collect()

    def __enter__(self) -> DataIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The `data` config section, resolved (see configs/tiny.py for every key)."""

    root: str
    source: str
    tfds_data_dir: str
    tfds_config: str
    tokenizer: str
    spec: FeatureSpec
    batch_size: int  # global
    shuffle: bool
    seed: int
    num_epochs: int | None
    workers: int
    worker_buffer_size: int
    read_threads: int
    read_buffer: int
    check_media: str
    log_every_s: float
    max_bad_in_a_row: int
    pack_segments: int = 0  # 0: one turn per row; n: up to n turns packed per row

    @classmethod
    def from_config(cls, config) -> PipelineSettings:
        d = config.data
        train = config.get("train", {}) if hasattr(config, "get") else {}
        seq_len = int(d.get("seq_len", 0) or train.get("seq_len", 0))
        batch_size = int(d.get("batch_size", 0) or train.get("batch_size", 0))
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len={seq_len} / data.batch_size={batch_size}: set them (or train.seq_len / "
                             f"train.batch_size) to positive values")

        def mel(g) -> tuple[FeatureConfig, int]:
            return FeatureConfig(sample_rate=int(g.sample_rate), n_fft=int(g.n_fft), hop=int(g.hop),
                                 n_mels=int(g.n_mels), power=float(g.get("power", 2.0)),
                                 fmax=float(g.fmax) if g.get("fmax") else None), int(g.frames)

        def vid(g) -> tuple[FeatureConfig, int]:
            return (FeatureConfig(target_fps=float(g.fps), size=int(g.size), crop=float(g.get("crop", 1.0))),
                    int(g.frames))

        audio, audio_frames = mel(d.audio)
        video, video_frames = vid(d.video)
        reply_audio, reply_audio_frames = mel(d.reply_audio)
        reply_video, reply_video_frames = vid(d.reply_video)
        spec = FeatureSpec(seq_len=seq_len, max_clips=int(d.max_clips), audio=audio, audio_frames=audio_frames,
                           video=video, video_frames=video_frames, reply_audio=reply_audio,
                           reply_audio_frames=reply_audio_frames, reply_video=reply_video,
                           reply_video_frames=reply_video_frames, chain=bool(d.chain),
                           media_tokens=media_slots(d.media_tokens), system_prompt=d.get("system_prompt") or SYSTEM_PROMPT,
                           missing_media=str(d.missing_media),
                           feature_cache_mb=float(d.get("feature_cache_mb", 0) or 0),
                           feature_cache_dir=str(d.get("feature_cache_dir", "") or ""),
                           reply_portrait=_has_face(config) and reply_video_frames > 0, **_reply_symbols(config))
        if d.source not in ("raw", "tfds"):
            raise ValueError(f"data.source={d.source!r}: expected 'raw' or 'tfds'")
        epochs = int(d.num_epochs)
        return cls(root=str(d.root), source=str(d.source), tfds_data_dir=str(d.get("tfds_data_dir") or ""),
                   tfds_config=str(d.get("tfds_config") or "default"), tokenizer=str(d.tokenizer), spec=spec,
                   batch_size=batch_size, shuffle=bool(d.shuffle), seed=int(d.seed),
                   num_epochs=None if epochs <= 0 else epochs, workers=int(d.workers),
                   worker_buffer_size=int(d.worker_buffer_size), read_threads=int(d.read_threads),
                   read_buffer=int(d.read_buffer), check_media=str(d.check_media), log_every_s=float(d.log_every_s),
                   max_bad_in_a_row=int(d.get("max_bad_in_a_row", 1000)),
                   pack_segments=int(d.get("pack_segments", 0) or 0))


def _has_face(config) -> bool:
    e = config.get("empatheia") if hasattr(config, "get") else None
    return bool(e is not None and e.get("face"))


def _reply_symbols(config) -> dict[str, Any]:
    """The speech generator's front end and symbol budget (config.empatheia.speech), when the model has one and the
    gold reply's speech is read (`data.reply_audio.frames > 0`): the symbols go with the reply_audio group, so the
    stages and the evaluation that switch that group off never phonemise a reply."""
    e = config.get("empatheia") if hasattr(config, "get") else None
    speech = (e.get("speech") if e is not None else None) or None
    if not speech or int(config.data.reply_audio.frames) <= 0:
        return {}
    from merg_jax.data.speech_text import resolve

    return {"reply_symbols": resolve(str(speech.get("symbols", "auto"))),
            "reply_symbols_len": int(speech.get("max_tokens", 256))}


def raw_source(root: str | os.PathLike, split: str, *, check_media: str = "exists"):
    """(RecordSource of the split's turns, root) read with `avamerg.read_split`."""
    from merg_jax.data.avamerg import read_split
    from merg_jax.data.pipeline_records import RecordSource, split_records

    s = read_split(root, split, check_media=check_media)
    return RecordSource(split_records(s), s.root), str(s.root)


def load_source(settings: PipelineSettings, split: str):
    """(source, root) for a split, as the settings say: raw files or prepared array_record."""
    if settings.source == "tfds":
        from merg_jax.data import tfds_avamerg

        data_dir = settings.tfds_data_dir or str(pathlib.Path(settings.root) / "tfds")
        return tfds_avamerg.data_source(data_dir, split, config=settings.tfds_config), None
    return raw_source(settings.root, split, check_media=settings.check_media)


def make_iterator(config, split: str, *, tokenizer=None, shard_index: int | None = None,
                  shard_count: int | None = None, shuffle: bool | None = None, num_epochs: int | None | str = "config",
                  drop_remainder: bool = True, workers: int | None = None,
                  on_progress: Callable[[dict], None] | None = None, **spec_overrides) -> DataIterator:
    """The `DataIterator` for `split` of the dataset the config's `data` section names.

    The per-host batch is the global `data.batch_size` (or `train.batch_size`) divided by the shard count (the
    JAX process count unless given). For evaluation pass shuffle=False, num_epochs=1, drop_remainder=False.
    `spec_overrides`: `FeatureSpec` fields to change (prompt_only=True, missing_media="mask": batches to answer).
    """
    settings = PipelineSettings.from_config(config)
    if spec_overrides:
        settings = dataclasses.replace(settings, spec=dataclasses.replace(settings.spec, **spec_overrides))
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if settings.batch_size % shard_count:
        raise ValueError(f"batch size {settings.batch_size} is not divisible by the {shard_count} hosts")
    if tokenizer is None:
        from merg_jax.data.tokenizer import load_tokenizer

        if not settings.tokenizer:
            raise ValueError("data.tokenizer is empty: give a Hugging Face tokenizer dir, or train one with "
                             "`merg-jax train-tokenizer --data DIR --out DIR`")
        tokenizer = load_tokenizer(settings.tokenizer)
    source, root = load_source(settings, split)
    ds = make_dataset(source, tokenizer, settings.spec, batch_size=settings.batch_size // shard_count, root=root,
                      shuffle=settings.shuffle if shuffle is None else shuffle, seed=settings.seed,
                      num_epochs=settings.num_epochs if num_epochs == "config" else num_epochs,
                      shard_index=shard_index, shard_count=shard_count,
                      workers=settings.workers if workers is None else workers,
                      worker_buffer_size=settings.worker_buffer_size, read_threads=settings.read_threads,
                      read_buffer=settings.read_buffer, drop_remainder=drop_remainder,
                      max_bad_in_a_row=settings.max_bad_in_a_row, pack_segments=settings.pack_segments)
    return DataIterator(ds, name=f"data/{split}", log_every_s=settings.log_every_s, on_progress=on_progress)


__all__ = ["DataIterator", "PipelineSettings", "SampleTransform", "ensure_absl_flags", "load_source",
           "make_dataset", "make_iterator", "raw_source"]
