"""The paper's recipe at its scale: Vicuna-7B v0 with LoRA r=8 α=32 dropout 0.1 on q,k,v,o, ImageBind-huge's
vision and audio towers (frozen), the authors' optimiser settings (Adam β=(0.9, 0.95), peak lr 5e-4, warmup 10%
then decay, global batch 8, length 512, 6 epochs of stage a), then the Content Synchronizer (b), the Style
Disentangler (c) and its classifiers (d) with the LLM frozen.

Run, on accelerators, with the user's own weights (nothing is downloaded):
    merg-jax train --config configs/empatheia_7b.py --config.data.root=AVAMERG_DIR \
        --config.init.llm=VICUNA_DIR --config.init.imagebind=imagebind_huge.pth
`init.llm` is a Hugging Face LLaMA directory (safetensors); `init.imagebind` ImageBind's state dict (.pth or
.safetensors). Without them the model starts from random weights (shape checks, smoke runs).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = "coe,content,style,style_cls"
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=32128,  # Vicuna's 32000 + our 7 special tokens, padded to 128 (resize_vocab)
        hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
        num_kv_heads=32, head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, rope_llama3_scaling=None,
        max_position_embeddings=2048, tie_embeddings=False, attention_bias=False, mlp_bias=False,
        dtype="bfloat16", param_dtype="float32", remat="dots_no_batch", scan_layers=True, attention_impl="auto",
        lora_rank=8, lora_alpha=32.0, lora_dropout=0.1, lora_targets=("q", "k", "v", "o")))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.train = ml_collections.ConfigDict(dict(
        steps=18522, batch_size=8, seq_len=512, learning_rate=5e-4, warmup_frac=0.1, b1=0.9, b2=0.95,
        weight_decay=0.0, grad_clip=1.0, log_every=50, lora_only=True, dropout_seed=1, accum_steps=1,
        eval_every=0, eval_batches=50, max_nonfinite_in_a_row=10, compute_dtype="",
        output_dir="runs/empatheia_7b"))
    # Per stage (merg_jax/train/stages.py); train.* are the defaults. 18522 steps of 8 = 6 epochs of the 24,696
    # training dialogues' turns (~24.7k), as the authors' loader uses every dialogue once per epoch.
    c.stage = ml_collections.ConfigDict(dict(
        coe=dict(steps=18522, groups="lora,projections", eval_every=2000),
        content=dict(steps=3000, learning_rate=1e-4),
        style=dict(steps=3000, learning_rate=1e-4),
        style_cls=dict(steps=1000, learning_rate=1e-4)))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.targets = ml_collections.ConfigDict(dict(kind="reply_statistics", seed=0))
    # Imported weights (paths on the user's disk; empty: random initialisation).
    c.init = ml_collections.ConfigDict(dict(llm="", imagebind=""))
    # The AvaMERG input pipeline (merg_jax/data/pipeline.py documents every key and the batch it makes).
    # History clips: 128 mels at 100 frames/s (6 s) and 1 fps 224x224 video, encoder-sized; the gold reply:
    # 24 kHz 80-mel speech and 25 fps 256x256 video for the generator stages (set their frames=0 for stage a).
    c.data = ml_collections.ConfigDict(dict(
        root="data/avamerg", source="tfds", tfds_data_dir="", tfds_config="default",
        tokenizer="checkpoints/vicuna-7b-v0",  # the LLM's own HF tokenizer; the special tokens are added to it
        tokenizer_vocab_size=32000,  # only used to train a BPE when `tokenizer` holds none (smoke runs)
        seq_len=0, batch_size=0,    # 0: train.seq_len / train.batch_size
        max_clips=8, chain=True, media_tokens=True, pack_segments=0, system_prompt="",
        audio=ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=400, hop=160, n_mels=128, frames=600)),
        video=ml_collections.ConfigDict(dict(fps=1.0, size=224, frames=8)),
        reply_audio=ml_collections.ConfigDict(dict(sample_rate=24000, n_fft=1200, hop=300, n_mels=80, frames=800)),
        reply_video=ml_collections.ConfigDict(dict(fps=25.0, size=256, frames=200)),
        missing_media="skip", check_media="exists", shuffle=True, seed=0, num_epochs=0,
        workers=8, worker_buffer_size=2, read_threads=2, read_buffer=8, log_every_s=60.0, max_bad_in_a_row=1000,
        feature_cache_mb=0))
    # The Empatheia core (merg_jax/models/empatheia.py): ImageBind-huge's vision and audio towers (frozen; import
    # them with merg_jax.convert.load_imagebind) — the fields of VisionConfig.imagebind_huge() and
    # AudioConfig.imagebind_huge() — each clip's 1024-d embedding projected to one 4096-d token (the paper), r^t
    # from the reply span, and the CS/SD at their default (paper-scale) shapes.
    c.empatheia = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=1280, intermediate_size=5120, num_layers=32, num_heads=16, image_size=224,
                    patch_size=14, tubelet_size=2, layer_norm_eps=1e-6, hidden_act="gelu", projection_dim=1024,
                    normalize_embedding=True, dtype="bfloat16"),
        audio=dict(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, patch_size=16,
                   num_mel_bins=128, max_length=204, frequency_stride=10, time_stride=10, patch_bias=False,
                   patch_norm=True, num_special_tokens=1, attention_bias_kv=True, layer_norm_eps=1e-6,
                   projection_dim=1024, normalize_embedding=True, embedding_scale=20.0, dtype="bfloat16"),
        audio_windows=3,  # ImageBind embeds three 2-second windows per utterance and averages them
        projection=dict(kind="linear", num_tokens=1),
        features=dict(source="reply_span", reply_len=64, num_signal_tokens=4),
        synchronizer=dict(dtype="bfloat16"),
        disentangler=dict(dtype="bfloat16")))
    c.generate = ml_collections.ConfigDict(dict(
        prompt="Human: I failed my driving test today. ### Assistant:", max_new_tokens=128,
        temperature=0.0, top_k=0, top_p=1.0))
    return c
