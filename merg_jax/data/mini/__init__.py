"""AvaMERG-mini: a small synthetic dataset in the exact AvaMERG format, generated offline and deterministically.

  dialogues.py   multi-turn empathetic conversations composed from the banks in templates.py, Dist-n metrics
  neutral_templates.py  emotion-neutral banks: conversations whose emotion is only in voice and face
  speech.py      espeak-ng speech (voice from profile and emotion), 16 kHz; a formant-synthesiser fallback
  avatar.py      procedural talking avatars: portraits, clips with lips driven by the speech, H.264 mp4
  generate.py    the whole dataset: splits, media, side-cars, portraits, metadata (parallel, deterministic)
  cli.py         `merg-jax make-data --out DIR --dialogues N --seed S`

Submodules are imported on use, so `import merg_jax.data.mini` stays cheap.
"""
