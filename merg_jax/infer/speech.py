"""Speech synthesis with the trained speech generator (`Empatheia.speech`), any length of text.

    synth = Synthesizer(model.speech)
    style = synth.style_from_reference("ref.wav")                    # or style_from_label("happy", "female", ...)
    wave = synth.speak("Any text. As long as you like.", style)     # float32 [samples] at synth.sample_rate
    wave = synth.speak_content(content, style)                      # from an external content sequence (C^s)
    synthesize(model.speech, text=..., reference=... | style=... | emotion=..., gender=..., age=..., timbre=...)

Text is split at sentence boundaries (`speech_text.split_sentences`); the pieces are synthesised as one batch and
joined with a short pause, each piece faded in and out over a few milliseconds so no join clicks. Every jitted
function runs at fixed shapes — `max_tokens` symbols, pieces padded to a power of two, and the smallest of
`FRAME_BUCKETS` frame budgets (max_frames, max_frames / 2, ...) that holds the predicted durations — so a short
reply costs less than a long one and, once each budget has been used, nothing compiles again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax import labels

log = logging.getLogger(__name__)

FADE_S = 0.005  # raised-cosine fade at each piece's ends
PAUSE_S = 0.12  # silence between sentences


class SpeechError(ValueError):
    """Bad input to synthesis (empty text, an unreadable reference, an unknown label): a one-line message."""


def _label(value: str | None, names, what: str) -> int | None:
    if value is None:
        return None
    if value not in names:
        raise SpeechError(f"{what} {value!r} is not one of {list(names)}")
    return names.index(value)


def griffin_lim(mel: np.ndarray, cfg, n_iter: int = 32) -> np.ndarray:
    """A log-mel `[frames, n_mels]` → waveform without a neural vocoder: magnitudes through the mel basis's
    pseudo-inverse, phase by Griffin-Lim (librosa). The fallback before a vocoder is trained."""
    import librosa

    from merg_jax.models.speech.audio import mel_basis

    basis = mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))  # [K, M]
    magnitude = np.maximum(np.exp(np.asarray(mel, np.float64)) @ np.linalg.pinv(basis), 0.0)  # [frames, K]
    return librosa.griffinlim(magnitude.T, n_iter=n_iter, hop_length=cfg.hop, win_length=cfg.n_fft,
                              n_fft=cfg.n_fft, window="hann", center=True, init=None,
                              length=(mel.shape[0] - 1) * cfg.hop).astype(np.float32)


class Synthesizer:
    """`vocoder="neural"` (the generator's trained vocoder) or `"griffin_lim"` (`griffin_lim`: the fallback before
    the vocoder is trained)."""

    def __init__(self, generator, *, vocoder: str = "neural"):
        from merg_jax.data.speech_text import TextFrontEnd

        if generator is None:
            raise SpeechError("this model has no speech generator (config.empatheia.speech)")
        if vocoder not in ("neural", "griffin_lim"):
            raise SpeechError(f"vocoder {vocoder!r}: expected 'neural' or 'griffin_lim'")
        self.generator = generator
        self.vocoder = vocoder
        self.cfg = cfg = generator.cfg
        self.frontend = TextFrontEnd(cfg.symbols)
        self.sample_rate = cfg.sample_rate
        graphdef, state = nnx.split(generator)

        @jax.jit
        def durations(state, content, content_len, style, speed):
            return nnx.merge(graphdef, state).durations(content, content_len, style, speed=speed)

        @functools.partial(jax.jit, static_argnames="max_frames")
        def acoustic_wave(state, content, content_len, style, durations, max_frames):
            gen = nnx.merge(graphdef, state)
            out = gen.acoustic(content, content_len, style, max_frames=max_frames, durations=durations)
            return (gen.vocoder(out.mel) if vocoder == "neural" else out.mel), out.lengths

        @jax.jit
        def encode(state, ids, ids_len):
            return nnx.merge(graphdef, state).content(ids, ids_len)

        @jax.jit
        def style(state, mel, mel_len):
            return nnx.merge(graphdef, state).style(mel, mel_len)

        self._state = state
        self._durations, self._acoustic_wave, self._encode, self._style = durations, acoustic_wave, encode, style

    # -------------------------------------------------------------------------------------------- style

    def style_from_mel(self, mel: np.ndarray) -> np.ndarray:
        """[frames, n_mels] log-mel → style [style_dim] (frames beyond max_frames are not read)."""
        f = self.cfg.max_frames
        n = min(mel.shape[0], f)
        padded = np.zeros((1, f, self.cfg.n_mels), np.float32)
        padded[0, :n] = mel[:n]
        return np.asarray(self._style(self._state, padded, np.asarray([n], np.int32)))[0]

    def style_from_reference(self, path: str) -> np.ndarray:
        from merg_jax.data.speech_corpus import read_speech

        try:
            wave = read_speech(str(path), self.sample_rate)
        except Exception as e:  # noqa: BLE001 - any decoder failure is the user's file, said in one line
            raise SpeechError(f"--reference {path}: cannot read it as audio ({type(e).__name__}: {e})") from None
        if wave.size < self.cfg.hop * 4 or not np.any(np.abs(wave) > 1e-4):
            raise SpeechError(f"--reference {path}: too short or silent to take a style from")
        return self.style_from_mel(self.mel(wave))

    def mel(self, wave: np.ndarray) -> np.ndarray:
        from merg_jax.data.speech_corpus import speech_mel

        return speech_mel(wave, self.cfg)

    def style_from_label(self, emotion: str, gender: str | None = None, age: str | None = None,
                         timbre: str | None = None) -> np.ndarray:
        """The mean training style of that emotion (7 multimodal labels, or one of the 32 mapped to them) and
        profile; parts left None (or never seen with the others) are averaged over."""
        if emotion in labels.ED_TO_MULTIMODAL and emotion not in labels.EMOTIONS_7:
            emotion = labels.ED_TO_MULTIMODAL[emotion]
        e = _label(emotion, labels.EMOTIONS_7, "--emotion")
        try:
            return self.generator.style_for(e, _label(gender, labels.GENDERS, "--gender"),
                                            _label(age, labels.AGES, "--age"),
                                            _label(timbre, labels.TIMBRES, "--timbre"))
        except ValueError as err:
            raise SpeechError(str(err)) from None

    # -------------------------------------------------------------------------------------------- speech

    def speak(self, text: str, style: np.ndarray, *, speed: float = 1.0) -> np.ndarray:
        """Text of any length → float32 waveform."""
        from merg_jax.data.speech_text import split_sentences

        if not text or not text.strip():
            raise SpeechError("empty text: nothing to say")
        pieces = split_sentences(text, max_chars=self.cfg.max_tokens // 2)
        ids = []
        for p in pieces:
            x = self.frontend.encode(p)[: self.cfg.max_tokens]
            if len(x):
                ids.append(x)
        if not ids:
            raise SpeechError(f"text {text[:40]!r}: no speakable symbols")
        n = 1 << (len(ids) - 1).bit_length()
        batch = np.zeros((n, self.cfg.max_tokens), np.int32)
        lengths = np.zeros(n, np.int32)
        for i, x in enumerate(ids):
            batch[i, :len(x)] = x
            lengths[i] = len(x)
        lengths[len(ids):] = 1  # padding pieces: one symbol, cheap, discarded
        content = self._encode(self._state, batch, lengths)
        waves = self._waves(content, lengths, style, speed)
        return join_pieces(waves[:len(ids)], self.sample_rate)

    def speak_content(self, content: np.ndarray, style: np.ndarray, *, length: int | None = None,
                      speed: float = 1.0) -> np.ndarray:
        """An external content sequence [T, content_dim] (C^s; `length` valid rows) → float32 waveform."""
        content = np.asarray(content, np.float32)
        t = min(int(length if length is not None else content.shape[0]), self.cfg.max_tokens)
        if t < 1:
            raise SpeechError("the content sequence is empty (length 0)")
        padded = np.zeros((1, self.cfg.max_tokens, content.shape[-1]), np.float32)
        padded[0, :t] = content[:t]
        return join_pieces(self._waves(padded, np.asarray([t], np.int32), style, speed), self.sample_rate)

    def _waves(self, content, lengths, style, speed) -> list[np.ndarray]:
        style = jnp.asarray(np.broadcast_to(np.asarray(style, np.float32), (content.shape[0], self.cfg.style_dim)))
        content, lengths = jnp.asarray(content), jnp.asarray(lengths)
        durations = self._durations(self._state, content, lengths, style, jnp.float32(speed))
        need = int(np.asarray(durations).sum(1).max())
        # The smallest of a few frame budgets that holds the longest piece: a short reply costs less, and at most
        # FRAME_BUCKETS compilations happen.
        size = next((b for b in frame_buckets(self.cfg.max_frames) if b >= need), self.cfg.max_frames)
        wave, frames = jax.device_get(self._acoustic_wave(self._state, content, lengths, style, durations,
                                                          max_frames=size))
        if np.any(frames >= self.cfg.max_frames):
            log.warning("a piece reached empatheia.speech.max_frames=%d frames and was cut", self.cfg.max_frames)
        if self.vocoder == "griffin_lim":  # `wave` holds the mel frames
            return [griffin_lim(m[: max(1, int(f))], self.cfg) for m, f in zip(wave, frames)]
        return [w[: max(0, int(f) - 1) * self.cfg.hop] for w, f in zip(wave, frames)]


FRAME_BUCKETS = 4


def frame_buckets(max_frames: int) -> tuple[int, ...]:
    """Frame budgets of synthesis: max_frames / 2^k for k < FRAME_BUCKETS, rounded up to 16, ascending."""
    return tuple(sorted({-(-max_frames // (2 ** k) // 16) * 16 for k in range(FRAME_BUCKETS)} - {0}))


def write_wav(path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM, written to a temporary name and renamed: a crash never leaves half a file."""
    import pathlib

    import soundfile as sf

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(np.asarray(wave, np.float32), -1.0, 1.0), int(sample_rate), subtype="PCM_16",
             format="WAV")
    tmp.replace(path)


def join_pieces(waves: list[np.ndarray], sample_rate: int) -> np.ndarray:
    """Pieces faded in/out over FADE_S and joined with PAUSE_S of silence: no step at any join."""
    fade = max(1, int(FADE_S * sample_rate))
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)).astype(np.float32)
    pause = np.zeros(int(PAUSE_S * sample_rate), np.float32)
    out = []
    for i, w in enumerate(waves):
        w = np.asarray(w, np.float32).copy()
        k = min(fade, len(w) // 2)
        if k:
            w[:k] *= ramp[:k]
            w[-k:] *= ramp[:k][::-1]
        if i:
            out.append(pause)
        out.append(w)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def synthesize(generator, *, text: str | None = None, content: np.ndarray | None = None,
               content_length: int | None = None, style: np.ndarray | None = None, reference: str | None = None,
               emotion: str | None = None, gender: str | None = None, age: str | None = None,
               timbre: str | None = None, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """(waveform float32, sample rate). Content: `text` or `content` (C^s); style: `style` (S^s), `reference` (a wav
    path) or `emotion` (+ optional gender, age, timbre). One call, one `Synthesizer` (its programs compile on
    first use): to speak many times, keep a `Synthesizer`."""
    synth = Synthesizer(generator)
    if style is None:
        if reference is not None:
            style = synth.style_from_reference(reference)
        elif emotion is not None:
            style = synth.style_from_label(emotion, gender, age, timbre)
        else:
            raise SpeechError("give a style: a reference clip, a style vector or an emotion")
    if content is not None:
        return synth.speak_content(content, style, length=content_length, speed=speed), synth.sample_rate
    if text is None:
        raise SpeechError("give the text (or a content sequence) to speak")
    return synth.speak(text, style, speed=speed), synth.sample_rate


def fill_style_means(generator, config, emit: Callable[[str], None] = log.info) -> None:
    """Fills the generator's per-label style table from every training utterance (one pass, in order)."""
    from merg_jax.data.speech_corpus import make_speech_iterator

    graphdef, state = nnx.split(generator)
    style_fn = jax.jit(lambda st, mel, n: nnx.merge(graphdef, st).style(mel, n))
    generator.style_sums[...] = jnp.zeros_like(generator.style_sums[...])
    generator.style_counts[...] = jnp.zeros_like(generator.style_counts[...])
    rows = 0
    with make_speech_iterator(config, "train", shuffle=False, num_epochs=1, drop_remainder=False, workers=0) as it:
        for batch in it:
            keep = batch["sample_index"] >= 0
            style = np.asarray(style_fn(state, batch["mel"], np.maximum(batch["mel_len"], 1)))
            generator.add_style_statistics(style[keep], {k: batch[k][keep] for k in
                                                         ("emotion7", "gender", "age", "timbre")})
            rows += int(keep.sum())
    emit(f"speech: style table from {rows} training utterances "
         f"({int(np.count_nonzero(np.asarray(generator.style_counts[...])))} label combinations)")
