"""Saving and loading the small models `merg-jax eval` trains for itself (the sync judge, the emotion judge).

    save_judge(model, "runs/x/judges/sync", format="merg_jax.sync_model", config=model.config.to_json())
    model = load_judge("runs/x/judges/sync", format="merg_jax.sync_model", what="sync model",
                       build=lambda raw: SyncModel(SyncConfig.from_json(raw), rngs=nnx.Rngs(0)))

A judge is a directory with `weights.npz` (float32, one array per parameter, named by its path, e.g.
`video/conv1/kernel`) and `config.json` (format, version, the model's config, parameter count). Each file is
written to a temporary name and renamed into place, the weights first, so a reader never sees half a file and a
crash leaves the last complete judge.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.npz"


class JudgeError(ValueError):
    """A judge directory that is missing, incomplete or does not match its config; the message names the file."""


def atomic_write(path: pathlib.Path, write: Callable) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path` (removed on any failure)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def num_params(model: nnx.Module) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _flat_name(path) -> str:
    return "/".join(str(p) for p in path)


def save_judge(model: nnx.Module, directory: str | os.PathLike, *, format: str, config: dict,
               version: int = 1) -> pathlib.Path:
    """Write the model's weights and `config` into `directory` (created if needed); returns the directory."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {_flat_name(p): np.asarray(v.get_value(), np.float32) for p, v in nnx.to_flat_state(nnx.state(model))}
    atomic_write(d / WEIGHTS_FILE, lambda f: np.savez(f, **arrays))
    meta = {"format": format, "version": version, "config": config, "params": num_params(model)}
    atomic_write(d / CONFIG_FILE, lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))
    return d


def load_judge(directory: str | os.PathLike, *, format: str, build: Callable[[dict], nnx.Module], what: str,
               error: type[JudgeError] = JudgeError) -> nnx.Module:
    """The model saved in `directory` by `save_judge`: `build(config)` makes its shapes (and raises ValueError,
    KeyError or TypeError for a config it cannot take), the weights fill them. Raises `error` naming the path when
    the directory or a file is missing, unreadable, of another format, or does not match the config."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        raise error(f"{what} {d}: not a directory")
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    try:
        meta = json.loads(cfg_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != format:
            raise ValueError(f"not a {format} config")
        raw = meta["config"]
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(raw)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise error(f"{what} {cfg_path}: {type(e).__name__}: {e}") from None
    try:
        with np.load(w_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip/npy errors come in many types
        raise error(f"{what} {w_path}: cannot read weights: {type(e).__name__}: {e}") from None
    flat = []
    for p, var in nnx.to_flat_state(abstract):
        name = _flat_name(p)
        if name not in arrays:
            raise error(f"{what} {w_path}: parameter {name!r} is missing")
        if tuple(arrays[name].shape) != tuple(var.shape):
            raise error(f"{what} {w_path}: parameter {name!r} has shape {list(arrays[name].shape)}, "
                        f"the config wants {list(var.shape)}")
        flat.append((p, var.replace(jnp.asarray(arrays[name], var.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


__all__ = ["CONFIG_FILE", "JudgeError", "WEIGHTS_FILE", "atomic_write", "load_judge", "num_params", "save_judge"]
