"""`merg-jax inspect-data DIR`: what an AvaMERG dataset holds and what is wrong with it.

    merg-jax inspect-data data/avamerg [--split train] [--strict] [--audio-template T] [--video-template T]
                                       [--check-media exists] [--max-problems 20] [--no-durations] [--json]

Per split: conversations, turns, utterances; label distributions (topic, speaker emotion, profile ages /
genders / timbres, avatar ids); media durations (mean/min/max of wav and mp4, read from file headers only); and
every problem with its path (the first --max-problems, then a count per kind). Values outside the label sets of
`merg_jax.data.labels` are listed too. Exit status: 0; 1 with --strict when any problem was found; 2 on bad usage
(unknown flag, DIR not a directory, no split JSON, bad template).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import pathlib
import sys
from typing import Any

from merg_jax.data import labels
from merg_jax.data.avamerg import (CHECK_MEDIA, DEFAULT_AUDIO_TEMPLATE, DEFAULT_JSON_NAME, DEFAULT_VIDEO_TEMPLATE,
                                   DataError, Problem, Split, available_splits, iter_media, read_split)

LABEL_SETS = {"topic": labels.TOPICS, "speaker_emotion": labels.EMOTIONS_32 + labels.EMOTIONS_7,
              "age": labels.AGES, "gender": labels.GENDERS, "timbre": labels.TIMBRES}


def summarize(split: Split, *, durations: bool = True, progress: bool = False) -> dict[str, Any]:
    """A JSON-able summary of one split. Media whose header cannot be read while measuring durations become
    extra problems (kind "unreadable"), so "exists"-checked datasets still surface corrupt files here."""
    from merg_jax.data import media

    counts = {k: collections.Counter() for k in ("topic", "speaker_emotion", "age", "gender", "timbre")}
    avatars: collections.Counter = collections.Counter()
    turns = utterances = with_coe = 0
    for conv in split.conversations:
        counts["topic"][conv.topic] += 1
        for profile in (conv.speaker_profile, conv.listener_profile):
            counts["age"][profile.age] += 1
            counts["gender"][profile.gender] += 1
            counts["timbre"][profile.timbre] += 1
            if profile.avatar_id is not None:
                avatars[profile.avatar_id] += 1
        utterances += len(conv.utterances)
        for turn in conv.turns:
            turns += 1
            if turn.coe is not None:
                with_coe += 1
                counts["speaker_emotion"][turn.coe.speaker_emotion] += 1

    problems = list(split.problems)
    stats: dict[str, Any] = {}
    if durations:
        seconds: dict[str, list[float]] = {"audio": [], "video": []}
        items = list(iter_media(split))
        iterator = items
        if progress and len(items) > 200:
            from tqdm import tqdm

            iterator = tqdm(items, desc=f"{split.name}: durations", unit="file", file=sys.stderr, disable=None)
        for kind, path in iterator:
            try:
                seconds[kind].append(media.media_duration(path))
            except media.MediaError as e:
                problems.append(Problem(e.path, e.kind, f"{kind}: {e.reason}"))
        for kind, values in seconds.items():
            stats[kind] = ({"files": len(values), "mean": sum(values) / len(values), "min": min(values),
                            "max": max(values), "hours": sum(values) / 3600} if values else {"files": 0})

    unknown = {field: sorted(str(v) for v in counter if v is not None and v not in LABEL_SETS[field])
               for field, counter in counts.items()}
    return {
        "split": split.name,
        "json": str(split.json_path),
        "conversations": len(split.conversations),
        "turns": turns,
        "utterances": utterances,
        "turns_with_coe": with_coe,
        "labels": {field: _sorted_counts(counter) for field, counter in counts.items()},
        "unknown_labels": {field: values for field, values in unknown.items() if values},
        "avatar_ids": {"distinct": len(avatars), "min": min(avatars, default=None),
                       "max": max(avatars, default=None),
                       "outside_range": sorted(a for a in avatars if not 0 <= a < labels.NUM_AVATARS)},
        "durations": stats,
        "problems": {"total": len(problems), "by_kind": dict(collections.Counter(p.kind for p in problems)),
                     "items": [_problem_dict(p) for p in problems]},
    }


def _problem_dict(problem: Problem) -> dict[str, str]:
    return {"kind": problem.kind, "path": problem.path, "message": problem.message}


def _sorted_counts(counter: collections.Counter) -> dict[str, int]:
    """Most common first; None (the field was absent) shows as "(absent)"."""
    return {("(absent)" if k is None else str(k)): v for k, v in counter.most_common()}


def format_summary(summary: dict[str, Any], max_problems: int = 20) -> str:
    """Human-readable report of one `summarize` result."""
    s = summary
    out = [f"== {s['split']}  ({s['json']})",
           f"conversations {s['conversations']}   turns {s['turns']}   utterances {s['utterances']}   "
           f"turns with chain_of_empathy {s['turns_with_coe']}/{s['turns']}"]
    names = {"topic": "topic", "speaker_emotion": "speaker emotion", "age": "age (speaker+listener)",
             "gender": "gender", "timbre": "timbre"}
    for field, name in names.items():
        dist = s["labels"][field]
        text = ", ".join(f"{k} {v}" for k, v in dist.items()) or "-"
        out.append(f"{name:<24}{text}")
    a = s["avatar_ids"]
    out.append(f"{'avatar ids':<24}{a['distinct']} distinct" + (f" ({a['min']}..{a['max']})" if a["distinct"] else ""))
    if a["outside_range"]:
        out.append(f"{'':<24}outside 0..{labels.NUM_AVATARS - 1}: {a['outside_range']}")
    for field, values in s["unknown_labels"].items():
        out.append(f"{'':<24}{names[field]} values outside the label set: {values}")
    for kind, name in (("audio", "wav"), ("video", "mp4")):
        d = s["durations"].get(kind)
        if d is None:
            continue
        if d["files"]:
            total = f"{d['hours']:.2f} h" if d["hours"] >= 0.1 else f"{d['hours'] * 3600:.1f} s"
            out.append(f"{name + ' durations':<24}{d['files']} files, mean {d['mean']:.2f} s, min {d['min']:.2f} s, "
                       f"max {d['max']:.2f} s, total {total}")
        else:
            out.append(f"{name + ' durations':<24}no readable files")
    p = s["problems"]
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(p["by_kind"].items()))
    out.append(f"{'problems':<24}{p['total']}" + (f" ({by_kind})" if by_kind else ""))
    for item in p["items"][:max_problems]:
        out.append(f"  {item['kind']:<12}{item['path']}: {item['message']}")
    if p["total"] > max_problems:
        out.append(f"  ... and {p['total'] - max_problems} more")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merg-jax inspect-data",
                                description="Counts, label distributions, media durations and problems of an "
                                            "AvaMERG-format dataset.")
    p.add_argument("dir", help="dataset root (holds {split}.json and the media folders)")
    p.add_argument("--split", action="append", dest="splits", metavar="S",
                   help="split to inspect (repeatable); default: every one of train/valid/test whose JSON exists")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any problem is found")
    p.add_argument("--audio-template", default=DEFAULT_AUDIO_TEMPLATE, metavar="T",
                   help="wav path under DIR; fields {split} {conversation_id} {n} {turn_id}; default %(default)s")
    p.add_argument("--video-template", default=DEFAULT_VIDEO_TEMPLATE, metavar="T",
                   help="mp4 path under DIR; default %(default)s")
    p.add_argument("--json-name", default=DEFAULT_JSON_NAME, metavar="T", help="split JSON; default %(default)s")
    p.add_argument("--check-media", default="exists", choices=CHECK_MEDIA,
                   help="how hard to check media: none, exists (non-empty file; default), decode (slow)")
    p.add_argument("--max-problems", type=int, default=20, metavar="N", help="problems listed per split")
    p.add_argument("--no-durations", action="store_true", help="skip reading media headers for durations")
    p.add_argument("--json", action="store_true", help="print one JSON object per split instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help exits 0, bad usage exits 2
        return int(e.code or 0)
    root = pathlib.Path(args.dir)
    if not root.is_dir():
        print(f"merg-jax inspect-data: {root} is not a directory", file=sys.stderr)
        return 2
    splits = args.splits or available_splits(root, args.json_name)
    if not splits:
        print(f"merg-jax inspect-data: no split JSON under {root} (looked for "
              f"{', '.join(args.json_name.format(split=s) for s in ('train', 'valid', 'test'))}); "
              f"name one with --split", file=sys.stderr)
        return 2
    logging.getLogger("merg_jax.data.avamerg").setLevel(logging.ERROR)  # problems are printed below instead
    total_problems = 0
    for name in splits:
        try:
            split = read_split(root, name, audio_template=args.audio_template, video_template=args.video_template,
                               json_name=args.json_name, check_media=args.check_media, progress=True)
        except DataError as e:
            print(f"merg-jax inspect-data: {e}", file=sys.stderr)
            return 2
        summary = summarize(split, durations=not args.no_durations, progress=True)
        total_problems += summary["problems"]["total"]
        if args.json:
            print(json.dumps(summary))
        else:
            print(format_summary(summary, args.max_problems))
            print()
    if args.strict and total_problems:
        print(f"merg-jax inspect-data: {total_problems} problem(s) found (--strict)", file=sys.stderr)
        return 1
    return 0
