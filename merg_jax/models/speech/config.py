"""The speech generator's sizes and audio settings (`config.empatheia.speech`).

    cfg = SpeechConfig.from_dict(config.empatheia.speech)   # unknown keys are errors that name the key

Audio: `sample_rate` Hz, an STFT of `n_fft` samples every `hop` (mel frames per second = sample_rate / hop),
`n_mels` Slaney mel bands up to `fmax`, log-magnitude mels with a floor of 1e-5 — the same for the acoustic model,
the style encoder and the vocoder, so a reference clip, a training target and a vocoder input are one feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from merg_jax.config_sections import from_section


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    # audio
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    # text front end: "phonemes" (espeak-ng), "characters", or "auto" (phonemes when espeak-ng is installed)
    symbols: str = "auto"
    # acoustic model
    dim: int = 128  # width of every block
    content_dim: int = 64  # the content sequence (C^s's feature size)
    content_layers: int = 4
    style_dim: int = 32  # the style vector (S^s): an acoustic half then a prosodic half
    style_layers: int = 4
    prosody_layers: int = 3
    decoder_layers: int = 6
    kernel_size: int = 5
    max_tokens: int = 256  # symbols per synthesised piece (longer text is split at sentences)
    max_frames: int = 800  # mel frames per training utterance (longer ones are skipped) and per piece
    # vocoder: "istft" (ConvNeXt → STFT magnitude and phase → inverse STFT) or "hifigan"
    vocoder: str = "istft"
    vocoder_dim: int = 192
    vocoder_layers: int = 6
    vocoder_segment: int = 32  # mel frames of waveform the vocoder trains on per row

    def __post_init__(self):
        if self.style_dim % 2:
            raise ValueError(f"empatheia.speech.style_dim={self.style_dim}: must be even (acoustic + prosodic)")
        if self.n_fft % self.hop:
            raise ValueError(f"empatheia.speech: n_fft={self.n_fft} must be a multiple of hop={self.hop}")
        if self.vocoder not in ("istft", "hifigan"):
            raise ValueError(f"empatheia.speech.vocoder={self.vocoder!r}: expected 'istft' or 'hifigan'")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SpeechConfig:
        return from_section(cls, d, "empatheia.speech")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
