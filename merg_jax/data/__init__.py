"""Data: the AvaMERG reader, the AvaMERG-mini generator, media features, tokenizers and the CoE template, and
the grain / tfds pipelines.

Modules (imported on use; the pipeline pulls in grain):
  avamerg        typed records from a split JSON, media path templates, problems reported with their paths
  media          wav / mp4 decoding;  features: log-mel and resampled video frames (FeatureConfig)
  labels         the label sets (7 + 32 emotions, age, gender, timbre, 65 avatars, 10 topics)
  tokenizer      local Hugging Face tokenizers or a byte-level BPE, with the special tokens
  templates      the Vicuna-style prompt with <Aud>/<Vid> slots and the Chain-of-Empathy target (parse_target)
  pipeline       grain: shard → shuffle → decode/features → tokenise → static batches, resumable state
  tfds_avamerg   array_record builder read by the same pipeline
  mini/          the AvaMERG-mini generator (dialogues, espeak-ng speech, procedural talking avatars)
  byte_tokenizer, builtin_corpus   the byte tokenizer and text corpus of the tiny LLM demo
"""

from merg_jax.data.avamerg import (ChainOfEmpathy, Conversation, DataError, Problem, Profile, Split, Turn, Utterance,
                                   read_split)
from merg_jax.data.builtin_corpus import EMOTIONS, PROMPT_TEMPLATE, Exchange, builtin_exchanges
from merg_jax.data.byte_tokenizer import ByteTokenizer
from merg_jax.data.features import FeatureConfig, log_mel, video_frames
from merg_jax.data.templates import encode_example, encode_prompt, parse_target, render_prompt, render_target
from merg_jax.data.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "EMOTIONS", "PROMPT_TEMPLATE", "ByteTokenizer", "ChainOfEmpathy", "Conversation", "DataError", "Exchange",
    "FeatureConfig", "Problem", "Profile", "Split", "TextTokenizer", "Turn", "Utterance", "builtin_exchanges",
    "encode_example", "encode_prompt", "load_tokenizer", "log_mel", "parse_target", "read_split",
    "render_prompt", "render_target", "video_frames",
]
