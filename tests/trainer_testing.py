"""A small AvaMERG-mini and a small `configs/empatheia_tiny.py` for the trainer, eval and respond tests.

    root = make_mini(tmp_path / "data")                    # 8 real conversations: espeak-ng speech, avatar videos
    config = trainer_config(root, tmp_path / "run", "--config.stages=coe", "--config.train.steps=3")

The config is the tiny recipe shrunk further (smaller towers, LLM, features and batches) so a stage compiles and
runs in seconds; every code path is the real one.
"""

from __future__ import annotations

import pathlib

from merg_jax.config import load_config

SMALL = [
    "--config.data.tokenizer_vocab_size=512", "--config.model.vocab_size=512",
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=2",
    "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.train.batch_size=4", "--config.train.seq_len=320", "--config.train.log_every=1",
    "--config.train.eval_batches=2", "--config.checkpoint.every_steps=2",
    "--config.data.audio.frames=64", "--config.data.video.frames=4",
    "--config.data.reply_audio.frames=64", "--config.data.reply_video.frames=8", "--config.data.reply_video.size=32",
    "--config.data.max_clips=4", "--config.data.feature_cache_mb=256", "--config.data.read_threads=1",
    "--config.data.workers=0", "--config.data.feature_cache_dir=",
    "--config.empatheia.vision.hidden_size=16", "--config.empatheia.vision.intermediate_size=32",
    "--config.empatheia.vision.num_layers=1", "--config.empatheia.vision.num_heads=2",
    "--config.empatheia.vision.projection_dim=16",
    "--config.empatheia.audio.hidden_size=16", "--config.empatheia.audio.intermediate_size=32",
    "--config.empatheia.audio.num_layers=1", "--config.empatheia.audio.num_heads=2",
    "--config.empatheia.audio.projection_dim=16", "--config.empatheia.audio.max_length=32",
    "--config.empatheia.features.reply_len=16",
    "--config.empatheia.synchronizer.hidden_size=16", "--config.empatheia.synchronizer.intermediate_size=32",
    "--config.empatheia.synchronizer.num_heads=2", "--config.empatheia.synchronizer.speech_content_dim=8",
    "--config.empatheia.synchronizer.speech_content_len=192", "--config.empatheia.synchronizer.video_content_dim=8",
    "--config.empatheia.synchronizer.video_content_len=8",
    "--config.empatheia.disentangler.hidden_size=16", "--config.empatheia.disentangler.intermediate_size=32",
    "--config.empatheia.disentangler.num_heads=2", "--config.empatheia.disentangler.speech_style_dim=8",
    "--config.empatheia.disentangler.video_style_dim=8",
    "--config.empatheia.speech.dim=16", "--config.empatheia.speech.content_dim=8",
    "--config.empatheia.speech.content_layers=1", "--config.empatheia.speech.style_dim=8",
    "--config.empatheia.speech.style_layers=2", "--config.empatheia.speech.prosody_layers=1",
    "--config.empatheia.speech.decoder_layers=1", "--config.empatheia.speech.vocoder_dim=16",
    "--config.empatheia.speech.vocoder_layers=1", "--config.empatheia.speech.max_tokens=192",
    "--config.stage.speech.steps=3", "--config.stage.speech.batch_size=4", "--config.stage.speech.log_every=1",
    "--config.empatheia.face.size=32", "--config.empatheia.face.motion_size=8",
    "--config.empatheia.face.detector_size=16", "--config.empatheia.face.detector_channels=4",
    "--config.empatheia.face.channels=(4,8,8)", "--config.empatheia.face.blocks=1",
    "--config.empatheia.face.content_dim=8", "--config.empatheia.face.content_hidden=16",
    "--config.empatheia.face.content_layers=1", "--config.empatheia.face.style_dim=8",
    "--config.empatheia.face.style_hidden=16", "--config.empatheia.face.style_layers=1",
    "--config.empatheia.face.style_frames=16", "--config.empatheia.face.dim=16", "--config.empatheia.face.layers=1",
    "--config.empatheia.face.heads=2", "--config.empatheia.face.window=16", "--config.empatheia.face.overlap=4",
    "--config.empatheia.face.sample_steps=2",
    "--config.stage.face_renderer.steps=3", "--config.stage.face_renderer.batch_size=4",
    "--config.stage.face_renderer.log_every=1", "--config.stage.face_motion.steps=3",
    "--config.stage.face_motion.batch_size=4", "--config.stage.face_motion.log_every=1",
    "--config.generate.max_new_tokens=24", "--config.generate.batch_size=4",
    "--config.stage.encoders.steps=4", "--config.stage.coe.steps=6", "--config.stage.coe.eval_every=0",
    "--config.stage.content.steps=3", "--config.stage.style.steps=3", "--config.stage.style_cls.steps=3",
]


def trainer_config(root: str | pathlib.Path, out: str | pathlib.Path, *overrides: str):
    """The shrunk tiny recipe on the dataset at `root`, writing to `out` (its tokenizer in `out/tokenizer`)."""
    return load_config("configs/empatheia_tiny.py", [
        f"--config.data.root={root}", f"--config.train.output_dir={out}", f"--config.data.tokenizer={out}/tokenizer",
        *SMALL, *overrides])


def cli_args(root, out, *overrides: str) -> list[str]:
    """The same run as `merg-jax train` arguments."""
    return ["--config", "configs/empatheia_tiny.py", f"--config.data.root={root}",
            f"--config.train.output_dir={out}", f"--config.data.tokenizer={out}/tokenizer", *SMALL, *overrides]


def make_mini(root: str | pathlib.Path, dialogues: int = 8, seed: int = 3) -> pathlib.Path:
    """AvaMERG-mini with `dialogues` conversations (half neutral-text), 32-pixel video, splits 1/2, 1/4, 1/4."""
    from merg_jax.data.mini.generate import Config, make_dataset

    root = pathlib.Path(root)
    make_dataset(Config(out=root, dialogues=dialogues, seed=seed, size=32, splits=(0.5, 0.25, 0.25), workers=2,
                        progress=False, neutral_text_share=0.5))
    return root


def scaled_down_7b(root: str | pathlib.Path, out: str | pathlib.Path):
    """configs/empatheia_7b.py with the shapes of the shrunk tiny recipe and its data: the paper's settings — LoRA
    r=8 α=32 dropout 0.1 on q,k,v,o trained with the projections (`lora,projections`), bfloat16 compute over
    float32 weights, remat, frozen towers without clip heads, Adam β2 0.95, stages a–d — on a model that runs in
    seconds."""
    big = load_config("configs/empatheia_7b.py")
    small = trainer_config(root, out)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "max_position_embeddings"):
        big.model[key] = small.model[key]
    big.data = small.data
    big.empatheia = small.empatheia
    big.empatheia.clip_emotion_head = False
    for tower in ("vision", "audio"):  # ImageBind's MLP ratio, so tests/weights_files.py can write its checkpoint
        big.empatheia[tower].intermediate_size = 4 * big.empatheia[tower].hidden_size
    for section in ("vision", "audio", "synchronizer", "disentangler"):
        big.empatheia[section].dtype = "bfloat16"
    for key in ("batch_size", "seq_len", "output_dir", "log_every", "eval_batches"):
        big.train[key] = small.train[key]
    big.checkpoint.every_steps = 2
    big.generate = small.generate
    return big
