"""Fake real-weights files, written in the formats users bring (test-only; needs torch):

    vicuna, hf = write_vicuna_dir(tmp_path / "vicuna", texts, hidden_size=32, ...)   # HF LLaMA dir + tokenizer
    pth, ib = write_imagebind_pth(tmp_path / "imagebind_huge.pth", ReferenceConfig(...))

`write_vicuna_dir` saves a random `LlamaForCausalLM` with `save_pretrained` (safetensors, config.json) beside a
byte-level BPE tokenizer saved by transformers (`tokenizer.json`, `tokenizer_config.json`, `<s>`/`</s>`/`<unk>`),
as a converted Vicuna download holds. `write_imagebind_pth` `torch.save`s the state dict of
`tests/imagebind_reference.ImageBindReference` (ImageBind's own tensor names) with random weights, plus a few
tensors of the modalities merg_jax does not import, as `imagebind_huge.pth` holds. Both return the torch model for
comparisons.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterable


def write_vicuna_dir(path: str | pathlib.Path, texts: Iterable[str], *, tokenizer_vocab: int = 400, seed: int = 0,
                     **llama_config):
    """(path, torch LlamaForCausalLM): a random LLaMA whose vocabulary is the tokenizer's, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.hf_llama_reference import make_hf_llama

    path = pathlib.Path(path)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=tokenizer_vocab, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    _, model = make_hf_llama(path.parent, seed=seed, subdir=path.name, vocab_size=len(tok), bos_token_id=1,
                             eos_token_id=2, **llama_config)
    tok.save_pretrained(path)
    return path, model


def write_imagebind_pth(path: str | pathlib.Path, cfg, *, seed: int = 0):
    """(path, ImageBindReference in eval mode): a random ImageBind vision + audio state dict saved with torch.save,
    LayerNorm scales around 1 and the audio logit scale ImageBind's 20."""
    import torch

    from tests.imagebind_reference import ImageBindReference

    path = pathlib.Path(path)
    torch.manual_seed(seed)
    model = ImageBindReference(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = ("norm" in name or "pre_transformer_layer" in name or name.startswith("modality_heads"))
            offset = 1.0 if norm and p.ndim == 1 and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + offset)
        model.modality_postprocessors.audio[1].log_logit_scale.fill_(math.log(cfg.audio_logit_scale))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["modality_preprocessors.text.token_embedding.weight"] = torch.randn(50, 16, generator=gen)
    state["modality_trunks.depth.blocks.0.attn.in_proj_weight"] = torch.randn(48, 16, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, model
