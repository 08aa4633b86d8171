"""How a reply is voiced and animated: the choices `Responder` takes and the command-line flags that pick them.

A leaf module (no JAX import), shared by `merg-jax respond` (merg_jax/infer/respond_cli.py) and
`merg-jax bench respond` (merg_jax/bench/respond.py), whose parser is built whenever any `merg-jax bench` target
starts.
"""

from __future__ import annotations

import argparse

SPEECH_FROM = ("content", "text")  # reply.wav from the Content Synchronizer's C^s, or from the reply text
FACE_FROM = ("content", "speech")  # reply.mp4 driven by C^v, or by reply.wav
STYLE_FROM = ("sd", "label")  # the Style Disentangler's S^s / S^v, or the generators' label style


def add_rendering_args(p: argparse.ArgumentParser) -> None:
    """The flags `--speech-from`, `--face-from`, `--style-from`, `--emotion`, `--portrait` (`Responder`'s keyword
    arguments of the same names)."""
    p.add_argument("--speech-from", default="content", choices=SPEECH_FROM,
                   help="reply.wav from the Content Synchronizer's C^s (the paper; default) or from the reply text, "
                        "both in the Style Disentangler's style S^s")
    p.add_argument("--face-from", default="content", choices=FACE_FROM,
                   help="reply.mp4 driven by the Content Synchronizer's C^v (the paper; default) or by reply.wav, "
                        "both in the Style Disentangler's style S^v")
    p.add_argument("--style-from", default="sd", choices=STYLE_FROM,
                   help="voice and face in the Style Disentangler's styles S^s, S^v (the paper; default) or in the "
                        "generators' label style of the reply's emotion (written, heard and seen agree)")
    p.add_argument("--emotion", default=None,
                   help="render voice and face in this emotion (one of the 7, or of the 32), whatever the model chose")
    p.add_argument("--portrait", default=None,
                   help="the avatar's image (default: avatars/{ID}.png of the listener profile under the media root)")
