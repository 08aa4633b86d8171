"""Text metrics of the AvaMERG paper's text table: Dist-1/2, BLEU-1/2/4, ROUGE-L and emotion accuracy.

Formats: `hypotheses` and `references` are equally long sequences of str, one reference per hypothesis (AvaMERG
has one gold reply per turn). Scores are floats on the 0-100 scale except `accuracy`, which is a share in [0, 1]
(the metrics dict keeps accuracies as shares; `merg_jax.eval.paper` prints them as percent like the paper).

Why these definitions (DESIGN §6 "Metrics"):
- Dist-n is the paper's (and CEM/CASE's) corpus-level Distinct-n. Their code tokenises with NLTK; we use a fixed
  regex (`tokenize`) so the numbers need no NLTK data and are reproducible, and say so beside every figure.
- BLEU is sacrebleu's corpus BLEU, the standard reproducible implementation, rather than NLTK's sentence BLEU
  averaged over the split (what some ERG papers report): our BLEU is comparable to other sacrebleu numbers,
  not to those papers' BLEU.
- ROUGE-L is Google's `rouge_score` (the reimplementation of ROUGE-1.5.5).
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["accuracy", "bleu", "distinct_n", "rouge_l", "text_metrics", "tokenize"]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: exactly `re.findall(r"\\w+|[^\\w\\s]", text.lower())`.

    These are the paper-style Dist-n tokens: words and single punctuation marks, so "don't!" -> ["don", "'", "t",
    "!"]. The CEM/CASE code (whose Dist-n the paper compares to) tokenised with NLTK's word_tokenize, which splits
    contractions differently ("do", "n't"); the regex needs no NLTK data, and the difference is small but real, so
    reports say which tokenizer produced the figures.
    """
    return _TOKEN_RE.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """The paper's Dist-n: 100 x (distinct n-grams) / (all n-grams) over a whole split.

    n-grams are taken within each text (never across two replies), and both counts are pooled over all texts, so
    this is corpus-level diversity, not a mean of per-reply ratios (which would reward short replies). Texts with
    fewer than n tokens contribute nothing. Returns 0.0 when the split has no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = tokenize(text)
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return 100.0 * len(seen) / total if total else 0.0


def _check_lengths(what: str, a: Sequence, b: Sequence, names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} {names[0]} but {len(b)} {names[1]}; they must pair up one to one")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1, BLEU-2 and BLEU-4 (keys bleu1, bleu2, bleu4) on the 0-100 scale.

    sacrebleu `BLEU(max_ngram_order=k)` with its defaults otherwise: the "13a" tokenizer (mteval's: punctuation
    split off, case kept, i.e. case-sensitive), "exp" smoothing (zero n-gram matches counted as 1/2^i, relevant only
    when some order has no match at all), no effective order, one reference per hypothesis. BLEU-k is the geometric
    mean of clipped 1..k-gram precisions, pooled over the corpus, times the brevity penalty exp(1 - r/c) when
    c < r. bleu4 equals `sacrebleu.corpus_bleu(hypotheses, [references]).score`. An empty corpus scores 0.0.
    """
    _check_lengths("bleu", hypotheses, references, ("hypotheses", "references"))
    if not hypotheses:
        return {"bleu1": 0.0, "bleu2": 0.0, "bleu4": 0.0}
    from sacrebleu.metrics import BLEU  # imported on use: the rest of the package needs no sacrebleu

    hyps, refs = list(hypotheses), [list(references)]
    return {f"bleu{k}": float(BLEU(max_ngram_order=k).corpus_score(hyps, refs).score) for k in (1, 2, 4)}


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure x 100 over the pairs, via `rouge_score.rouge_scorer.RougeScorer(["rougeL"])`.

    rouge_score's defaults: its tokenizer lower-cases, keeps only [a-z0-9] runs (punctuation dropped), no stemming.
    ROUGE-L of one pair: LCS length l over the token sequences, P = l/|hyp|, R = l/|ref|, F = 2PR/(P+R) (0 when
    l = 0). "rougeL" is sentence-level LCS (not the summary-level "rougeLsum"), right for one-sentence replies.
    An empty corpus scores 0.0.
    """
    _check_lengths("rouge_l", hypotheses, references, ("hypotheses", "references"))
    if not hypotheses:
        return 0.0
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # rouge_score's argument order is (target, prediction).
    total = sum(scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references))
    return 100.0 * total / len(hypotheses)


def accuracy(predicted: Sequence[str | None], gold: Sequence[str | None]) -> float | None:
    """Share in [0, 1] of positions where predicted == gold, among positions whose gold label is not None.

    A None gold means "no label" (the test split has no chain_of_empathy): the position is left out rather than
    counted wrong. A None prediction (e.g. the Chain-of-Empathy did not parse) counts as wrong, because the model
    failed to name an emotion. Returns None when no position has a gold label, so callers never report 0 % for
    "not measured".
    """
    _check_lengths("accuracy", predicted, gold, ("predictions", "gold labels"))
    labelled = [(p, g) for p, g in zip(predicted, gold) if g is not None]
    if not labelled:
        return None
    return sum(p is not None and p == g for p, g in labelled) / len(labelled)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """dist1, dist2 (of the hypotheses alone), bleu1, bleu2, bleu4 and rougeL, all on the 0-100 scale.

    Dist-n measures the diversity of what the model wrote, so it ignores the references; the others compare each
    hypothesis with its one reference. Raises ValueError when the two lists differ in length.
    """
    _check_lengths("text_metrics", hypotheses, references, ("hypotheses", "references"))
    return {
        "dist1": distinct_n(hypotheses, 1),
        "dist2": distinct_n(hypotheses, 2),
        **bleu(hypotheses, references),
        "rougeL": rouge_l(hypotheses, references),
    }
