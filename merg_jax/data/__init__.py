"""Data: tokenizers, corpora and batching inputs.

Now: a byte-level tokenizer (`ByteTokenizer`) and a built-in corpus of empathetic exchanges
(`builtin_exchanges`). Planned: the AvaMERG reader, the AvaMERG-mini generator, audio/video features, the
CoE template, grain pipelines and a tfds builder.
"""

from merg_jax.data.builtin_corpus import EMOTIONS, PROMPT_TEMPLATE, Exchange, builtin_exchanges
from merg_jax.data.byte_tokenizer import ByteTokenizer, pad_batch

__all__ = ["EMOTIONS", "PROMPT_TEMPLATE", "ByteTokenizer", "Exchange", "builtin_exchanges", "pad_batch"]
