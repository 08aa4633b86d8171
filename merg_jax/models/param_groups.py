"""Named parameter groups of the Empatheia model, and which groups each training stage trains (DESIGN §1).

    encoders      the vision and audio towers (frozen in every stage of the paper)
    projections   media → LLM input projections (and the signal-token embeddings)
    lora          the LLM's LoRA adapters (nnx.LoRAParam)
    llm_base      the LLM's own weights
    synchronizer  the Content Synchronizer
    disentangler  the Style Disentangler
    classifiers   the emotion and profile classifiers
    speech        the speech generator (acoustic model and vocoder; `models/speech`)
    face_renderer the face generator's renderer (keypoints, dense motion, warping generator; `models/face`)
    face_motion   the rest of the face generator: audio content and style encoders, label styles, motion denoiser

A group is decided by the first name on a parameter's path (the `Empatheia` attribute that holds it), inside
`llm` by its variable type, and inside `face` by whether it is the renderer. `group_filter(*names)` is an nnx
filter (for `nnx.DiffState`, `nnx.Optimizer(wrt=)`, `nnx.state(model, filter)`); `group_labels(state)` is the label
tree `optax.multi_transform` takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flax import nnx

GROUPS: tuple[str, ...] = ("encoders", "projections", "lora", "llm_base", "synchronizer", "disentangler",
                           "classifiers", "speech", "face_renderer", "face_motion")

# The groups each training stage trains by default (DESIGN §1): a. CoE learning, b. content consistency, c. style
# alignment, d. style consistency; and `encoders`, which trains the towers (with their clip emotion heads) when
# they are learnt here instead of imported (a config may widen a stage: `config.stage.coe.groups`).
STAGES: dict[str, tuple[str, ...]] = {
    "encoders": ("encoders",),
    "coe": ("lora", "projections"),
    "content": ("synchronizer",),
    "style": ("disentangler",),
    "style_cls": ("classifiers",),
    "speech": ("speech",),
    "face_renderer": ("face_renderer",),
    "face_motion": ("face_motion",),
}

_TOP = {"encoders": "encoders", "projections": "projections", "synchronizer": "synchronizer",
        "disentangler": "disentangler", "classifiers": "classifiers", "speech": "speech"}


def group_of(path: tuple, value) -> str:
    """The group of the parameter at `path` (a tuple of names/indices from the model root)."""
    head = str(path[0]) if path else ""
    if head in _TOP:
        return _TOP[head]
    if head == "face":
        return "face_renderer" if len(path) > 1 and str(path[1]) == "renderer" else "face_motion"
    if head == "llm":
        return "lora" if isinstance(value, nnx.LoRAParam) else "llm_base"
    raise ValueError(f"parameter {'.'.join(map(str, path))} belongs to no group of {GROUPS} "
                     "(merg_jax.models.param_groups needs the new top-level module)")


def _check(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; the groups are {GROUPS}")
    return names


def group_filter(*names: str):
    """An nnx filter selecting the `nnx.Param`s of the named groups."""
    names = _check(names)

    def select(path, value) -> bool:
        return isinstance(value, nnx.Param) and group_of(path, value) in names

    return select


def stage_filter(stage: str, groups: Iterable[str] | None = None):
    """The filter of what `stage` (a key of `STAGES`) trains: its default groups, or `groups` when given."""
    if groups is None:
        if stage not in STAGES:
            raise ValueError(f"unknown training stage {stage!r}; the stages are {tuple(STAGES)}")
        groups = STAGES[stage]
    return group_filter(*groups)


def group_labels(state: nnx.State) -> nnx.State:
    """The same tree as `state` (an `nnx.State` of Params) with each leaf replaced by its group name."""
    flat = [(path, group_of(path, var)) for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)


def param_counts(model: nnx.Module) -> dict[str, int]:
    """Parameter count per group (abstract models from `nnx.eval_shape` work: only shapes are read)."""
    counts = dict.fromkeys(GROUPS, 0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[group_of(path, var)] += math.prod(var.shape)
    return counts


__all__ = ["GROUPS", "STAGES", "group_filter", "group_labels", "group_of", "param_counts", "stage_filter"]
