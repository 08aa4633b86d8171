"""Evaluation: the text metrics of the AvaMERG paper, its published numbers beside ours, and the MERG challenge
submission file.

Modules:
  text_metrics  Dist-1/2 (paper-style, regex tokens), sacrebleu BLEU-1/2/4, rouge_score ROUGE-L, emotion accuracy
  paper         the paper's numbers on the AvaMERG test set as data; comparison_table() -> markdown
  submission    the ACM MM'25 MERG challenge submission.json: build, atomic write, strict validation, media names

  evaluate      `merg-jax eval`: a model answers every turn of a split (merg_jax.infer) and the replies are scored
  cli           the command

Speech and video metrics (CPBD, SSIM, LSE-C/D, MCD) join this package later. The metric modules import only
merg_jax.data, so they score any prediction file, whoever produced it; `evaluate` drives a model through
merg_jax.infer.
"""

from merg_jax.eval.paper import PAPER_ABLATIONS, PAPER_AV, PAPER_DATASET, PAPER_TEXT, comparison_table
from merg_jax.eval.submission import (SubmissionConversation, SubmissionError, SubmissionTurn, build_submission,
                                      reply_media_name, reply_utterance_number, validate_submission, write_submission)
from merg_jax.eval.text_metrics import accuracy, bleu, distinct_n, rouge_l, text_metrics, tokenize

__all__ = [
    "PAPER_ABLATIONS", "PAPER_AV", "PAPER_DATASET", "PAPER_TEXT", "SubmissionConversation", "SubmissionError",
    "SubmissionTurn", "accuracy", "bleu", "build_submission", "comparison_table", "distinct_n", "reply_media_name",
    "reply_utterance_number", "rouge_l", "text_metrics", "tokenize", "validate_submission", "write_submission",
]
