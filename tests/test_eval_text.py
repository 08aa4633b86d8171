"""merg_jax.eval: text metrics checked against independent references written here, the paper table, and the
challenge submission (round trip, every kind of invalid file, atomic write)."""

from __future__ import annotations

import json
import math
import os
import random
import re

import pytest
import sacrebleu

from merg_jax.eval import paper, submission as sub
from merg_jax.eval.submission import SubmissionError
from merg_jax.eval.text_metrics import accuracy, bleu, distinct_n, rouge_l, text_metrics, tokenize

# ---------------------------------------------------------------------------------------------------- Dist-n


def naive_distinct(texts: list[str], n: int) -> float:
    """Independent Dist-n: tokens by str.split on pre-spaced text, n-grams by nested loops into a set of tuples."""
    distinct: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.split()
        for start in range(len(words)):
            if start + n > len(words):
                break
            gram = []
            for k in range(n):
                gram.append(words[start + k])
            distinct.add(tuple(gram))
            total += 1
    return 100.0 * len(distinct) / total if total else 0.0


def test_tokenize_is_the_documented_regex():
    assert tokenize("Don't WORRY, it's fine!") == ["don", "'", "t", "worry", ",", "it", "'", "s", "fine", "!"]
    assert tokenize("") == []


def test_distinct_hand_computed():
    texts = ["I am so sorry .", "I am happy", "sorry"]
    # unigrams: i am so sorry . | i am happy | sorry -> 9 in all; distinct {i, am, so, sorry, ., happy} = 6
    assert distinct_n(texts, 1) == pytest.approx(100 * 6 / 9)
    # bigrams within texts only: (i am)(am so)(so sorry)(sorry .) | (i am)(am happy) | none -> 6; distinct 5.
    # ("." , "i") across the text boundary must not be counted.
    assert distinct_n(texts, 2) == pytest.approx(100 * 5 / 6)
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_distinct_matches_naive_count_on_random_words():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)] + ["!", "?"]
    for trial in range(20):
        # Lower-case words and lone punctuation separated by spaces: regex tokens == str.split tokens.
        texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 8))]
        for n in (1, 2, 3):
            assert distinct_n(texts, n) == pytest.approx(naive_distinct(texts, n)), (trial, n, texts)


# ---------------------------------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_100():
    refs = ["I am so sorry to hear that .", "That sounds like a lot of fun !"]
    scores = bleu(refs, refs)
    assert set(scores) == {"bleu1", "bleu2", "bleu4"}
    for v in scores.values():
        assert v == pytest.approx(100.0)


def test_bleu1_hand_computed_with_brevity_penalty():
    hyp, ref = "the cat the cat", "the cat sat on the mat"
    # Clipped unigram matches: "the" x2 (ref has 2) + "cat" x1 of 2 (ref has 1) = 3 of c = 4 hypothesis words.
    c, r = 4, 6
    p1 = 3 / 4
    bp = math.exp(1 - r / c)  # c < r
    assert bleu([hyp], [ref])["bleu1"] == pytest.approx(100 * bp * p1)
    # The same pooled over a corpus: counts add before the ratio (corpus BLEU, not a mean of sentence BLEUs).
    hyps, refs = [hyp, "a dog"], [ref, "a dog"]
    c2, r2, m2 = 4 + 2, 6 + 2, 3 + 2
    assert bleu(hyps, refs)["bleu1"] == pytest.approx(100 * math.exp(1 - r2 / c2) * m2 / c2)


def test_bleu4_matches_sacrebleu_default():
    hyps = ["the cat the cat", "he is sad about his dog .", "wow , congratulations !"]
    refs = ["the cat sat on the mat", "he is very sad about the dog .", "wow , congratulations on the new job !"]
    assert bleu(hyps, refs)["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert bleu(hyps[:1], refs[:1])["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps[:1], [refs[:1]]).score)


# ---------------------------------------------------------------------------------------------------- ROUGE-L


def lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table[len(a)][len(b)]


def reference_rouge_l(hyp: str, ref: str) -> float:
    # rouge_score's default tokenizer: lower-case, runs of [a-z0-9], no stemming.
    h, r = re.findall(r"[a-z0-9]+", hyp.lower()), re.findall(r"[a-z0-9]+", ref.lower())
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def test_rouge_l_matches_own_lcs():
    hyps = ["I am so sorry to hear that, truly.", "That is great news!", "nothing in common", "a b c d e"]
    refs = ["I'm sorry to hear that.", "What great news that is!", "zzz", "e d c b a b c"]
    expected = 100 * sum(reference_rouge_l(h, r) for h, r in zip(hyps, refs)) / len(hyps)
    assert rouge_l(hyps, refs) == pytest.approx(expected)
    rng = random.Random(1)
    words = ["a", "b", "c", "d", "e"]
    for _ in range(10):
        h = " ".join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        assert rouge_l([h], [r]) == pytest.approx(100 * reference_rouge_l(h, r))


# ---------------------------------------------------------------------------------------------------- accuracy


def test_accuracy_with_none_golds_and_predictions():
    pred = ["sad", "happy", None, "angry", "fear"]
    gold = ["sad", None, "angry", "angry", "sad"]
    # labelled positions: 0 (right), 2 (None prediction: wrong), 3 (right), 4 (wrong) -> 2 / 4
    assert accuracy(pred, gold) == pytest.approx(0.5)
    assert accuracy(["sad"], [None]) is None
    assert accuracy([], []) is None
    with pytest.raises(ValueError, match="predictions"):
        accuracy(["sad"], ["sad", "sad"])


def test_text_metrics_keys_and_length_check():
    m = text_metrics(["I am sorry .", "great !"], ["I am so sorry .", "great news !"])
    assert set(m) == {"dist1", "dist2", "bleu1", "bleu2", "bleu4", "rougeL"}
    assert m["dist1"] == pytest.approx(naive_distinct(["i am sorry .", "great !"], 1))
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        text_metrics(["a", "b"], ["a"])


# ---------------------------------------------------------------------------------------------------- paper table


def test_comparison_table_puts_paper_beside_ours():
    ours = {"emotion_acc": 0.4213, "dist1": 3.5, "dist2": 20.25, "bleu4": 1.5, "num_turns": 120, "coe_valid": 0.9}
    table = paper.comparison_table(ours, ablation={"emotion_acc": 0.3}, dataset="AvaMERG-mini test")
    assert "48.51" in table and "40.96" in table and "45.89" in table
    acc_row = next(line for line in table.splitlines() if line.startswith("| Emotion Acc (%)"))
    assert "42.13" in acc_row and "30.00" in acc_row  # shares printed as percent
    bleu_row = next(line for line in table.splitlines() if line.startswith("| BLEU-4"))
    assert bleu_row.split("|")[2].strip() == "–" and "1.50" in bleu_row  # the paper has no BLEU
    assert "AvaMERG-mini test" in table and paper.PAPER_DATASET in table
    # Without an ablation there is no ablation column; without AV metrics no AV table.
    plain = paper.comparison_table({"emotion_acc": None})
    assert "blanked" not in plain and "MOS" not in plain
    with_av = paper.comparison_table({"ssim": 0.41})
    assert "4.16" in with_av and "0.41" in with_av


def test_comparison_table_reads_the_eval_video_and_speech_sections():
    ours = {"emotion_acc": 0.3, "num_turns": 4,
            "video": {"ssim": {"generated": 0.8712, "still": 0.8655}, "ssim_mouth": {"generated": 0.77, "still": 0.65},
                      "cpbd": {"generated": 0.1234, "real": 0.2345},
                      "sync": {"generated": {"lse_c": 0.676, "lse_d": 9.1}, "real": {"lse_c": 0.808, "lse_d": 8.0}},
                      "emotion": {"label_driven": 0.26, "still": 0.11}, "real_time_factor": 0.55},
            "speech": {"mcd_db": 7.5, "mcd_baseline_mean_training_mc": 9.25, "wer_generated": 0.4}}
    table = paper.comparison_table(ours)
    row = lambda start: next(line for line in table.splitlines() if line.startswith(start))  # noqa: E731
    # the paper's rows: Empatheia, ground truth, ours, our real clips
    assert [c.strip() for c in row("| CPBD").split("|")[2:6]] == ["0.15", "0.20", "0.12", "0.23"]
    assert [c.strip() for c in row("| SSIM").split("|")[3:6]] == ["1.00", "0.87", "1.00"]
    assert [c.strip() for c in row("| Sync confidence").split("|")[4:6]] == ["0.68", "0.81"]
    assert row("| MOS").split("|")[4].strip() == "–"  # human ratings: we have none
    # our own figures, each beside its baseline; a row whose figure is absent is left out
    assert [c.strip() for c in row("| speech: MCD").split("|")[2:4]] == ["7.50", "9.25 (the training set's mean "
                                                                          "mel-cepstrum)"]
    assert "the still portrait" in row("| video: SSIM, mouth region") and "0.77" in row("| video: SSIM, mouth")
    assert "0.26" in row("| video: Emotion seen") and "WER" in table and "recogniser" in row("| speech: WER")
    assert "Emotion heard" not in table
    assert paper.media_table({"emotion_acc": 0.3}) == ""


# ---------------------------------------------------------------------------------------------------- submission

ROWS = [
    {"conversation_id": "00042", "turn_id": "10", "emotion": "sad", "response": "I'm sorry — that's hard."},
    {"conversation_id": 7, "turn_id": 0, "emotion": "happy", "response": "Congratulations!"},
    {"conversation_id": "00042", "turn_id": "9", "emotion": "angry", "response": "That is unfair."},
    {"conversation_id": "00042", "turn_id": "0", "emotion": "fear", "response": "Oh no."},
    {"conversation_id": "x", "turn_id": "b", "emotion": "joyful", "response": "Nice."},
    {"conversation_id": "x", "turn_id": "a", "emotion": "sad", "response": "Hm."},
]


def test_build_write_validate_round_trip(tmp_path):
    built = sub.build_submission(ROWS)
    assert [c["conversation_id"] for c in built] == ["00042", "7", "x"]  # first-seen order, ids as str
    assert [t["turn_id"] for t in built[0]["turns"]] == ["0", "9", "10"]  # numeric order
    assert built[0]["emotion"] == "sad"  # emotion of turn "10", the last one
    assert [t["turn_id"] for t in built[2]["turns"]] == ["a", "b"] and built[2]["emotion"] == "joyful"
    path = sub.write_submission(tmp_path / "out", built)
    assert path == tmp_path / "out" / "submission.json"
    text = path.read_text(encoding="utf-8")
    assert "—" in text and "\n  {" in text  # ensure_ascii=False, indent 2
    assert json.loads(text) == built
    sub.validate_submission(path)
    sub.validate_submission(path.parent)  # a directory means its submission.json
    sub.validate_submission(built)
    with pytest.raises(SubmissionError, match="appears twice"):
        sub.build_submission(ROWS + [ROWS[0]])
    # The dataclass form writes the same file.
    typed = [sub.SubmissionConversation(c["conversation_id"], c["emotion"],
                                        tuple(sub.SubmissionTurn(**t) for t in c["turns"])) for c in built]
    assert json.loads(sub.write_submission(tmp_path / "typed", typed).read_text(encoding="utf-8")) == built


def test_reply_media_names_and_media_check(tmp_path):
    assert sub.reply_utterance_number("0") == 2 and sub.reply_utterance_number(3) == 8
    assert sub.reply_media_name("01118", 2, "wav") == "dia01118utt2.wav"
    assert sub.reply_media_name("01118", 4, ".mp4") == "dia01118utt4.mp4"
    for bad in (("../x", 2, "wav"), ("1", 0, "wav"), ("1", 2, "avi")):
        with pytest.raises(ValueError):
            sub.reply_media_name(*bad)
    built = sub.build_submission([{"conversation_id": "01118", "turn_id": "1", "emotion": "sad", "response": "ok"}])
    path = sub.write_submission(tmp_path, built)
    sub.validate_submission(path, media_dir=tmp_path)  # no media at all: allowed
    (tmp_path / "dia01118utt4.wav").write_bytes(b"RIFF")
    sub.validate_submission(path, media_dir=tmp_path)
    (tmp_path / "dia01118utt4.mp4").write_bytes(b"")
    with pytest.raises(SubmissionError, match=r"\[0\]\.turns\[0\]: reply media .*dia01118utt4\.mp4.* is empty"):
        sub.validate_submission(path, media_dir=tmp_path)
    with pytest.raises(SubmissionError, match="does not exist"):
        sub.validate_submission(path, media_dir=tmp_path / "nope")


def _valid() -> list[dict]:
    return [
        {"conversation_id": "1", "emotion": "sad", "turns": [{"turn_id": "0", "response": "a"}]},
        {"conversation_id": "2", "emotion": "joyful",
         "turns": [{"turn_id": "0", "response": "b"}, {"turn_id": "1", "response": "c"}]},
    ]


def _dig(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _setting(value, *path):
    """A function taking _valid() and returning it with the field at `path` set to `value`."""
    def apply(obj):
        _dig(obj, path[:-1])[path[-1]] = value
        return obj
    return apply


def _dropping(*path):
    def apply(obj):
        del _dig(obj, path[:-1])[path[-1]]
        return obj
    return apply


# (name, _valid() -> invalid object, the expected message)
INVALID = [
    ("not a list", lambda o: {"conversations": o},
     r"submission\.json: expected a JSON list of conversations, got object"),
    ("item not object", _setting("x", 1), r": \[1\]: expected an object .* got string"),
    ("missing key", _dropping(0, "emotion"), r": \[0\]: missing key 'emotion'"),
    ("extra key", _setting(1, 0, "score"), r": \[0\]: unexpected key 'score'"),
    ("numeric id", _setting(1, 0, "conversation_id"), r": \[0\]\.conversation_id: expected a string, got number"),
    ("unsafe id", _setting("a/b", 0, "conversation_id"), r": \[0\]\.conversation_id: 'a/b' cannot"),
    ("duplicate conversation", _setting("1", 1, "conversation_id"),
     r": \[1\]\.conversation_id: duplicate '1' \(first at \[0\]\)"),
    ("null emotion", _setting(None, 1, "emotion"), r": \[1\]\.emotion: expected a string, got null"),
    ("unknown emotion", _setting("happiness", 1, "emotion"), r": \[1\]\.emotion: 'happiness' is not"),
    ("turns not list", _setting({}, 0, "turns"), r": \[0\]\.turns: expected a list, got object"),
    ("empty turns", _setting([], 0, "turns"), r": \[0\]\.turns: expected at least one turn"),
    ("turn extra key", _setting("sad", 1, "turns", 1, "emotion"), r": \[1\]\.turns\[1\]: unexpected key 'emotion'"),
    ("turn missing key", _dropping(1, "turns", 0, "response"), r": \[1\]\.turns\[0\]: missing key 'response'"),
    ("numeric turn id", _setting(1, 1, "turns", 1, "turn_id"),
     r": \[1\]\.turns\[1\]\.turn_id: expected a string, got number"),
    ("duplicate turn", _setting("0", 1, "turns", 1, "turn_id"),
     r": \[1\]\.turns\[1\]\.turn_id: duplicate '0' \(first at \[1\]\.turns\[0\]\)"),
    ("same turn number", _setting("00", 1, "turns", 1, "turn_id"),
     r": \[1\]\.turns\[1\]\.turn_id: '00' is the same turn number as '0'"),
    ("null response", _setting(None, 1, "turns", 0, "response"),
     r"submission\.json: \[1\]\.turns\[0\]\.response: expected a string, got null"),
    ("blank response", _setting("  ", 0, "turns", 0, "response"),
     r": \[0\]\.turns\[0\]\.response: expected a non-empty string"),
]


@pytest.mark.parametrize("fn,pattern", [(f, p) for _, f, p in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_files_name_the_field(tmp_path, fn, pattern):
    obj = fn(_valid())
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(SubmissionError, match=pattern) as info:
        sub.validate_submission(path)
    assert str(path) in str(info.value)
    with pytest.raises(SubmissionError, match=pattern.replace(r"submission\.json", "")):
        sub.validate_submission(obj)  # in memory: same field path


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(SubmissionError, match=r"submission\.json: not valid JSON: .* line 1"):
        sub.validate_submission(path)
    with pytest.raises(SubmissionError, match="no such file"):
        sub.validate_submission(tmp_path / "other.json")


def test_write_is_atomic_and_validates_first(tmp_path, monkeypatch):
    good = _valid()
    path = sub.write_submission(tmp_path, good)
    assert sorted(os.listdir(tmp_path)) == ["submission.json"]
    before = path.read_bytes()
    bad = _setting(None, 0, "turns", 0, "response")(_valid())
    with pytest.raises(SubmissionError, match=r"\[0\]\.turns\[0\]\.response"):
        sub.write_submission(tmp_path, bad)
    # Failing during serialisation (validation off): the old file is untouched and no temp file remains.
    unserialisable = _setting(object(), 0, "turns", 0, "response")(_valid())
    with pytest.raises(TypeError):
        sub.write_submission(tmp_path, unserialisable, validate=False)
    # Failing after the temp file exists (at the rename): the temp file is removed too.
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(sub.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        sub.write_submission(tmp_path, _valid())
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["submission.json"]
    assert path.read_bytes() == before
