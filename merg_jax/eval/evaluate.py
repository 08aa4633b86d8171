"""`merg-jax eval`: a trained model answers every turn of a split; the replies are scored with the paper's metrics.

    result = evaluate(load_model("runs/empatheia_tiny"), "data/avamerg_mini", "test", ablate=("audio", "video"))
    result.metrics      # the keys below;  result.rows: one dict per turn (gold and predicted fields)

For each turn the model writes the Chain of Empathy from the multimodal prompt (`merg_jax.infer.ReplyGenerator`,
greedy by `config.generate`), which `templates.parse_target` reads back. Metrics:

    emotion_acc        the CoE emotion (mapped to the 7 multimodal labels) against the gold one
    emotion_acc_32     the CoE emotion against the gold EmpatheticDialogues label
    cls_emotion_acc    the Style Disentangler's emotion classifier (7 labels), on the model's own text
    coe_valid          the share of generations with every CoE clause, a known emotion and a reply
    dist1, dist2       the paper's Distinct-n: 100 × distinct / all n-grams, pooled over every generated reply,
                       tokens re.findall(r"\\w+|[^\\w\\s]", text.lower()); a turn without a reply counts as "..."
    bleu1/2/4, rougeL  against the gold replies (sacrebleu, rouge-score)
    emotion_acc_neutral_text   emotion_acc on the turns of conversations whose words carry no emotion (AvaMERG-mini
                       marks them in metadata.json; absent for other data)
    num_turns          turns answered (a turn whose media cannot be read at all is counted in `skipped`)

`ablate=("audio", "video")` masks those clips (the paper's w/o speech+video ablation). Media that are missing are
masked too (the clip is read as text only), never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from merg_jax.eval.text_metrics import accuracy, text_metrics

log = logging.getLogger(__name__)


NO_REPLY = "..."  # what a generation without a reply is scored and submitted as (the format needs a non-empty string)


def submitted_reply(row: dict[str, Any]) -> str:
    return row["response"].strip() or NO_REPLY


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]


def _gold(record: dict) -> dict[str, Any]:
    from merg_jax.data.pipeline_features import label_ids
    from merg_jax.labels import EMOTIONS_7, EMOTIONS_32

    ids = label_ids(record)
    return {"emotion7": EMOTIONS_7[ids["emotion7"]] if ids["emotion7"] >= 0 else None,
            "emotion32": EMOTIONS_32[ids["emotion32"]] if ids["emotion32"] >= 0 else None,
            "response": record["response"]["text"]}


def eval_config(config, data_root: str | os.PathLike):
    """The model's config with the data section pointed at `data_root`, read as raw files, generation-sized."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    c.data.root = str(data_root)
    c.data.source = "raw"
    c.data.reply_audio.frames = 0
    c.data.reply_video.frames = 0
    c.data.batch_size = int(config.generate.get("batch_size", 8))
    c.data.workers = 0
    c.data.seq_len = int(config.data.get("seq_len", 0) or config.train.seq_len)
    return c


def evaluate(loaded, data_root: str | os.PathLike, split: str = "test", *, ablate: Sequence[str] = (),
             limit: int | None = None, progress: bool = True,
             emit: Callable[[str], None] | None = None) -> EvalResult:
    """Answers the turns of `split` (the first `limit` of them) and scores them (see the module docstring)."""
    from tqdm import tqdm

    from merg_jax.data.avamerg import read_split
    from merg_jax.data.mini.generate import neutral_text_conversations
    from merg_jax.data.pipeline import make_iterator
    from merg_jax.data.pipeline_records import split_records
    from merg_jax.infer.reply import ReplyGenerator

    emit = emit or log.info
    config = eval_config(loaded.config, data_root)
    records = split_records(read_split(str(data_root), split, check_media="none"))
    if not records:
        raise ValueError(f"--data {data_root}: split {split!r} has no turns")
    total = len(records) if limit is None else min(int(limit), len(records))
    neutral = neutral_text_conversations(data_root, split)
    g = config.generate
    gen = ReplyGenerator(loaded.model, loaded.tokenizer, max_new_tokens=int(g.max_new_tokens),
                         temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p),
                         seed=int(g.get("seed", 0)))
    rows: list[dict[str, Any]] = []
    it = make_iterator(config, split, tokenizer=loaded.tokenizer, shuffle=False, num_epochs=1, drop_remainder=False,
                       shard_index=0, shard_count=1, prompt_only=True, missing_media="mask")
    with it, tqdm(total=total, desc=f"eval {split}", unit="turn", disable=not progress) as bar:
        for batch in it:
            for reply in gen(batch, ablate_modalities=ablate):
                if reply.sample_index >= total:
                    continue
                record = records[reply.sample_index]
                gold = _gold(record)
                rows.append({
                    "sample_index": reply.sample_index, "conversation_id": record["conversation_id"],
                    "turn_id": record["turn_id"], "neutral_text": None if neutral is None else
                    record["conversation_id"] in neutral,
                    "gold": gold, "text": reply.text, "fields": reply.fields, "emotion7": reply.emotion7,
                    "emotion32": reply.emotion32, "valid": reply.valid, "classifier": reply.classifier,
                    "response": reply.response,
                    # the generators' inputs (C^s, S^s, C^v, S^v) and the replying avatar, kept out of the
                    # predictions file (`_` keys)
                    "_content_speech": reply.content_speech, "_style_speech": reply.style_speech,
                    "_content_video": reply.content_video, "_style_video": reply.style_video,
                    "_avatar_id": (record.get("listener_profile") or {}).get("avatar_id")})
                bar.update(1)
            if len(rows) >= total:
                break
    rows.sort(key=lambda r: r["sample_index"])
    metrics = score(rows)
    metrics.update({"split": split, "data": str(data_root), "ablate": list(ablate), "skipped": it.skipped,
                    "checkpoint": loaded.source})
    return EvalResult(metrics=metrics, rows=rows)


def score(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of answered turns (`evaluate`'s rows); the text metrics score the replies as submitted."""
    hyps = [submitted_reply(r) for r in rows]
    refs = [r["gold"]["response"] for r in rows]
    out: dict[str, Any] = {"num_turns": len(rows)}
    out["emotion_acc"] = accuracy([r["emotion7"] for r in rows], [r["gold"]["emotion7"] for r in rows])
    out["emotion_acc_32"] = accuracy([r["emotion32"] for r in rows], [r["gold"]["emotion32"] for r in rows])
    out["cls_emotion_acc"] = accuracy([r["classifier"]["emotion7"] for r in rows],
                                      [r["gold"]["emotion7"] for r in rows])
    out["coe_valid"] = sum(bool(r["valid"]) for r in rows) / len(rows) if rows else None
    out.update(text_metrics(hyps, refs) if rows else {})
    neutral = [r for r in rows if r.get("neutral_text")]
    if any(r.get("neutral_text") is not None for r in rows):
        out["emotion_acc_neutral_text"] = accuracy([r["emotion7"] for r in neutral],
                                                   [r["gold"]["emotion7"] for r in neutral])
        out["num_neutral_text_turns"] = len(neutral)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def submission_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows `eval.submission.build_submission` takes: the CoE emotion as written when it is a known label,
    else the classifier's; the reply, or `NO_REPLY` when the model wrote none."""
    return [{"conversation_id": r["conversation_id"], "turn_id": r["turn_id"],
             "emotion": r["emotion32"] or r["emotion7"] or r["classifier"]["emotion7"],
             "response": submitted_reply(r)} for r in rows]


def write_outputs(result: EvalResult, out: str | os.PathLike, *, ablation: dict | None = None,
                  dataset: str = "") -> tuple[pathlib.Path, pathlib.Path, str]:
    """`out` (metrics JSON), `out` with `.predictions.jsonl` (one row per turn) and `.md` (the comparison table),
    each written atomically. Returns (metrics path, predictions path, table)."""
    from merg_jax.eval.paper import comparison_table

    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = comparison_table(result.metrics, ablation=ablation, dataset=dataset)
    preds = out.with_suffix(".predictions.jsonl")
    for path, text in ((out, json.dumps(result.metrics, indent=2) + "\n"),
                       (preds, "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")},
                                                  ensure_ascii=False) + "\n" for r in result.rows)),
                       (out.with_suffix(".md"), table + "\n")):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return out, preds, table


def write_reply_media(loaded, rows: Sequence[dict[str, Any]], media_dir: str | os.PathLike, data_root: str,
                      emit: Callable[[str], None] | None = None) -> dict[str, int]:
    """Each answered turn's reply as the challenge names it, `dia{conversation_id}utt{2t+2}` in `media_dir`: `.wav`
    spoken from its (C^s, S^s) (an empty C^s speaks the reply's text) when the model has a speech generator, and
    `.mp4` of the listener's avatar (`{data_root}/avatars/{ID}.png`) driven by its (C^v, S^v) — C^v stretched to the
    wav's length, the wav muxed in — when it has a face generator. Returns {"wav": n written, "mp4": n written}."""
    from tqdm import tqdm

    from merg_jax.data.face_corpus import portrait_path, read_image
    from merg_jax.data.mp4_writer import write_mp4
    from merg_jax.eval.submission import reply_media_name, reply_utterance_number
    from merg_jax.infer.respond import stretch
    from merg_jax.infer.speech import write_wav

    model = loaded.model
    synth = anim = None
    if model.speech is not None:
        from merg_jax.infer.speech import Synthesizer

        synth = Synthesizer(model.speech)
    if model.face is not None:
        from merg_jax.infer.face import Animator

        anim = Animator(model.face)
    written = {"wav": 0, "mp4": 0}
    for r in tqdm(rows, desc="reply media", unit="reply", disable=emit is None):
        number = reply_utterance_number(r["turn_id"])
        wav_path = pathlib.Path(media_dir) / reply_media_name(r["conversation_id"], number, "wav")
        wave = None
        if synth is not None:
            content, style = r["_content_speech"], r["_style_speech"]
            try:
                if content.shape[0] and content.shape[-1] == synth.cfg.content_dim:
                    wave = synth.speak_content(content, style)
                else:
                    wave = synth.speak(submitted_reply(r), style)
            except ValueError as e:  # nothing speakable in this reply: no wav for it, said once
                log.warning("no speech for %s turn %s: %s", r["conversation_id"], r["turn_id"], e)
            else:
                write_wav(wav_path, wave, synth.sample_rate)
                written["wav"] += 1
        if anim is None:
            continue
        portrait = portrait_path(data_root, r.get("_avatar_id"))
        content = r["_content_video"]
        if portrait is None or not content.shape[0] or content.shape[-1] != anim.cfg.content_dim:
            log.warning("no video for %s turn %s: %s", r["conversation_id"], r["turn_id"],
                        "no avatar portrait" if portrait is None else "no C^v")
            continue
        if wave is not None:
            content = stretch(content, max(1, int(round(wave.size / synth.sample_rate * anim.fps))))
        frames = anim.animate(read_image(portrait), content, r["_style_video"])
        write_mp4(pathlib.Path(media_dir) / reply_media_name(r["conversation_id"], number, "mp4"), frames,
                  int(round(anim.fps)), audio=wav_path if wave is not None else None)
        written["mp4"] += 1
    return written


__all__ = ["EvalResult", "eval_config", "evaluate", "score", "submission_rows", "write_outputs",
           "write_reply_media"]
