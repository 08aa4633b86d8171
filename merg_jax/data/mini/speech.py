"""AvaMERG-mini speech: every utterance spoken by espeak-ng in a voice that follows the speaker's profile and
emotion, as 16 kHz mono audio.

Voice design (`voice_for`):
- identity: an espeak-ng variant per (age, gender), picked among a few by the avatar ID, so one person keeps one
  voice; children use the higher-formant female variants for both sexes (pre-pubertal voices).
- pitch (-p, 0-99): a base per (age, gender) plus +-10 for a high/low timbre.
- rate (-s, words per minute): per age.
- emotion: pitch shift, rate factor, pitch range (SSML prosody range, 0-100) and amplitude (-a), scaled by
  `intensity` (1 = full, 0 = neutral); e.g. sad is low, slow, flat and soft, surprised high with a wide range.

espeak-ng writes 22.05 kHz PCM16; it is resampled to 16 kHz with a polyphase filter (exact 320/441 ratio).
When espeak-ng is absent (or `engine="formant"`), a built-in formant synthesiser speaks instead
(`formant_speech`): a glottal pulse train with a declining, accented pitch contour, through cascaded
resonators at vowel formants, syllable by syllable from the spelling, with noise for fricatives. It sounds
robotic but it is voiced speech with the right pitch, timing and vowel formants. Both engines are
deterministic: the same text and settings give the same samples.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from merg_jax.data import labels

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
ENGINES = ("auto", "espeak", "formant")

# (age, gender) -> (espeak-ng variants, base pitch 0-99). Measured F0 at pitch 50: m* ~100 Hz, f* ~200 Hz.
_VARIANTS = {
    ("child", "male"): (("f4", "f2"), 76),
    ("child", "female"): (("f5", "f3"), 84),
    ("young", "male"): (("m3", "m2", "m5"), 52),
    ("young", "female"): (("f3", "f2", "f5"), 55),
    ("middle-aged", "male"): (("m6", "m7", "m2"), 46),
    ("middle-aged", "female"): (("f2", "f4", "f3"), 45),
    ("elderly", "male"): (("m1", "m8"), 50),  # older men's F0 rises again
    ("elderly", "female"): (("f1", "f4"), 40),
}
_TIMBRE_PITCH = {"high": 10, "mid": 0, "low": -10}
_AGE_RATE = {"child": 160, "young": 180, "middle-aged": 172, "elderly": 152}
# emotion -> (pitch shift, rate factor, pitch range 0-100, amplitude); neutral is (0, 1.0, 50, 100).
_EMOTION = {
    "neutral": (0, 1.0, 50, 100),
    "sad": (-6, 0.84, 20, 75),
    "happy": (8, 1.08, 85, 112),
    "angry": (3, 1.12, 75, 135),
    "surprised": (12, 1.0, 100, 115),
    "fear": (10, 1.15, 35, 85),
    "contempt": (-5, 0.9, 30, 95),
    "disgusted": (-4, 0.88, 45, 100),
}


@dataclasses.dataclass(frozen=True)
class Voice:
    """espeak-ng settings of one utterance (the formant fallback reads the same fields)."""

    variant: str  # espeak-ng variant, e.g. "m3" (voice "en-us+m3")
    pitch: int  # 0-99
    rate: int  # words per minute
    pitch_range: int  # 0-100
    amplitude: int  # 0-200
    gender: str
    age: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def voice_for(age: str, gender: str, timbre: str, emotion: str, *, avatar_id: int = 0,
              intensity: float = 1.0) -> Voice:
    """The voice of a person (profile + avatar ID) speaking with `emotion` ("neutral" or one of EMOTIONS_7)."""
    labels.age_index(age), labels.gender_index(gender), labels.timbre_index(timbre)
    if emotion not in _EMOTION:
        raise ValueError(f"emotion: {emotion!r} is not 'neutral' or one of {list(labels.EMOTIONS_7)}")
    variants, base = _VARIANTS[(age, gender)]
    d_pitch, rate_factor, pitch_range, amplitude = _EMOTION[emotion]
    return Voice(
        variant=variants[labels.avatar_index(avatar_id) % len(variants)],
        pitch=int(np.clip(round(base + _TIMBRE_PITCH[timbre] + intensity * d_pitch), 0, 99)),
        rate=int(round(_AGE_RATE[age] * rate_factor ** intensity)),
        pitch_range=int(round(50 + intensity * (pitch_range - 50))),
        amplitude=int(round(100 + intensity * (amplitude - 100))),
        gender=gender, age=age)


@functools.cache
def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


_warned = False


def resolve_engine(engine: str = "auto") -> str:
    """"espeak" or "formant"; "auto" falls back to the formant synthesiser (warning once) without espeak-ng."""
    global _warned
    if engine not in ENGINES:
        raise ValueError(f"speech engine: {engine!r} is not one of {list(ENGINES)}")
    if engine == "espeak" and espeak_path() is None:
        raise RuntimeError("speech engine 'espeak': espeak-ng is not installed (apt-get install espeak-ng)")
    if engine == "auto":
        if espeak_path() is not None:
            return "espeak"
        if not _warned:
            warnings.warn("espeak-ng not found: AvaMERG-mini speech uses the built-in formant synthesiser "
                          "(robotic); install espeak-ng for natural speech", stacklevel=2)
            _warned = True
        return "formant"
    return engine


def synthesize(text: str, voice: Voice, *, engine: str = "auto", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speaks `text`. Returns float32 mono [T] at `sample_rate`, peak <= 1."""
    if not text.strip():
        raise ValueError("synthesize: empty text")
    if resolve_engine(engine) == "espeak":
        wave, sr = espeak(text, voice)
    else:
        wave, sr = formant_speech(text, voice, sample_rate=sample_rate), sample_rate
    return resample(wave, sr, sample_rate)


def _ssml(text: str, voice: Voice) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<speak><prosody range="{voice.pitch_range}">{escaped}</prosody></speak>'


def espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform (float32 [T]) and its sample rate (22050)."""
    exe = espeak_path()
    if exe is None:
        raise RuntimeError("espeak-ng is not installed")
    cmd = [exe, "-m", "-v", f"en-us+{voice.variant}", "-p", str(voice.pitch), "-s", str(voice.rate),
           "-a", str(voice.amplitude), "--stdout", _ssml(text, voice)]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}) on {text!r}: {proc.stderr.decode(errors='replace')}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return wave.reshape(-1), int(sr)


def resample(wave: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio target/sr (deterministic), peak-limited to 1."""
    wave = np.asarray(wave, np.float32)
    if sr != target:
        g = math.gcd(sr, target)
        wave = signal.resample_poly(wave.astype(np.float64), target // g, sr // g).astype(np.float32)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave / peak * 0.99 if peak > 0.99 else wave


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Writes mono PCM16 atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(wave, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, pcm, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------------------
# Formant synthesiser (fallback).

# Vowel formants (F1, F2, F3) in Hz of an adult male (Peterson & Barney 1952; Hillenbrand et al. 1995).
VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "i": (270, 2290, 3010),  # beet
    "I": (390, 1990, 2550),  # bit
    "e": (530, 1840, 2480),  # bet
    "ae": (660, 1720, 2410),  # bat
    "a": (730, 1090, 2440),  # father
    "o": (570, 840, 2410),  # bought
    "U": (440, 1020, 2240),  # book
    "u": (300, 870, 2240),  # boot
    "@": (500, 1500, 2500),  # schwa
}
_BANDWIDTHS = (80.0, 100.0, 140.0)
# Spelling -> vowel (longest match first); single letters are the short vowels.
_VOWEL_SPELLINGS = (("ee", "i"), ("ea", "i"), ("ie", "i"), ("oo", "u"), ("ou", "a"), ("ow", "a"), ("oa", "o"),
                    ("ai", "e"), ("ay", "e"), ("ey", "e"), ("au", "o"), ("aw", "o"), ("oi", "o"), ("oy", "o"),
                    ("a", "ae"), ("e", "e"), ("i", "I"), ("o", "o"), ("u", "U"), ("y", "I"))
_FRICATIVES = set("sfhzvcxjqk") | {"sh", "ch", "th"}
_STOPS = set("ptkbdg")
_SONORANTS = set("mnlrwy")


def _formant_scale(age: str, gender: str) -> float:
    """Vocal tracts are shorter for women and children: formants scale up (Peterson & Barney ratios)."""
    if age == "child":
        return 1.3
    return 1.17 if gender == "female" else 1.0


def _pitch_hz(voice: Voice) -> float:
    """F0 of espeak-ng's male voices at the same pitch setting (~70 Hz at 0, ~170 Hz at 99), an octave up for
    the female and child variants — so both engines put a voice at the same height."""
    f0 = 70.0 * (170.0 / 70.0) ** (voice.pitch / 99.0)
    return f0 * (1.9 if voice.variant.startswith("f") else 1.0)


def _segments(text: str) -> list[tuple[str, str | None, float]]:
    """Text -> [(kind, vowel, relative duration)], kind in vowel|sonorant|fricative|stop|pause."""
    segs: list[tuple[str, str | None, float]] = []
    for token in re.findall(r"[a-z]+|[.,!?;:]", text.lower()):
        if token in ".!?":
            segs.append(("pause", None, 3.0))
            continue
        if token in ",;:":
            segs.append(("pause", None, 1.8))
            continue
        i = 0
        while i < len(token):
            for spelling, vowel in _VOWEL_SPELLINGS:
                if token.startswith(spelling, i):
                    # a final silent "e" is dropped, as in "make"
                    if not (spelling == "e" and i == len(token) - 1 and len(token) > 2):
                        segs.append(("vowel", vowel, 1.0 if len(spelling) == 1 else 1.4))
                    i += len(spelling)
                    break
            else:
                two = token[i:i + 2]
                if two in _FRICATIVES:
                    segs.append(("fricative", None, 0.5))
                    i += 2
                    continue
                ch = token[i]
                kind = "stop" if ch in _STOPS else "fricative" if ch in _FRICATIVES else "sonorant"
                segs.append((kind, None, {"stop": 0.35, "fricative": 0.45, "sonorant": 0.4}[kind]))
                i += 1
        segs.append(("pause", None, 0.25))  # word boundary
    return segs


def _resonate(x: np.ndarray, freqs: np.ndarray, bandwidth: float, sr: int, block: int) -> np.ndarray:
    """A 2nd-order resonator (unit gain at DC) whose centre frequency follows `freqs` (one value per block)."""
    y = np.empty_like(x)
    zi = np.zeros(2)
    r = math.exp(-math.pi * bandwidth / sr)
    for b, f in enumerate(freqs):
        s = slice(b * block, (b + 1) * block)
        a1, a2 = -2 * r * math.cos(2 * math.pi * f / sr), r * r
        gain = 1 + a1 + a2
        y[s], zi = signal.lfilter([gain], [1.0, a1, a2], x[s], zi=zi)
    return y


def formant_vowel(vowel: str, f0: float, duration: float, *, sample_rate: int = SAMPLE_RATE,
                  formant_scale: float = 1.0) -> np.ndarray:
    """A sustained vowel (float32 [duration*sr]) from the formant synthesiser, for checks and demos."""
    f1, f2, f3 = (formant_scale * f for f in VOWEL_FORMANTS[vowel])
    n = int(duration * sample_rate)
    block = sample_rate // 200
    nb = -(-n // block)
    source = _glottal_source(np.full(n, f0), sample_rate, np.random.default_rng(0))
    out = source
    for f, bw in zip((f1, f2, f3), _BANDWIDTHS):
        out = _resonate(out, np.full(nb, f), bw * formant_scale, sample_rate, block)
    out = out[:n]
    return (0.5 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def _glottal_source(f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Rosenberg glottal pulses (opening 40 %, closing 16 % of the period), differentiated for lip radiation,
    with F0 given per sample and 0.2 % jitter."""
    phase = np.cumsum(f0 / sr * (1.0 + rng.normal(0.0, 0.002, f0.shape)))
    frac = phase - np.floor(phase)
    t_open, t_close = 0.4, 0.16
    pulse = np.where(frac < t_open, 0.5 * (1.0 - np.cos(np.pi * frac / t_open)),
                     np.where(frac < t_open + t_close, np.cos(0.5 * np.pi * (frac - t_open) / t_close), 0.0))
    return np.diff(pulse, prepend=0.0)


def formant_speech(text: str, voice: Voice, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speaks `text` with the formant synthesiser. Returns float32 [T] at `sample_rate`."""
    sr = sample_rate
    rng = np.random.default_rng(zlib.crc32(f"{text}|{voice}".encode()))
    segs = _segments(text) or [("pause", None, 1.0)]
    unit = 0.095 * 172.0 / max(voice.rate, 60)  # seconds per unit of relative duration
    block = sr // 200  # 5 ms formant update
    scale = _formant_scale(voice.age, voice.gender)
    lengths = [max(block, int(round(d * unit * sr / block)) * block) for _, _, d in segs]
    n = sum(lengths)
    nb = n // block

    # Targets per block: formants, voicing, noise, loudness.
    formants = np.zeros((nb, 3))
    voiced = np.zeros(nb)
    noise = np.zeros(nb)
    accent = np.zeros(nb)
    last = np.array(VOWEL_FORMANTS["@"], float)
    pos = 0
    syllable = 0
    for (kind, vowel, _), length in zip(segs, lengths):
        b0, b1 = pos // block, (pos + length) // block
        if kind == "vowel":
            last = np.array(VOWEL_FORMANTS[vowel], float)
            voiced[b0:b1] = 1.0
            accent[b0:b1] = 1.0 if syllable % 2 == 0 else 0.4  # alternate stressed syllables
            syllable += 1
        elif kind == "sonorant":
            voiced[b0:b1] = 0.45
            last = 0.6 * last + 0.4 * np.array((300.0, 1200.0, 2500.0))
        elif kind == "fricative":
            noise[b0:b1] = 0.35
        elif kind == "stop":
            noise[b0 + (b1 - b0) // 2: b1] = 0.6  # closure, then burst
        formants[b0:b1] = last
        pos += length
    formants *= scale
    # Smooth the targets into transitions (~30 ms).
    kernel = np.hanning(7)
    kernel /= kernel.sum()
    for k in range(3):
        formants[:, k] = np.convolve(np.pad(formants[:, k], 3, mode="edge"), kernel, mode="valid")
    voiced = np.convolve(np.pad(voiced, 3, mode="edge"), kernel, mode="valid")
    accent = np.convolve(np.pad(accent, 3, mode="edge"), kernel, mode="valid")

    # Pitch contour: declination over each phrase, accents on stressed syllables, range from the voice.
    f0_base = _pitch_hz(voice)
    span = voice.pitch_range / 50.0
    t = np.arange(nb) / nb
    f0_blocks = f0_base * (1.08 - 0.16 * t) * 2 ** (span * 2.0 * (accent - 0.5) / 12.0)
    f0 = np.repeat(f0_blocks, block)

    source = _glottal_source(f0, sr, rng) * np.repeat(voiced, block)
    source /= np.max(np.abs(source)) + 1e-9
    source += np.repeat(noise, block) * rng.normal(0.0, 0.25, n) * 0.6
    out = source
    for k, bw in enumerate(_BANDWIDTHS):
        out = _resonate(out, formants[:, k], bw * scale, sr, block)
    # Fricative hiss sits above the formants: add a high-passed share of the noise directly.
    hiss = signal.lfilter(*signal.butter(2, 3000, "highpass", fs=sr), np.repeat(noise, block) * rng.normal(0, 1, n))
    out = out / (np.max(np.abs(out)) + 1e-9) + 0.15 * hiss
    out *= voice.amplitude / 100.0 * 0.6 / (np.max(np.abs(out)) + 1e-9)
    return out.astype(np.float32)


__all__ = ["ENGINES", "SAMPLE_RATE", "VOWEL_FORMANTS", "Voice", "espeak", "formant_speech", "formant_vowel",
           "resample", "resolve_engine", "synthesize", "voice_for", "write_wav"]
