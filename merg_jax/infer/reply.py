"""Empatheia's replies to dialogue turns: multimodal prompt → Chain of Empathy + reply → r^t → CS / SD / classifiers.

    gen = ReplyGenerator(model, tokenizer, max_new_tokens=200)
    replies = gen(batch)        # batch: a prompt-only pipeline batch (`FeatureSpec(prompt_only=True)`), right-padded
    replies[0].fields           # {"event_scenario", "emotion", "emotion_cause", "goal_to_response", "reply"}
    replies[0].emotion7, replies[0].classifier["emotion7"], replies[0].style_speech, ...

Each call runs three compiled programs whose shapes depend only on the batch size, the prompt length and
`max_new_tokens`, so a second call with the same shapes compiles nothing:

1. the media encoders and projections, spliced into the prompt embeddings (left-padded, as decoding needs);
2. `merg_jax.infer.generate` on those embeddings with a KV cache (greedy or sampled), stopping at `</s>`;
3. one teacher-forced pass over prompt + generated text, whose reply-span hidden states (r^t) feed the Content
   Synchronizer (C^s, C^v), the Style Disentangler (S^s, S^v) and the emotion / profile classifiers — the
   features the speech and face generators are driven by, from the model's own words.

`ablate=("audio", "video")` masks those modalities' clips (their placeholders keep the token embedding), the
paper's "w/o speech+video" ablation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.data.templates import parse_target
from merg_jax.infer.generate import generate_with_info
from merg_jax.labels import AGES, ED_TO_MULTIMODAL, EMOTIONS_7, EMOTIONS_32, GENDERS, MULTIMODAL_TO_ED, TIMBRES

CLASSIFIER_LABELS = {"emotion7": EMOTIONS_7, "emotion32": EMOTIONS_32, "age": AGES, "gender": GENDERS,
                     "timbre": TIMBRES}
PROMPT_KEYS = ("tokens", "segment_ids", "media_kind", "media_clip")
MEDIA_KEYS = ("audio_mel", "audio_len", "audio_mask", "video_frames", "video_len", "video_mask")


def emotion_labels(text: str | None) -> tuple[str | None, str | None]:
    """(7-class, 32-class) labels of a CoE emotion as written ("terrified", "fear", " Sad "), or None."""
    if not text:
        return None, None
    word = text.strip().lower()
    if word in EMOTIONS_32:
        return ED_TO_MULTIMODAL.get(word), word
    if word in EMOTIONS_7:
        return word, MULTIMODAL_TO_ED.get(word)
    return None, None


@dataclasses.dataclass
class Reply:
    """One turn's answer. `fields`: `templates.parse_target` of `text`; `valid`: every CoE clause and the reply are
    there and the emotion is a known label; `classifier`: each head's predicted label; content / style: the
    generators' inputs (C^s `[Ts, Ds]` and C^v `[Tv, Dv]` cut to their predicted lengths; S^s, S^v)."""

    sample_index: int
    text: str
    fields: dict[str, str | None]
    emotion7: str | None
    emotion32: str | None
    valid: bool
    classifier: dict[str, str]
    content_speech: np.ndarray
    content_video: np.ndarray
    style_speech: np.ndarray
    style_video: np.ndarray

    @property
    def response(self) -> str:
        return self.fields.get("reply") or ""


def ablate(batch: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """The batch with the clips of `modalities` ("audio", "video") masked out."""
    out = dict(batch)
    for m in modalities:
        if m not in ("audio", "video"):
            raise ValueError(f"--ablate {m!r}: expected audio and/or video")
        if f"{m}_mask" in out:
            out[f"{m}_mask"] = np.zeros_like(out[f"{m}_mask"])
    return out


def left_pad_prompts(batch: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Right-padded prompt rows → left-padded ones (every row's last prompt token in the last column), and the
    prompt lengths `[B]`."""
    seg = np.asarray(batch["segment_ids"]) > 0
    n = seg.sum(1)
    width = seg.shape[1]
    out = {}
    for key, fill in (("tokens", 0), ("media_kind", 0), ("media_clip", -1)):
        x = np.asarray(batch[key])
        y = np.full_like(x, fill)
        for i, k in enumerate(n):
            y[i, width - k:] = x[i, :k]
        out[key] = y
    out["mask"] = (np.arange(width)[None] >= (width - n)[:, None]).astype(np.int32)
    return out, n


@nnx.jit
def _prompt_embeddings(model, batch):
    media = model.encode_media(batch)
    return model.embed_inputs(batch, media)


@nnx.jit
def _heads(model, batch):
    _, features = model.run_llm(batch)
    content, style, logits = model.heads(features)
    preds = {name: jnp.argmax(getattr(logits, name), -1) for name in CLASSIFIER_LABELS}
    return content, style, preds


class ReplyGenerator:
    """Generates replies for prompt-only batches (see the module docstring)."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 200, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0):
        if model.cfg.features.source != "reply_span":
            raise NotImplementedError("ReplyGenerator: features.source='signal_tokens' is not served yet; use "
                                      "'reply_span'")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
        self.seed = int(seed)
        self.calls = 0

    def __call__(self, batch: Mapping[str, Any], *, ablate_modalities: Sequence[str] = ()) -> list[Reply]:
        batch = ablate(batch, ablate_modalities) if ablate_modalities else dict(batch)
        model, tok = self.model, self.tokenizer
        left, n = left_pad_prompts(batch)
        empty = n == 0  # padding rows of a last, partial batch: a one-token prompt keeps decoding well defined
        left["tokens"][empty, -1], left["mask"][empty, -1] = tok.bos_id, 1
        media = {k: jnp.asarray(batch[k]) for k in MEDIA_KEYS if k in batch}
        prompt = {"tokens": jnp.asarray(left["tokens"]), "media_kind": jnp.asarray(left["media_kind"]),
                  "media_clip": jnp.asarray(left["media_clip"]), **media}
        embeddings, spans = _prompt_embeddings(model, prompt)
        out = generate_with_info(model.llm, left["tokens"], self.max_new_tokens, prompt_mask=left["mask"],
                                 pad_id=tok.pad_id, stop_tokens=(tok.eos_id,), prompt_embeddings=embeddings,
                                 prompt_span_ids=spans, rng=jax.random.key(self.seed + self.calls),
                                 **self.sampling)
        self.calls += 1
        generated = np.asarray(out.tokens)
        lengths = np.asarray(out.lengths)
        full = self._full_batch(batch, n, generated, lengths, media)
        content, style, preds = jax.device_get(_heads(model, full))
        replies = []
        for i in range(generated.shape[0]):
            if empty[i]:
                continue
            ids = generated[i, :lengths[i]]
            text = tok.decode([int(t) for t in ids])
            fields = parse_target(text)
            e7, e32 = emotion_labels(fields["emotion"])
            valid = all(fields[k] for k in fields) and e7 is not None
            cs = int(np.asarray(content.speech_mask[i]).sum())
            cv = int(np.asarray(content.video_mask[i]).sum())
            replies.append(Reply(
                sample_index=int(batch["sample_index"][i]) if "sample_index" in batch else i, text=text,
                fields=fields, emotion7=e7, emotion32=e32, valid=valid,
                classifier={k: CLASSIFIER_LABELS[k][int(preds[k][i])] for k in CLASSIFIER_LABELS},
                content_speech=np.asarray(content.speech[i, :cs]), content_video=np.asarray(content.video[i, :cv]),
                style_speech=np.asarray(style.style_speech[i]), style_video=np.asarray(style.style_video[i])))
        return replies

    def _full_batch(self, batch, n, generated, lengths, media) -> dict[str, jax.Array]:
        """Prompt + generated text, right-padded `[B, P + N]`, for the teacher-forced heads pass."""
        b, p = np.asarray(batch["tokens"]).shape
        width = p + generated.shape[1]
        tokens = np.zeros((b, width), np.int32)
        kind = np.zeros((b, width), np.int32)
        clip = np.full((b, width), -1, np.int32)
        seg = np.zeros((b, width), np.int32)
        for i in range(b):
            k, g = int(n[i]), int(lengths[i])
            tokens[i, :k] = np.asarray(batch["tokens"])[i, :k]
            kind[i, :k] = np.asarray(batch["media_kind"])[i, :k]
            clip[i, :k] = np.asarray(batch["media_clip"])[i, :k]
            tokens[i, k:k + g] = generated[i, :g]
            seg[i, :k + g] = 1 if k else 0
        positions = np.where(seg > 0, np.arange(width)[None], 0).astype(np.int32)
        return {"tokens": jnp.asarray(tokens), "media_kind": jnp.asarray(kind), "media_clip": jnp.asarray(clip),
                "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(positions), **media}


__all__ = ["CLASSIFIER_LABELS", "Reply", "ReplyGenerator", "ablate", "emotion_labels", "left_pad_prompts"]
