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
        # Unrolled: at 4 layers this small, the scan's per-layer slices of its stacked residuals cost ~6% of a
        # training step (docs/performance.md); compilation takes ~0.3 s longer.
        remat="none", scan_layers=False, attention_impl="auto",
        lora_rank=0, lora_alpha=32.0, lora_dropout=0.0, lora_targets=("q", "k", "v", "o"))
    c.model = ml_collections.ConfigDict(c.model)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.train = ml_collections.ConfigDict(dict(
        # 4 rows of 256 byte tokens (~7 packed exchanges of the built-in corpus) per step; 500 steps are ~12 epochs
        # of it, about 1.5 minutes on 2 CPU cores.
        steps=500, batch_size=4, seq_len=256, learning_rate=3e-3, warmup_frac=0.1, b1=0.9, b2=0.95,
        weight_decay=0.0, grad_clip=1.0, log_every=50, lora_only=False, dropout_seed=1,
        output_dir="runs/tiny"))
    # The AvaMERG input pipeline (merg_jax/data/pipeline.py documents every key and the batch it makes). Small
    # features so a CPU keeps up: 40 mels at 50 frames/s (6.4 s per clip), 2 fps 32x32 history video, 25 fps
    # 64x64 reply video.
    c.data = ml_collections.ConfigDict(dict(
        root="data/avamerg_mini",   # the dataset dir (AvaMERG layout); `merg-jax make-data` writes one
        source="raw",               # "raw": {root}/{split}.json + media files; "tfds": prepared array_record
        tfds_data_dir="",           # where merg_jax.data.tfds_avamerg.prepare wrote them ("" -> {root}/tfds)
        tfds_config="mini",         # "default" (AvaMERG) or "mini" (AvaMERG-mini)
        tokenizer="runs/tiny/tokenizer",  # HF tokenizer dir; `merg-jax train-tokenizer --data ROOT --out DIR`
        seq_len=0, batch_size=0,    # 0: train.seq_len / train.batch_size (global batch, split over hosts)
        max_clips=6,                # history utterances with media per sample (C); older ones are dropped
        chain=True,                 # Chain-of-Empathy target (False: reply only, the "w/o CoE" ablation)
        media_tokens=True,          # <Aud> <Vid> per utterance; n: n of each (a resampler); False: text only
        pack_segments=0,            # 0: one turn per row; n: pack up to n turns per row (text stage)
        system_prompt="",           # "" -> merg_jax.data.templates.SYSTEM_PROMPT
        audio=ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=640, hop=320, n_mels=40, frames=320)),
        video=ml_collections.ConfigDict(dict(fps=2.0, size=32, frames=12)),
        reply_audio=ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=640, hop=320, n_mels=40, frames=320)),
        reply_video=ml_collections.ConfigDict(dict(fps=25.0, size=64, frames=160)),  # frames=0 turns a group off
        missing_media="skip",       # "skip" a sample lacking a media file (counted) or "mask" that clip
        check_media="exists",       # what the reader checks up front: "none" | "exists" | "decode"
        shuffle=True, seed=0,
        num_epochs=0,               # 0: repeat forever
        workers=0,                  # grain worker processes (0: decode in the main process)
        worker_buffer_size=2, read_threads=1, read_buffer=4,
        log_every_s=60.0, max_bad_in_a_row=1000))
    # The Empatheia core (merg_jax/models/empatheia.py), sized to the data above: ImageBind-style towers in
    # miniature (2-frame tubelets over 32x32 frames; 40 mels in 64-frame windows, 2 per clip), one token per clip,
    # and the CS/SD with content/style shapes of the tiny generators.
    c.empatheia = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32, patch_size=8,
                    tubelet_size=2, layer_norm_eps=1e-6, hidden_act="gelu", projection_dim=64,
                    normalize_embedding=True),
        audio=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, patch_size=16, num_mel_bins=40,
                   max_length=64, frequency_stride=12, time_stride=12, patch_bias=False, patch_norm=True,
                   num_special_tokens=1, attention_bias_kv=True, layer_norm_eps=1e-6, projection_dim=64,
                   normalize_embedding=True, embedding_scale=20.0),
        audio_windows=2,
        projection=dict(kind="linear", num_tokens=1),  # kind="resampler", num_tokens=n with data.media_tokens=n
        features=dict(source="reply_span", reply_len=48, num_signal_tokens=4),
        synchronizer=dict(hidden_size=64, intermediate_size=128, num_heads=4, encoder_layers=1, decoder_layers=1,
                          speech_content_dim=32, speech_content_len=64, video_content_dim=32, video_content_len=160),
        disentangler=dict(hidden_size=64, intermediate_size=128, num_heads=4, encoder_layers=1, decoder_layers=1,
                          speech_style_dim=32, video_style_dim=32)))
    c.generate = ml_collections.ConfigDict(dict(
        prompt="Human: I failed my driving test today. ### Assistant:", max_new_tokens=120,
        temperature=0.0, top_k=0, top_p=1.0))
    return c
