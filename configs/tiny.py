"""A tiny LLM that trains on 2 CPU cores in a minute or two: the default of the main job and the tests.

Run:  merg-jax train --config configs/tiny.py [--config.train.steps=50 ...]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(
        vocab_size=384,  # the byte tokenizer's 256 bytes + specials, rounded up
        hidden_size=128, intermediate_size=344, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
        rms_norm_eps=1e-6, rope_theta=10000.0, rope_llama3_scaling=None, max_position_embeddings=512,
        tie_embeddings=True, attention_bias=False, mlp_bias=False, dtype="float32", param_dtype="float32",
        remat="none", scan_layers=True, attention_impl="auto",
        lora_rank=0, lora_alpha=32.0, lora_dropout=0.0, lora_targets=("q", "k", "v", "o"))
    c.model = ml_collections.ConfigDict(c.model)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.train = ml_collections.ConfigDict(dict(
        # 4 rows of 256 byte tokens (~7 packed exchanges of the built-in corpus) per step; 500 steps are ~12 epochs
        # of it, about 1.5 minutes on 2 CPU cores.
        steps=500, batch_size=4, seq_len=256, learning_rate=3e-3, warmup_frac=0.1, b1=0.9, b2=0.95,
        weight_decay=0.0, grad_clip=1.0, log_every=50, lora_only=False, dropout_seed=1,
        output_dir="runs/tiny"))
    c.generate = ml_collections.ConfigDict(dict(
        prompt="Human: I failed my driving test today. ### Assistant:", max_new_tokens=120,
        temperature=0.0, top_k=0, top_p=1.0))
    return c
