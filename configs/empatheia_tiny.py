"""Empatheia in miniature, trained from scratch on AvaMERG-mini on 2 CPU cores, every part included: the tokenizer
(trained first when `data.tokenizer` does not exist), the audio and video towers (`encoders`: each speaker clip's
emotion), the LLM writing the Chain of Empathy (`coe`), the speech generator (`speech`), the talking-face generator
(`face_renderer`, then `face_motion`), the Content Synchronizer (`content`: C^s and C^v against the generators'
content encoders), the Style Disentangler (`style`: S^s and S^v against their style encoders) and its classifiers
(`style_cls`), in the paper's order.

Run (docs/results.md gives the dataset size and the figures this budget reaches):
    merg-jax make-data --out data/avamerg_mini --dialogues 600
    merg-jax train --config configs/empatheia_tiny.py
    merg-jax eval --checkpoint runs/empatheia_tiny --data data/avamerg_mini --split test --out runs/empatheia_tiny/eval.json
Smoke run: --config.train.steps=2 (every stage 2 steps). Running the same command again resumes.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = "encoders,coe,speech,face_renderer,face_motion,content,style,style_cls"
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=2048,  # >= the trained tokenizer's (data.tokenizer_vocab_size)
        hidden_size=128, intermediate_size=344, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
        # positions: a prompt row of train.seq_len plus generate.max_new_tokens (RoPE: no parameters depend on it)
        rms_norm_eps=1e-6, rope_theta=10000.0, rope_llama3_scaling=None, max_position_embeddings=640,
        tie_embeddings=True, attention_bias=False, mlp_bias=False, dtype="float32", param_dtype="float32",
        remat="none", scan_layers=True, attention_impl="auto",
        lora_rank=0, lora_alpha=32.0, lora_dropout=0.0, lora_targets=("q", "k", "v", "o")))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    # Defaults of every stage; config.stage.<name> overrides them (and --config.train.steps=N overrides every
    # stage's steps: smoke runs).
    c.train = ml_collections.ConfigDict(dict(
        steps=0, batch_size=8, seq_len=384, learning_rate=1e-3, warmup_frac=0.05, b1=0.9, b2=0.95,
        weight_decay=0.0, grad_clip=1.0, accum_steps=1, log_every=25, eval_every=0, eval_batches=8,
        max_nonfinite_in_a_row=10, compute_dtype="", output_dir="runs/empatheia_tiny"))
    c.stage = ml_collections.ConfigDict(dict(
        # ~4.5 epochs of the speaker clips; after the first, every clip comes from the feature cache.
        encoders=dict(steps=1000, learning_rate=2e-3),
        # Trained from scratch, the LLM itself learns here (the paper's LoRA would adapt a pretrained one).
        coe=dict(steps=900, learning_rate=3e-3, groups="llm_base,projections", eval_every=450),
        content=dict(steps=100, learning_rate=2e-3),
        style=dict(steps=100, learning_rate=2e-3),
        style_cls=dict(steps=150, learning_rate=3e-3),
        # The speech generator from scratch: acoustic model and vocoder (one utterance per row).
        # ~5 epochs of the ~3,200 training utterances up to 10.2 s (~0.5 s a step on 2 cores).
        speech=dict(steps=2200, learning_rate=2e-3, batch_size=8, log_every=50),
        # The face renderer: 8 clips a step, 3 frames of each rebuilt from the portrait or a fourth frame.
        face_renderer=dict(steps=800, learning_rate=2e-3, batch_size=8, log_every=25),
        # The motion generator on keypoint tracks of the training clips (made once, before the stage).
        face_motion=dict(steps=1500, learning_rate=1e-3, batch_size=16, log_every=50)))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, keep=2, async_save=True))
    # What `content` and `style` train the CS and SD to hit (merg_jax/train/targets.py).
    # "generators": C^s/S^s from the speech generator, C^v/S^v from the face generator.
    c.targets = ml_collections.ConfigDict(dict(kind="generators", seed=0))
    # The AvaMERG input pipeline (merg_jax/data/pipeline.py documents every key and the batch it makes). Small
    # features so a CPU keeps up: 40 mels at 50 frames/s (6.4 s per clip), 2 fps 32x32 history video, 25 fps
    # 96x96 reply video (the face generator's frames); decoded features are cached in memory (feature_cache_mb).
    c.data = ml_collections.ConfigDict(dict(
        root="data/avamerg_mini", source="raw", tfds_data_dir="", tfds_config="mini",
        tokenizer="runs/empatheia_tiny/tokenizer", tokenizer_vocab_size=2048,
        seq_len=0, batch_size=0, max_clips=6, chain=True, media_tokens=True, pack_segments=0, system_prompt="",
        audio=ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=640, hop=320, n_mels=40, frames=320)),
        video=ml_collections.ConfigDict(dict(fps=2.0, size=32, frames=12, crop=0.75)),  # zoomed on the face
        # the gold reply's speech as the speech generator hears it (empatheia.speech): its style is S^s's target
        reply_audio=ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=1024, hop=256, n_mels=80, frames=640,
                                                   power=1.0, fmax=8000.0)),
        reply_video=ml_collections.ConfigDict(dict(fps=25.0, size=96, frames=160)),
        face_frames_per_row=4, face_max_clips=0,  # the face stages' rows (merg_jax/data/face_corpus.py)
        missing_media="skip", check_media="exists", shuffle=True, seed=0, num_epochs=0,
        workers=2,  # decoding processes; the disk cache below makes every file's decode a one-off
        worker_buffer_size=2, read_threads=2, read_buffer=4, log_every_s=120.0, max_bad_in_a_row=1000,
        feature_cache_mb=1024, feature_cache_dir="runs/feature_cache"))
    c.empatheia = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32, patch_size=8,
                    tubelet_size=2, layer_norm_eps=1e-6, hidden_act="gelu", projection_dim=64,
                    normalize_embedding=True),
        audio=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, patch_size=16, num_mel_bins=40,
                   max_length=64, frequency_stride=12, time_stride=12, patch_bias=False, patch_norm=True,
                   num_special_tokens=1, attention_bias_kv=True, layer_norm_eps=1e-6, projection_dim=64,
                   normalize_embedding=True, embedding_scale=20.0),
        audio_windows=2, clip_emotion_head=True,
        projection=dict(kind="linear", num_tokens=1),
        features=dict(source="reply_span", reply_len=48, num_signal_tokens=4),
        synchronizer=dict(hidden_size=64, intermediate_size=128, num_heads=4, encoder_layers=1, decoder_layers=1,
                          speech_content_dim=64, speech_content_len=256, video_content_dim=32, video_content_len=160),
        disentangler=dict(hidden_size=64, intermediate_size=128, num_heads=4, encoder_layers=1, decoder_layers=1,
                          speech_style_dim=32, video_style_dim=32),
        # the speech generator (merg_jax/models/speech): 16 kHz, 80 mels at 62.5 frames/s, espeak-ng phonemes
        speech=dict(sample_rate=16000, n_fft=1024, hop=256, n_mels=80, fmin=0.0, fmax=8000.0, symbols="auto",
                    dim=128, content_dim=64, content_layers=4, style_dim=32, style_layers=4, prosody_layers=2,
                    decoder_layers=6, kernel_size=5, max_tokens=256, max_frames=640, vocoder="istft",
                    vocoder_dim=192, vocoder_layers=6, vocoder_segment=32),
        # the talking-face generator (merg_jax/models/face): 96x96 at 25 fps, 10 learnt keypoints, driven by the
        # speech generator's mel; the FaceConfig defaults (content 32 = C^v, style 32 = S^v)
        face=dict(size=96, fps=25.0, num_keypoints=10, expression_dim=12, static_dim=6, emotion_weight=1.0,
                  detector_size=48, detector_channels=16, motion_size=24, channels=(16, 32, 64), blocks=2,
                  change_weight=20.0, content_dim=32, content_hidden=128, content_layers=4,
                  style_dim=32, style_hidden=128, style_layers=3, style_frames=64, dim=128, layers=3, heads=4,
                  window=64, overlap=16, sample_steps=10, guidance=1.5, max_frames=256)))
    c.generate = ml_collections.ConfigDict(dict(max_new_tokens=170, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                                                batch_size=16))
    return c
