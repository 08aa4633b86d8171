"""The speech generator: a StyleTTS-like acoustic model plus a vocoder, one NNX module.

    gen = SpeechGenerator(cfg, vocab_size=len(SYMBOLS), rngs=nnx.Rngs(0))
    content = gen.content(ids, ids_len)                  # [B, T, content_dim]   (the C^s target, stage b)
    style = gen.style(mel, mel_len)                      # [B, style_dim]        (the S^s target, stage c)
    out = gen.acoustic(content, content_len, style, max_frames=F)   # SpeechFrames: mel [B, F, n_mels], lengths
    wave = gen.vocoder(out.mel)                          # [B, (F − 1)·hop]
    loss, metrics = gen.losses(batch)                    # the `speech` stage (SPEECH_KEYS)

Training aligns symbols to frames by monotonic alignment search, as Glow-TTS: a per-symbol mel mean (`prior`) gives
log p(frame | symbol); MAS picks the best monotonic path; the path's durations teach the duration predictor and
expand the content to frames for the pitch/energy predictor and the mel decoder (teacher-forced with the gold pitch
and energy). The vocoder trains on gold waveform segments (multi-resolution STFT + mel loss). The `style_means`
table (mean training style per emotion and profile) is filled after training by `fill_style_means`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from merg_jax.labels import AGES, EMOTIONS_7, GENDERS, TIMBRES
from merg_jax.models.speech.alignment import monotonic_alignment_search
from merg_jax.models.speech.audio import log_mel, multi_resolution_stft_loss
from merg_jax.models.speech.config import SpeechConfig
from merg_jax.models.speech.content_encoder import ContentEncoder
from merg_jax.models.speech.decoder import MelDecoder
from merg_jax.models.speech.istft_vocoder import IstftVocoder
from merg_jax.models.speech.length_regulator import expand, predicted_durations
from merg_jax.models.speech.prosody import ProsodyPredictor, f0_hz, frame_energy, normalise_f0
from merg_jax.models.speech.style_encoder import MEL_MEAN, MEL_STD, StyleEncoder, split_style

# The batch of the `speech` stage (merg_jax.data.speech_corpus): one utterance per row.
SPEECH_KEYS = ("symbols", "symbols_len", "mel", "mel_len", "f0", "wave_segment", "emotion7", "gender", "age",
               "timbre")
STYLE_TABLE_SHAPE = (len(EMOTIONS_7), len(GENDERS), len(AGES), len(TIMBRES))


class StyleMeans(nnx.Variable):
    """Per-label sums of training style vectors: filled after training, never trained (not an nnx.Param)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpeechFrames:
    mel: Float[Array, "B F M"]
    lengths: Int[Array, "B"]  # frames of each row
    f0_hz: Float[Array, "B F"]
    durations: Int[Array, "B T"]


def _vocoder(cfg: SpeechConfig, rngs: nnx.Rngs):
    if cfg.vocoder == "hifigan":
        from merg_jax.models.speech.hifigan import HifiGan, HifiGanConfig

        if cfg.hop != 256:
            raise ValueError(f"empatheia.speech.vocoder='hifigan' upsamples by 8·8·4 = 256: hop={cfg.hop} must be 256")
        return HifiGan(HifiGanConfig.tiny(model_in_dim=cfg.n_mels, sampling_rate=cfg.sample_rate), rngs=rngs)
    return IstftVocoder(cfg, rngs=rngs)


class SpeechGenerator(nnx.Module):
    def __init__(self, cfg: SpeechConfig, vocab_size: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.content_encoder = ContentEncoder(vocab_size, cfg, rngs=rngs)
        self.prior = nnx.Linear(cfg.content_dim, cfg.n_mels, rngs=rngs)
        self.style_encoder = StyleEncoder(cfg, rngs=rngs)
        self.prosody = ProsodyPredictor(cfg, rngs=rngs)
        self.decoder = MelDecoder(cfg, rngs=rngs)
        self.vocoder = _vocoder(cfg, rngs)
        self.style_sums = StyleMeans(jnp.zeros((*STYLE_TABLE_SHAPE, cfg.style_dim), jnp.float32))
        self.style_counts = StyleMeans(jnp.zeros(STYLE_TABLE_SHAPE, jnp.float32))

    # ---------------------------------------------------------------------------------------- encoders

    def content(self, ids: Int[Array, "B T"], lengths: Int[Array, "B"]) -> Float[Array, "B T C"]:
        return self.content_encoder(ids, lengths)

    def style(self, mel: Float[Array, "B F M"], lengths: Int[Array, "B"]) -> Float[Array, "B S"]:
        return self.style_encoder(mel, lengths)

    # ---------------------------------------------------------------------------------------- synthesis

    def durations(self, content: Float[Array, "B T C"], content_len: Int[Array, "B"], style: Float[Array, "B S"], *,
                  speed: float = 1.0) -> Int[Array, "B T"]:
        """Frames per symbol (≥ 1 for every real one), predicted from the content and the prosodic style."""
        log_dur = self.prosody.durations(content, content_len, split_style(style)[1])
        return predicted_durations(log_dur, content_len, speed=speed)

    def acoustic(self, content: Float[Array, "B T C"], content_len: Int[Array, "B"], style: Float[Array, "B S"], *,
                 max_frames: int, speed: float = 1.0, durations: Int[Array, "B T"] | None = None) -> SpeechFrames:
        """Content + style → mel frames (durations — unless given —, pitch and energy predicted)."""
        acoustic_style, prosodic_style = split_style(style)
        if durations is None:
            durations = self.durations(content, content_len, style, speed=speed)
        frames, n = expand(content, durations, max_frames)
        mask = jnp.arange(max_frames)[None] < n[:, None]
        lf0, voiced_logit, energy = self.prosody.frames(frames, mask, prosodic_style)
        voiced = (voiced_logit > 0) & mask
        mel = self.decoder(frames, lf0, voiced.astype(jnp.float32), energy, mask, acoustic_style)
        return SpeechFrames(mel=mel, lengths=n, f0_hz=f0_hz(lf0, voiced), durations=durations)

    # ---------------------------------------------------------------------------------------- training

    def losses(self, batch: Mapping[str, Any]) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        """The `speech` stage's loss (a sum of equally weighted terms) and its parts; rows with `mel_len == 0` are
        padding."""
        ids, ids_len = batch["symbols"], batch["symbols_len"]
        mel, mel_len = jnp.asarray(batch["mel"], jnp.float32), batch["mel_len"]
        b, f, m = mel.shape
        tok_mask = jnp.arange(ids.shape[1])[None] < ids_len[:, None]
        frame_mask = jnp.arange(f)[None] < mel_len[:, None]
        row = (mel_len > 0).astype(jnp.float32)
        n_frames = jnp.maximum(jnp.sum(frame_mask), 1.0)

        content = self.content(ids, ids_len)
        style = self.style(mel, mel_len)
        acoustic_style, prosodic_style = split_style(style)

        # Alignment: log N(y_f; μ_t, I) up to a constant, on the normalised mel.
        y = (mel - MEL_MEAN) / MEL_STD
        mu = self.prior(content)  # [B, T, M]
        log_p = -0.5 * (jnp.sum(y * y, -1)[:, None, :] - 2 * jnp.einsum("btm,bfm->btf", mu, y)
                        + jnp.sum(mu * mu, -1)[..., None])
        align = monotonic_alignment_search(jax.lax.stop_gradient(log_p), ids_len, mel_len)  # [B, T, F]
        durations = jnp.sum(align, axis=-1)  # [B, T]
        prior_loss = 0.5 * jnp.sum(jnp.square(y - jnp.einsum("btf,btm->bfm", align, mu)) * frame_mask[..., None])
        prior_loss = prior_loss / (n_frames * m)

        log_dur = self.prosody.durations(jax.lax.stop_gradient(content), ids_len, prosodic_style)
        dur_err = jnp.square(log_dur - jnp.log(jnp.maximum(durations, 1.0)))
        dur_loss = jnp.sum(jnp.where(tok_mask, dur_err, 0.0)) / jnp.maximum(jnp.sum(tok_mask), 1.0)

        frames = jnp.einsum("btf,btc->bfc", align, content)
        lf0_gold, voiced_gold = normalise_f0(jnp.asarray(batch["f0"], jnp.float32))
        voiced_gold = voiced_gold & frame_mask
        energy_gold = frame_energy(mel)
        lf0, voiced_logit, energy = self.prosody.frames(jax.lax.stop_gradient(frames), frame_mask, prosodic_style)
        n_voiced = jnp.maximum(jnp.sum(voiced_gold), 1.0)
        f0_loss = jnp.sum(jnp.where(voiced_gold, jnp.square(lf0 - lf0_gold), 0.0)) / n_voiced
        voiced_loss = jnp.sum(jnp.where(frame_mask, optax.sigmoid_binary_cross_entropy(
            voiced_logit, voiced_gold.astype(jnp.float32)), 0.0)) / n_frames
        energy_loss = jnp.sum(jnp.where(frame_mask, jnp.square(energy - energy_gold), 0.0)) / n_frames

        mel_pred = self.decoder(frames, lf0_gold, voiced_gold.astype(jnp.float32), energy_gold, frame_mask,
                                acoustic_style)
        mel_loss = jnp.sum(jnp.abs(mel_pred - mel) * frame_mask[..., None]) / (n_frames * m) / MEL_STD

        voc_stft, voc_mel = self.vocoder_losses(jnp.asarray(batch["wave_segment"], jnp.float32), row)
        metrics = {"prior_loss": prior_loss, "duration_loss": dur_loss, "f0_loss": f0_loss,
                   "voiced_loss": voiced_loss, "energy_loss": energy_loss, "mel_loss": mel_loss,
                   "vocoder_stft_loss": voc_stft, "vocoder_mel_loss": voc_mel}
        total = prior_loss + dur_loss + f0_loss + voiced_loss + energy_loss + mel_loss + voc_stft + voc_mel
        return total, metrics

    def vocoder_losses(self, wave: Float[Array, "B S"], row: Float[Array, "B"]
                       ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """(multi-resolution STFT loss, mel L1 / MEL_STD) of the vocoder rebuilding gold segments from their mel."""
        mel = log_mel(wave, self.cfg)  # [B, S // hop + 1, M]
        pred = self.vocoder(mel)[:, :wave.shape[1]]
        keep = row[:, None]
        stft_loss = multi_resolution_stft_loss(pred * keep, wave * keep)
        mel_loss = jnp.sum(jnp.abs(log_mel(pred, self.cfg) - mel) * row[:, None, None]) / (
            jnp.maximum(jnp.sum(row), 1.0) * mel.shape[1] * mel.shape[2]) / MEL_STD
        return stft_loss, mel_loss

    # ---------------------------------------------------------------------------------------- style labels

    def add_style_statistics(self, style: Float[Array, "B S"], labels: Mapping[str, Any]) -> None:
        """Adds styles to the per-label sums (`labels`: emotion7, gender, age, timbre indices; -1 rows skipped)."""
        idx = [np.asarray(labels[k]) for k in ("emotion7", "gender", "age", "timbre")]
        ok = np.all([i >= 0 for i in idx], axis=0)
        style = np.asarray(style, np.float32)[ok]
        idx = tuple(i[ok] for i in idx)
        sums = np.array(self.style_sums[...])
        counts = np.array(self.style_counts[...])
        np.add.at(sums, idx, style)
        np.add.at(counts, idx, 1.0)
        self.style_sums[...] = jnp.asarray(sums)
        self.style_counts[...] = jnp.asarray(counts)

    def style_for(self, emotion7: int, gender: int | None = None, age: int | None = None,
                  timbre: int | None = None) -> np.ndarray:
        """The mean training style of an emotion and profile, [style_dim]; a profile part that is None, or a label
        combination never seen in training, backs off to the mean over the unspecified/unseen parts."""
        sums, counts = np.asarray(self.style_sums[...]), np.asarray(self.style_counts[...])
        if counts.sum() == 0:
            raise ValueError("this speech generator has no style statistics (train the `speech` stage to the end, "
                             "or give a reference clip)")
        parts = [emotion7, gender, age, timbre]
        for keep in range(4, -1, -1):  # drop the most specific labels first: timbre, age, gender, emotion
            sel = tuple(p if (i < keep and p is not None) else slice(None) for i, p in enumerate(parts))
            n = counts[sel].sum()
            if n > 0:
                return (sums[sel].reshape(-1, sums.shape[-1]).sum(0) / n).astype(np.float32)
        raise AssertionError("unreachable: counts.sum() > 0")

