"""The 15-minute demo: configs/empatheia_tiny.py with every stage cut to what fits the `merg-jax demo` budget on 2
CPU cores (data, training, scoring and two answers in about 15 minutes in all: docs/results.md, "The demo"). Same
model, same code paths, far fewer steps: the replies are recognisably shaped (a Chain of Empathy, a voice, a
talking avatar) but not good. Train the tiny recipe itself for the other figures of docs/results.md.

Run:
    merg-jax demo                                     # makes data/avamerg_demo, trains into runs/demo, answers
    merg-jax train --config configs/empatheia_demo.py --config.data.root=data/avamerg_demo
Longer: --config.train.steps=N sets every stage's steps (or --config.stage.coe.steps=N for one stage).
"""

import pathlib

from merg_jax.config import load_config


def get_config():
    c = load_config(str(pathlib.Path(__file__).with_name("empatheia_tiny.py")))
    c.data.root = "data/avamerg_demo"
    c.data.tokenizer = "runs/demo/tokenizer"
    c.data.feature_cache_dir = "runs/demo/feature_cache"
    c.train.output_dir = "runs/demo"
    c.train.log_every = 25
    c.checkpoint.every_steps = 100
    c.data.face_max_clips = 32  # the motion stage's keypoint tracks are extracted first, ~1 clip a second
    # steps per stage (measured on 2 cores, docs/results.md "The demo"): each compiles once (~5-35 s), then trains
    # for under a minute; `style` decodes the gold reply videos for the face style encoder, ~11 s a step
    for stage, steps in dict(encoders=80, coe=150, speech=120, face_renderer=24, face_motion=120, content=20,
                             style=2, style_cls=30).items():
        c.stage[stage].steps = steps
        c.stage[stage].log_every = 25
    c.stage.coe.eval_every = 0
    c.generate.max_new_tokens = 170  # the tiny recipe's: a rambling Chain of Empathy still reaches the reply
    return c
