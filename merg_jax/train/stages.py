"""The training stages of Empatheia, each declared once: what it trains, its loss, and what it reads.

    stage = STAGES["coe"]
    stage.groups          # parameter groups it trains by default (`param_groups.STAGES`; config.stage.coe.groups)
    stage.loss(model, batch, rng, targets) -> StageLoss(loss, weight, metrics)
    stage.batch_keys      # pipeline keys the loss reads;  stage.media: the media groups the pipeline decodes for it

| stage      | trains (default)    | loss                                                                       |
|------------|---------------------|----------------------------------------------------------------------------|
| encoders   | encoders            | cross-entropy of each speaker clip's emotion from its audio and video tower |
| coe        | lora, projections   | L_emp: next-token cross-entropy on the CoE target, media spliced in        |
| content    | synchronizer        | L_ccl: masked MSE of C^s, C^v to the target encoders' content + lengths     |
| style      | disentangler        | L_sal: MSE of S^s, S^v to the target encoders' style vectors               |
| style_cls  | classifiers         | L_cls: cross-entropy on the gold emotion (7, 32) and listener profile      |
| speech     | speech              | the speech generator: MAS prior, durations, pitch, energy, mel; vocoder   |
| face_renderer | face_renderer    | rebuild a clip's frames from its portrait or another frame + keypoints    |
| face_motion   | face_motion      | DDPM on keypoint motion from speech content and style; the label styles   |

`weight` is what the loss averages over (tokens, clips or rows); gradient accumulation weighs micro-batches by it,
so accumulating the LM loss over micro-batches equals the full batch's loss. The later issues register their
stages with `register`; a stage with its own data names an `iterator`, one that needs data made by the model
before it starts (the face motion stage's keypoint tracks) a `prepare` hook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from merg_jax.kernels.cross_entropy import cross_entropy_with_integer_labels
from merg_jax.models import param_groups
from merg_jax.models.disentangler import HEADS, classification_loss
from merg_jax.models.speech.generator import SPEECH_KEYS
from merg_jax.models.synchronizer import length_loss, masked_mse

Batch = Mapping[str, Any]

TEXT_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_clip", "media_kind")
HISTORY_KEYS = ("audio_mel", "audio_len", "audio_mask", "video_frames", "video_len", "video_mask")
MEDIA_GROUPS = ("audio", "video", "reply_audio", "reply_video")  # the pipeline's optional groups (data.<group>.frames)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StageLoss:
    loss: Float[Array, ""]
    weight: Float[Array, ""]
    metrics: dict[str, Float[Array, ""]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage. `loss(model, batch, rng, targets)`: rng is a dropout key or None (evaluation); targets
    the `TargetEncoders` for stages with `needs_targets`, else None. `metric` / `mode`: the validation figure that
    picks the best checkpoint."""

    name: str
    loss: Callable[..., StageLoss]
    batch_keys: tuple[str, ...]
    media: tuple[str, ...]
    description: str
    needs_targets: bool = False
    metric: str = "val_loss"
    mode: str = "min"
    # The stage's data: `iterator(config, split, tokenizer=..., shuffle=..., num_epochs=..., drop_remainder=...,
    # workers=...)` → a DataIterator; None: the dialogue pipeline (`merg_jax.data.pipeline.make_iterator`).
    iterator: Callable[..., Any] | None = None
    # Run once after the last step, before the final checkpoint: `finish(model, config, emit)` may fill
    # non-trainable state (the speech generator's style table).
    finish: Callable[..., None] | None = None
    # Run before the stage's data is opened (also when resuming): `prepare(model, config, emit)` may write data the
    # iterator reads and fill non-trainable state (the face motion stage's keypoint tracks and their statistics).
    prepare: Callable[..., None] | None = None
    # The loss draws random numbers (noise, dropout of the style): the loop passes a key every step; evaluation
    # passes None and the loss uses a fixed one.
    needs_rng: bool = False

    @property
    def groups(self) -> tuple[str, ...]:
        return param_groups.STAGES[self.name]


def _mean_ce(logits, labels, valid) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of cross-entropies over valid rows, count, correct) — float32."""
    ce = cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
    correct = jnp.sum(valid & (jnp.argmax(logits, -1) == labels))
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid).astype(jnp.float32), correct.astype(jnp.float32)


def encoders_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    logits = model.clip_emotion_logits(batch)
    labels = jnp.asarray(batch["clip_emotion7"])
    total, count, metrics = jnp.zeros(()), jnp.zeros(()), {}
    for name, lg in logits.items():
        valid = (labels >= 0) & jnp.asarray(batch[f"{name}_mask"])
        s, n, correct = _mean_ce(lg, labels, valid)
        total, count = total + s, count + n
        metrics[f"{name}_acc"] = correct / jnp.maximum(n, 1.0)
    weight = count / len(logits)  # clips; each clip contributes one term per tower
    return StageLoss(total / jnp.maximum(count, 1.0), weight, metrics)


def lm_loss_terms(logits, targets, loss_mask) -> tuple[jax.Array, jax.Array]:
    """(mean next-token cross-entropy over the masked positions, number of those positions), float32."""
    ce = cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = jnp.asarray(loss_mask).astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.sum(ce * w) / jnp.maximum(n, 1.0), n


def emotion_span(tokens, emo_id: int, emo_end_id: int):
    """True at the positions whose NEXT token is part of the CoE emotion: from `<emo>` up to the token before
    `</emo>`, i.e. where the model writes the emotion words and the closing tag."""
    opened = jnp.cumsum(tokens == emo_id, axis=1)
    closed = jnp.cumsum(tokens == emo_end_id, axis=1)
    return (opened > closed) & (opened == 1)


def teacher_forced_emotion(logits, batch: Batch, emo_id: int, emo_end_id: int) -> tuple[jax.Array, jax.Array]:
    """(rows whose emotion words are all predicted right given the gold prefix, rows with an emotion): a cheap
    validation proxy of the emotion accuracy `merg-jax eval` measures on free generation."""
    span = emotion_span(jnp.asarray(batch["tokens"]), emo_id, emo_end_id) & (jnp.asarray(batch["loss_mask"]) > 0)
    right = (jnp.argmax(logits, -1) == batch["targets"]) | ~span
    has = jnp.any(span, axis=1)
    return jnp.sum(has & jnp.all(right, axis=1)).astype(jnp.float32), jnp.sum(has).astype(jnp.float32)


def coe_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    out, _ = model.run_llm(batch, dropout_rng=rng)
    loss, n = lm_loss_terms(out.logits, batch["targets"], batch["loss_mask"])
    metrics = {"num_tokens": n}
    f = model.cfg.features
    if f.emo_id >= 0:
        right, rows = teacher_forced_emotion(out.logits, batch, f.emo_id, f.emo_end_id)
        metrics["emotion_acc_tf"] = right / jnp.maximum(rows, 1.0)
    return StageLoss(loss, n, metrics)


def _frozen_features(model, batch: Batch):
    """r^t (and r^s, r^v) of the gold target, the LLM frozen: no gradient flows back into it."""
    _, features = model.run_llm(batch)
    return jax.lax.stop_gradient(features)


def content_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    t = targets.content(batch, model)
    out = model.synchronizer(_frozen_features(model, batch), speech_lengths=t.speech_len, video_lengths=t.video_len)
    speech = masked_mse(out.speech, t.speech, out.speech_mask)
    video = masked_mse(out.video, t.video, out.video_mask)
    lengths = length_loss(out.speech_length, t.speech_len) + length_loss(out.video_length, t.video_len)
    rows = jnp.sum((t.speech_len > 0) | (t.video_len > 0)).astype(jnp.float32)
    return StageLoss(speech + video + 0.1 * lengths, rows,
                     {"mse_speech": speech, "mse_video": video, "length_loss": lengths})


def _row_mse(pred, target, valid) -> tuple[jax.Array, jax.Array]:
    err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    n = jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(jnp.where(valid, err, 0.0)) / jnp.maximum(n, 1.0), n


def style_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    t = targets.style(batch, model)
    out = model.disentangler(_frozen_features(model, batch))
    speech, ns = _row_mse(out.style_speech, t.speech, t.speech_valid)
    video, nv = _row_mse(out.style_video, t.video, t.video_valid)
    return StageLoss(speech + video, jnp.maximum(ns, nv), {"mse_speech": speech, "mse_video": video})


def style_cls_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    logits = model.classifiers(model.disentangler(_frozen_features(model, batch)))
    loss, accuracy = classification_loss(logits, {k: batch[k] for k in HEADS})
    rows = jnp.sum(jnp.asarray(batch["emotion7"]) >= 0).astype(jnp.float32)
    return StageLoss(loss, rows, {f"{k}_acc": v for k, v in accuracy.items()})


def speech_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    if model.speech is None:
        raise ValueError("stage speech: the model has no speech generator (set config.empatheia.speech)")
    loss, metrics = model.speech.losses(batch)
    return StageLoss(loss, jnp.sum(jnp.asarray(batch["mel_len"]) > 0).astype(jnp.float32), metrics)


def _speech_iterator(config, split, **kw):
    from merg_jax.data.speech_corpus import make_speech_iterator

    return make_speech_iterator(config, split, **kw)


def _speech_finish(model, config, emit) -> None:
    from merg_jax.infer.speech import fill_style_means

    fill_style_means(model.speech, config, emit)


def _face(model, stage: str):
    if model.face is None:
        raise ValueError(f"stage {stage}: the model has no face generator (set config.empatheia.face)")
    return model.face


def _rows(real: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.sum(real), 1).astype(jnp.float32)


def face_renderer_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    key = jax.random.key(0) if rng is None else rng
    loss, metrics = _face(model, "face_renderer").renderer_losses(batch, key)
    real = jnp.any(jnp.asarray(batch["frames"]).reshape(batch["frames"].shape[0], -1) > 0, axis=1)  # not padding
    return StageLoss(loss, _rows(real), metrics)


def face_motion_loss(model, batch: Batch, rng=None, targets=None) -> StageLoss:
    key = jax.random.key(0) if rng is None else rng
    loss, metrics = _face(model, "face_motion").motion_losses(batch, key)
    return StageLoss(loss, _rows(jnp.asarray(batch["motion_len"]) > 0), metrics)


def _face_renderer_iterator(config, split, **kw):
    from merg_jax.data.face_corpus import make_face_iterator

    return make_face_iterator(config, split, kind="renderer", **kw)


def _face_motion_iterator(config, split, **kw):
    from merg_jax.data.face_corpus import make_face_iterator
    from merg_jax.train.face_tracks import tracks_path

    return make_face_iterator(config, split, kind="motion", tracks=str(tracks_path(config, split)), **kw)


def _face_motion_prepare(model, config, emit) -> None:
    from merg_jax.train.face_tracks import prepare_tracks

    prepare_tracks(_face(model, "face_motion"), config, emit)


STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Adds a stage (the generator issues add theirs); its name must have default groups in `param_groups.STAGES`."""
    if stage.name not in param_groups.STAGES:
        raise ValueError(f"stage {stage.name!r} has no default groups in merg_jax.models.param_groups.STAGES")
    unknown = [m for m in stage.media if m not in MEDIA_GROUPS]
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown media groups {unknown}; expected some of {MEDIA_GROUPS}")
    STAGES[stage.name] = stage
    return stage


LABEL_KEYS = tuple(HEADS)
register(Stage("encoders", encoders_loss, ("clip_emotion7", *HISTORY_KEYS), ("audio", "video"),
               "the audio and video towers learn each speaker clip's emotion"))
register(Stage("coe", coe_loss, (*TEXT_KEYS, *HISTORY_KEYS), ("audio", "video"),
               "L_emp: the LLM writes the Chain of Empathy and the reply", metric="val_loss"))
register(Stage("content", content_loss, (*TEXT_KEYS, *HISTORY_KEYS), MEDIA_GROUPS,
               "L_ccl: the Content Synchronizer hits the generators' content encoders", needs_targets=True))
register(Stage("style", style_loss, (*TEXT_KEYS, *HISTORY_KEYS), MEDIA_GROUPS,
               "L_sal: the Style Disentangler hits the generators' style encoders", needs_targets=True))
register(Stage("style_cls", style_cls_loss, (*TEXT_KEYS, *HISTORY_KEYS, *LABEL_KEYS), ("audio", "video"),
               "L_cls: the emotion and profile classifiers", metric="val_emotion7_acc", mode="max"))
register(Stage("speech", speech_loss, SPEECH_KEYS, (), "the speech generator: acoustic model (MAS durations, "
               "pitch, energy, mel) and vocoder", iterator=_speech_iterator, finish=_speech_finish))
register(Stage("face_renderer", face_renderer_loss, ("portrait", "frames", "emotion7"), (),
               "the face renderer: keypoints, dense motion and warping learnt by rebuilding frames of a clip",
               iterator=_face_renderer_iterator, needs_rng=True))
register(Stage("face_motion", face_motion_loss, ("mel", "mel_len", "motion", "motion_len", "window_start",
                                                 "style_start", "emotion7"), (),
               "the face motion generator: diffusion over keypoint motion from speech content and style",
               iterator=_face_motion_iterator, prepare=_face_motion_prepare, needs_rng=True))


def parse_stages(text: str) -> list[Stage]:
    """`"coe,style_cls"` → the stages, in that order; unknown or repeated names are errors naming the flag."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError("config.stages is empty: name the stages to run, e.g. --config.stages=coe,style_cls")
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"config.stages: unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"config.stages={text!r} names a stage twice")
    return [STAGES[n] for n in names]


__all__ = ["MEDIA_GROUPS", "STAGES", "Stage", "StageLoss", "coe_loss", "content_loss", "encoders_loss",
           "face_motion_loss", "face_renderer_loss",
           "lm_loss_terms", "parse_stages", "register", "speech_loss", "style_cls_loss", "style_loss"]
