"""A tiny Empatheia config and synthetic batches shaped like the data pipeline's, shared by the model tests."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from merg_jax.models.disentangler import DisentanglerConfig
from merg_jax.models.empatheia import EmpatheiaConfig
from merg_jax.models.encoders import AudioConfig, VisionConfig
from merg_jax.models.hidden_features import HiddenFeatureConfig, HiddenFeatures
from merg_jax.models.projectors import ProjectionConfig
from merg_jax.models.synchronizer import SynchronizerConfig
from tests.llm_testing import tiny_config

RESPONSE, RESPONSE_END, AUD, VID = 5, 6, 7, 8  # token ids the synthetic batches use


def tiny_empatheia_config(*, tokens_per_clip: int = 1, source: str = "reply_span", **llm) -> EmpatheiaConfig:
    llm_cfg = tiny_config(**{"lora_rank": 2, **llm})
    d = llm_cfg.hidden_size
    small = dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, layer_norm_eps=1e-6,
                 hidden_act="gelu", normalize_embedding=True, projection_dim=24)
    vision = VisionConfig(**small, image_size=16, patch_size=8, tubelet_size=2)
    audio = AudioConfig(**small, patch_size=8, num_mel_bins=16, max_length=16, frequency_stride=8, time_stride=8,
                        patch_bias=False, patch_norm=True, num_special_tokens=1, attention_bias_kv=True,
                        embedding_scale=20.0)
    projection = (ProjectionConfig() if tokens_per_clip == 1 else
                  ProjectionConfig(kind="resampler", num_tokens=tokens_per_clip, hidden_size=16, num_layers=1,
                                   num_heads=2))
    head = dict(llm_dim=d, hidden_size=16, intermediate_size=32, num_heads=2, encoder_layers=1, decoder_layers=1)
    return EmpatheiaConfig(
        llm=llm_cfg, vision=vision, audio=audio, projection=projection, audio_windows=2,
        features=HiddenFeatureConfig(source=source, reply_len=8, num_signal_tokens=2, response_id=RESPONSE,
                                     response_end_id=RESPONSE_END),
        synchronizer=SynchronizerConfig(**head, speech_content_dim=8, speech_content_len=12, video_content_dim=8,
                                        video_content_len=10),
        disentangler=DisentanglerConfig(**head, speech_style_dim=8, video_style_dim=8))


def tiny_batch(cfg: EmpatheiaConfig, *, batch: int = 2, length: int = 32, clips: int = 2, seed: int = 0,
               pad_last_row: int = 4) -> dict[str, np.ndarray]:
    """Rows like the pipeline's: text, then per clip N `<Aud>` and N `<Vid>` slots, a `<response>` reply
    `</response>` target; the last row ends with `pad_last_row` padding positions. The second clip of row 0
    has no audio and 1 valid video frame of 4."""
    rng = np.random.default_rng(seed)
    n = cfg.projection.num_tokens
    tokens = rng.integers(10, cfg.llm.vocab_size, (batch, length)).astype(np.int32)
    kind = np.zeros((batch, length), np.int32)
    clip = np.full((batch, length), -1, np.int32)
    at = 2
    for c in range(clips):
        for k, tid in ((1, AUD), (2, VID)):
            kind[:, at:at + n], clip[:, at:at + n], tokens[:, at:at + n] = k, c, tid
            at += n
        at += 1  # a text token between clips
    if at + 6 > length - pad_last_row:
        raise ValueError("tiny_batch: length too short for the slots and a reply")
    tokens[:, at + 1] = RESPONSE
    tokens[:, length - pad_last_row - 2] = RESPONSE_END
    segment = np.ones((batch, length), np.int32)
    if pad_last_row:
        segment[-1, -pad_last_row:] = 0
        tokens[-1, -pad_last_row:] = 0
    positions = np.where(segment > 0, np.arange(length)[None], 0).astype(np.int32)
    a, v = cfg.audio, cfg.vision
    audio_present = np.ones((batch, clips), bool)
    audio_present[0, -1] = False
    video_len = np.full((batch, clips), 4, np.int32)
    video_len[0, -1] = 1
    return dict(
        tokens=tokens, segment_ids=segment, positions=positions, media_kind=kind, media_clip=clip,
        clip_utterance=np.tile(np.arange(1, clips + 1, dtype=np.int32), (batch, 1)),
        emotion7=rng.integers(0, 7, (batch,)).astype(np.int32),
        audio_mel=rng.normal(size=(batch, clips, a.max_length + 7, a.num_mel_bins)).astype(np.float32),
        audio_len=rng.integers(a.max_length // 2, a.max_length + 7, (batch, clips)).astype(np.int32),
        audio_mask=audio_present,
        video_frames=rng.integers(0, 256, (batch, clips, 4, v.image_size, v.image_size, 3)).astype(np.uint8),
        video_len=video_len, video_mask=np.ones((batch, clips), bool))


def with_features(cfg: EmpatheiaConfig, **kw) -> EmpatheiaConfig:
    return dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, **kw))


def random_features(llm_dim: int, b: int = 2, r: int = 6, k: int = 3, *, signal: bool = True, seed: int = 0,
                    video_left_padded: bool = False) -> HiddenFeatures:
    """Random r^t with per-row lengths (r, r // 2, ...); with `signal`, r^s and r^v with their own lengths (r^v
    padded on the left when `video_left_padded`)."""
    rng = np.random.default_rng(seed)

    def x(n):
        return jnp.asarray(rng.standard_normal((b, n, llm_dim)).astype(np.float32))

    def lens(n):  # row i keeps max(n - i * (n // 2), 1) positions
        return jnp.asarray(np.arange(n)[None, :] < np.maximum(n - np.arange(b)[:, None] * (n // 2), 1))

    if not signal:
        return HiddenFeatures(text=x(r), text_mask=lens(r))
    video_mask = lens(k)[:, ::-1] if video_left_padded else lens(k)
    return HiddenFeatures(text=x(r), text_mask=lens(r), speech=x(k), speech_mask=lens(k), video=x(k),
                          video_mask=video_mask)


def pad_features(f: HiddenFeatures, n: int, *, left=(), seed: int = 1) -> HiddenFeatures:
    """`f` with `n` positions of large random values (mask False) added to every source: appended, or prepended
    for the sources named in `left`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("text", "speech", "video"):
        x, m = getattr(f, name), getattr(f, f"{name}_mask")
        if x is None:
            continue
        junk = jnp.asarray(rng.standard_normal((x.shape[0], n, x.shape[2])).astype(np.float32) * 10)
        no = jnp.zeros((x.shape[0], n), bool)
        first = name in left
        out[name] = jnp.concatenate([junk, x] if first else [x, junk], axis=1)
        out[f"{name}_mask"] = jnp.concatenate([no, m] if first else [m, no], axis=1)
    return HiddenFeatures(**out)
