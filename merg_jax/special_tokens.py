"""The model's special token strings: the four roles, the media placeholders and the Chain-of-Empathy markers.

A leaf module: the tokenizers (`merg_jax.data.tokenizer`) give these strings ids, and the models look the ids up by
these names, so neither layer imports the other for them.
"""

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
AUD, VID = "<Aud>", "<Vid>"
EMO, EMO_END, RESPONSE, RESPONSE_END = "<emo>", "</emo>", "<response>", "</response>"
ROLE_TOKENS: dict[str, str] = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK}
MARKER_TOKENS: tuple[str, ...] = (AUD, VID, EMO, EMO_END, RESPONSE, RESPONSE_END)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK) + MARKER_TOKENS

__all__ = ["AUD", "BOS", "EMO", "EMO_END", "EOS", "MARKER_TOKENS", "PAD", "RESPONSE", "RESPONSE_END", "ROLE_TOKENS",
           "SPECIAL_TOKENS", "UNK", "VID"]
