"""The AvaMERG paper's published numbers (WWW 2025, AvaMERG test set), as data, and our comparison table.

Units are the paper's: emotion accuracy in percent, Dist-n on the 0-100 scale, MOS/SMOS on the 1-5 scale, CPBD
and SSIM in [0, 1], sync confidence (LSE-C) in SyncNet's units. Our metrics dict keeps accuracies as shares in
[0, 1] (what `merg_jax.eval.text_metrics.accuracy` returns); the table converts them to percent, so the two
columns are never compared in different units.

Why a table and not just the numbers: every run of `merg-jax eval` should show, in one place, how far we are
from the paper and on which data (AvaMERG-mini figures are not comparable with the paper's AvaMERG test set, and
the table says which data the figures are on).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = [
    "AV_ROWS", "MEDIA_ROWS", "PAPER_ABLATIONS", "PAPER_AV", "PAPER_DATASET", "PAPER_TEXT", "TEXT_ROWS",
    "comparison_table", "media_table", "paper_av_figures",
]

PAPER_DATASET = "AvaMERG test set"

# Text results, paper's units (accuracy in percent). "CASE" is the best prior text-only model in the paper's table.
PAPER_TEXT: dict[str, dict[str, float]] = {
    "Empatheia": {"emotion_acc": 48.51, "dist1": 2.69, "dist2": 14.76},
    "CASE": {"emotion_acc": 40.96, "dist1": 0.54, "dist2": 2.14},
}

# Ablations of Empatheia in the paper (emotion accuracy, percent).
PAPER_ABLATIONS: dict[str, dict[str, float]] = {
    "w/o CoE": {"emotion_acc": 46.62},
    "w/o speech+video input": {"emotion_acc": 45.89},
}

# Speech and video results. MOS/SMOS are human ratings (1-5); SSIM of the ground truth is 1 by definition.
PAPER_AV: dict[str, dict[str, float]] = {
    "Empatheia": {"mos": 4.16, "smos": 4.33, "cpbd": 0.15, "ssim": 0.49, "sync_conf": 2.76},
    "ground truth": {"mos": 4.35, "smos": 4.81, "cpbd": 0.20, "ssim": 1.0, "sync_conf": 3.93},
}

# (key, label, kind) of the text table's rows. kind: "share" = ours in [0, 1], printed as percent;
# "score" = already on the printed scale; "count" = an integer.
TEXT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("emotion_acc", "Emotion Acc (%)", "share"),
    ("dist1", "Dist-1", "score"),
    ("dist2", "Dist-2", "score"),
    ("bleu1", "BLEU-1", "score"),
    ("bleu2", "BLEU-2", "score"),
    ("bleu4", "BLEU-4", "score"),
    ("rougeL", "ROUGE-L", "score"),
    ("coe_valid", "CoE parsed (%)", "share"),
    ("emotion_acc_neutral_text", "Emotion Acc, neutral text (%)", "share"),
    ("num_turns", "Turns evaluated", "count"),
)

# Speech/video rows of the paper's table; ours come from `merg-jax eval`'s "video" section (`paper_av_figures`).
AV_ROWS: tuple[tuple[str, str], ...] = (
    ("mos", "MOS"),
    ("smos", "SMOS"),
    ("cpbd", "CPBD"),
    ("ssim", "SSIM"),
    ("sync_conf", "Sync confidence (LSE-C)"),
)

_DASH = "–"


def _get(tree: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def paper_av_figures(ours: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our figures under the paper's AV keys: (generated, real test clips). CPBD, full-frame SSIM against the
    reference clip and the sync judge's LSE-C come from `ours["video"]`; MOS and SMOS are human ratings we do not
    have. A key already at the top level of `ours` wins (an older metrics file)."""
    video = ours.get("video")
    generated = {"cpbd": _get(video, "cpbd", "generated"), "ssim": _get(video, "ssim", "generated"),
                 "sync_conf": _get(video, "sync", "generated", "lse_c")}
    generated.update({k: ours[k] for k, _ in AV_ROWS if ours.get(k) is not None})
    real = {"cpbd": _get(video, "cpbd", "real"), "ssim": 1.0 if video else None,
            "sync_conf": _get(video, "sync", "real", "lse_c")}
    return generated, real


# (section, path in the metrics, label, path of the baseline or None, baseline's name) of `media_table`.
MEDIA_ROWS: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...] | None, str], ...] = (
    ("speech", ("mcd_db",), "MCD (dB), lower is better", ("mcd_baseline_mean_training_mc",),
     "the training set's mean mel-cepstrum"),
    ("speech", ("wer_generated",), "WER of the offline recogniser", ("wer_reference",), "the real recordings"),
    ("speech", ("emotion_acc_generated",), "Emotion heard (our audio tower)", ("emotion_acc_real",),
     "the real recordings"),
    ("speech", ("real_time_factor",), "Real-time factor", None, ""),
    ("video", ("ssim", "generated"), "SSIM, full frame", ("ssim", "still"), "the still portrait"),
    ("video", ("ssim_mouth", "generated"), "SSIM, mouth region", ("ssim_mouth", "still"), "the still portrait"),
    ("video", ("mouth_vs_energy", "generated"), "Mouth opening ~ speech energy (ρ)", ("mouth_vs_energy", "still"),
     "the still portrait"),
    ("video", ("sync", "generated", "lse_c"), "Sync confidence (LSE-C)", ("sync", "real", "lse_c"),
     "the real clips"),
    ("video", ("emotion", "label_driven"), "Emotion seen (our judge), by label", ("emotion", "still"),
     "the still portrait"),
    ("video", ("cpbd", "generated"), "CPBD sharpness", ("cpbd", "real"), "the real clips"),
    ("video", ("real_time_factor",), "Real-time factor", None, ""),
)


def media_table(ours: Mapping[str, Any]) -> str:
    """A markdown table of the speech and face generators' figures, each beside its baseline; "" when `ours` has
    neither a "speech" nor a "video" section."""
    lines = []
    for section, path, label, base, base_name in MEDIA_ROWS:
        if not isinstance(ours.get(section), Mapping):
            continue
        value = _get(ours[section], *path)
        if value is None:
            continue
        baseline = _get(ours[section], *base) if base else None
        lines.append(_row([f"{section}: {label}", _fmt(value),
                           f"{_fmt(baseline)} ({base_name})" if baseline is not None else _DASH]))
    if not lines:
        return ""
    return "\n".join([_row(["Voice and face", "Ours", "Baseline"]), _row(["---", "---:", "---"]), *lines]) + "\n"


def _fmt(value: Any, kind: str = "score") -> str:
    """A table cell: "–" for absent/None/NaN, percent for shares, integers for counts, 2 decimals otherwise."""
    if value is None or isinstance(value, bool):
        return _DASH
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return _DASH
    if kind == "count":
        return f"{int(round(x))}"
    if kind == "share":
        x *= 100.0
    return f"{x:.2f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def comparison_table(ours: Mapping[str, Any], *, ablation: Mapping[str, Any] | None = None,
                     dataset: str = "") -> str:
    """A markdown report: the paper's numbers beside ours, text metrics first, then speech/video.

    ours: our metrics, keys as in TEXT_ROWS (emotion_acc, coe_valid, emotion_acc_neutral_text as shares in [0, 1];
    dist*, bleu*, rougeL on 0-100; num_turns a count) and optionally AV_ROWS' keys; missing or None -> "–".
    ablation: the same metrics of our model with audio and video blanked; adds the paper's "w/o speech+video input"
    column and ours beside it, the paper's own ablation being the closest counterpart.
    dataset: what our figures are on (e.g. "AvaMERG-mini test, 40 dialogues"); the table says it, because ours and
    the paper's are comparable only on the same data.
    Rows the paper does not report show "–" in its columns. The speech/video table is printed only when `ours`
    has at least one of its keys, so a text-only run stays short.
    """
    nav = "w/o speech+video input"
    header = ["Metric", "Empatheia (paper)", "CASE (paper)", "Ours"]
    if ablation is not None:
        header[3:3] = [f"Empatheia {nav} (paper)"]
        header.append("Ours, audio+video blanked")
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for key, label, kind in TEXT_ROWS:
        # Paper values are already in the printed units (percent), so they are formatted as "score".
        cells = [label, _fmt(PAPER_TEXT["Empatheia"].get(key)), _fmt(PAPER_TEXT["CASE"].get(key))]
        if ablation is not None:
            cells.append(_fmt(PAPER_ABLATIONS[nav].get(key)))
        cells.append(_fmt(ours.get(key), kind))
        if ablation is not None:
            cells.append(_fmt(ablation.get(key), kind))
        lines.append(_row(cells))

    generated, real = paper_av_figures(ours)
    if any(v is not None for v in generated.values()):
        lines += ["", _row(["Metric", "Empatheia (paper)", "Ground truth (paper)", "Ours", "Real clips (ours)"]),
                  _row(["---", "---:", "---:", "---:", "---:"])]
        for key, label in AV_ROWS:
            lines.append(_row([label, _fmt(PAPER_AV["Empatheia"][key]), _fmt(PAPER_AV["ground truth"][key]),
                               _fmt(generated.get(key)), _fmt(real.get(key))]))
    media = media_table(ours)
    if media:
        lines += ["", media.rstrip("\n")]

    ours_on = dataset or "unspecified data"
    lines += [
        "",
        f"Paper figures: {PAPER_DATASET}. Our figures: {ours_on}.",
        f"Paper ablation w/o CoE: emotion Acc {PAPER_ABLATIONS['w/o CoE']['emotion_acc']:.2f} %. "
        "Dist-n tokens: our regex tokenizer (\\w+|[^\\w\\s], lower-cased); CEM/CASE used NLTK. "
        "BLEU: sacrebleu corpus BLEU (13a, exp smoothing).",
    ]
    return "\n".join(lines) + "\n"
