"""Trained Empatheia models on disk for serving: a training output directory, or a bundle exported from one.

    loaded = load_model("runs/empatheia_tiny")      # a training output dir (its newest good checkpoint) or a bundle
    loaded.model, loaded.config, loaded.tokenizer
    save_bundle(loaded, "bundles/tiny", dtype="bfloat16")     # `merg-jax export --checkpoint DIR --out BUNDLE`

A bundle holds what inference needs and nothing else (no optimiser state):

    BUNDLE/bundle.json          {"format": "merg_jax-bundle", "version": 1, "dtype", "source": where it came from}
    BUNDLE/config.json          the run's merg_jax config (ConfigDict as JSON)
    BUNDLE/tokenizer/           the tokenizer (a Hugging Face tokenizer dir)
    BUNDLE/params.safetensors   every model variable by its dotted path, float32 or bfloat16 (floats only)

It is written into a temporary directory and renamed into place, so a crash never leaves half a bundle. Loading
reads each parameter slice by slice straight into its shard on the mesh (the rule table's layout), so a bundle
loads onto any mesh. From a training directory, the model is the newest checkpoint that reads back of the last
stage in `config.stages` that has one (a stage's final checkpoint once it is done).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

BUNDLE_FORMAT = "merg_jax-bundle"
BUNDLE_VERSION = 1
DTYPES = ("float32", "bfloat16")


class ModelLoadError(ValueError):
    """A path that holds no loadable model; the message names the path and what is missing."""


@dataclasses.dataclass
class LoadedModel:
    model: Any  # merg_jax.models.Empatheia
    config: ml_collections.ConfigDict
    tokenizer: Any
    source: str


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """A config saved with `to_json_best_effort` back as a ConfigDict (lists of the original tuples stay lists)."""
    return ml_collections.ConfigDict(json.loads(text))


def _tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turned the config's tuples (e.g. model.lora_targets) into lists; the model configs want tuples."""
    d = config.to_dict()

    def fix(x):
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return tuple(x) if isinstance(x, list) else x

    return ml_collections.ConfigDict(fix(d))


def _flat_name(path) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


# ------------------------------------------------------------------------------------------------ save


def save_bundle(loaded: LoadedModel, out: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False
                ) -> pathlib.Path:
    """Writes `loaded` as a bundle at `out` (atomically). dtype: float32 or bfloat16 for the floating parameters."""
    from merg_jax.convert.safetensors_io import TensorSpec, write_safetensors

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {DTYPES}")
    out = pathlib.Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out}: exists already (remove it or choose another path)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = nnx.state(loaded.model)
        want = np.dtype(jax.numpy.dtype(dtype))
        specs = []
        for path, var in nnx.to_flat_state(state):
            value = var.get_value() if hasattr(var, "get_value") else var.value
            dt = want if np.issubdtype(np.dtype(value.dtype), np.floating) else np.dtype(value.dtype)
            specs.append(TensorSpec(_flat_name(path), tuple(value.shape), dt,
                                    lambda v=value, dt=dt: np.asarray(jax.device_get(v)).astype(dt)))
        write_safetensors(tmp / "params.safetensors", specs, metadata={"format": BUNDLE_FORMAT})
        (tmp / "config.json").write_text(loaded.config.to_json_best_effort(indent=2) + "\n")
        loaded.tokenizer.save(tmp / "tokenizer")
        (tmp / "bundle.json").write_text(json.dumps({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                                     "dtype": dtype, "source": loaded.source}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------ load


def _mesh(mesh):
    from merg_jax.sharding import single_device_mesh

    return single_device_mesh() if mesh is None else mesh


def load_bundle(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None) -> LoadedModel:
    from merg_jax.convert.safetensors_io import SafetensorsReader, read_header
    from merg_jax.data.tokenizer import load_tokenizer
    from merg_jax.train.trainer import abstract_model

    path = pathlib.Path(path)
    meta = json.loads((path / "bundle.json").read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise ModelLoadError(f"{path / 'bundle.json'}: not a merg_jax bundle (format {meta.get('format')!r})")
    config = _tuples(config_from_json((path / "config.json").read_text()))
    tokenizer = load_tokenizer(path / "tokenizer")
    mesh = _mesh(mesh)
    graphdef, abstract = abstract_model(config, tokenizer, mesh)
    tensors, _ = read_header(path / "params.safetensors")
    flat = []
    with SafetensorsReader() as reader:
        for p, var in nnx.to_flat_state(abstract):
            name = _flat_name(p)
            if name not in tensors:
                raise ModelLoadError(f"{path / 'params.safetensors'}: tensor {name!r} is missing")
            info = tensors[name]
            if tuple(info.shape) != tuple(var.shape):
                raise ModelLoadError(f"{path / 'params.safetensors'}: tensor {name!r} has shape {list(info.shape)}, "
                                     f"the config's model wants {list(var.shape)}")
            arr = reader.array(info)

            def callback(index, arr=arr, dt=np.dtype(var.dtype)):
                return np.asarray(arr[index]).astype(dt)

            value = jax.make_array_from_callback(tuple(var.shape), var.sharding, callback)
            flat.append((p, jax.block_until_ready(value)))
    state = nnx.from_flat_state(flat)
    return LoadedModel(nnx.merge(graphdef, state), config, tokenizer, str(path))


def load_training_dir(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None) -> LoadedModel:
    from merg_jax.data.tokenizer import load_tokenizer
    from merg_jax.train.checkpoints import StageCheckpoints
    from merg_jax.train.stages import parse_stages
    from merg_jax.train.trainer import abstract_model

    path = pathlib.Path(path)
    config = _tuples(config_from_json((path / "config.json").read_text()))
    tokenizer = load_tokenizer(path / "tokenizer")
    mesh = _mesh(mesh)
    graphdef, abstract = abstract_model(config, tokenizer, mesh)
    for stage in reversed(parse_stages(config.stages)):
        directory = path / "checkpoints" / stage.name
        if not directory.is_dir():
            continue
        ckpt = StageCheckpoints(directory, metric=stage.metric, mode=stage.mode, async_save=False)
        try:
            restored = ckpt.restore_latest(abstract)
        finally:
            ckpt.close()
        if restored is not None:
            state, _, meta, step = restored
            return LoadedModel(nnx.merge(graphdef, state), config, tokenizer,
                               f"{directory / str(step)} (stage {stage.name}, step {step}"
                               f"{', done' if meta.get('done') else ''})")
    raise ModelLoadError(f"{path}: no stage of config.stages={config.stages!r} has a checkpoint that reads back")


def load_model(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None) -> LoadedModel:
    """A bundle (holds bundle.json) or a training output directory (holds config.json and checkpoints/)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(f"--checkpoint {path}: no such directory")
    if (path / "bundle.json").exists():
        return load_bundle(path, mesh=mesh)
    if (path / "config.json").exists() and (path / "checkpoints").is_dir():
        return load_training_dir(path, mesh=mesh)
    raise ModelLoadError(f"--checkpoint {path}: neither a bundle (bundle.json) nor a training output directory "
                         "(config.json and checkpoints/)")


__all__ = ["BUNDLE_FORMAT", "LoadedModel", "ModelLoadError", "load_bundle", "load_model", "load_training_dir",
           "save_bundle"]
