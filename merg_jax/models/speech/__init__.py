"""The speech generator (StyleTTS-like, in JAX): `generator.SpeechGenerator` holds the content encoder, the style
encoder (acoustic + prosodic halves), the prosody predictor, the length regulator, the mel decoder and a vocoder
(`istft_vocoder.IstftVocoder`, or `hifigan.HifiGan`, which also imports transformers' SpeechT5HifiGan). Durations
come from `alignment.monotonic_alignment_search` while training. Synthesis: `merg_jax.infer.speech`."""

from merg_jax.models.speech.alignment import durations_from_alignment, monotonic_alignment_search

__all__ = ["durations_from_alignment", "monotonic_alignment_search"]
