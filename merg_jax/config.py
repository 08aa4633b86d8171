"""Python config files (`get_config()` → `ml_collections.ConfigDict`) and `--config.a.b=value` overrides."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections

from merg_jax.models.llm_config import LlmConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> pathlib.Path:
    """`tiny`, `configs/tiny.py` or any path to a config file."""
    p = pathlib.Path(name_or_path)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{name_or_path}.py"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config {name_or_path!r} not found (looked for {p} and {CONFIG_DIR / p.name})")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    path = resolve_config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"merg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    config = module.get_config()
    apply_overrides(config, overrides)
    return config


def split_overrides(rest: list[str]) -> list[str]:
    """`--config.a.b=1` and `--config.a.b 1` → `["config.a.b=1"]`; anything else is an error."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            raise ValueError(f"unrecognised argument {arg!r} (overrides look like --config.train.steps=10)")
        if "=" in arg:
            out.append(arg)
            i += 1
        elif i + 1 < len(rest):
            out.append(f"{arg}={rest[i + 1]}")
            i += 2
        else:
            raise ValueError(f"config override {arg!r} has no value")
    return out


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() == "none":
            return None
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `--config.model.num_layers=4` style overrides (the `--config.` prefix optional)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"config override {item!r} must look like --config.key.sub=value")
        key, text = item.split("=", 1)
        key = key.removeprefix("--").removeprefix("config.")
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node:
                raise KeyError(f"config override --config.{key}: no section {'.'.join(parents[:i + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"config override --config.{key}: unknown key; "
                           f"{'.'.join(parents) or 'config'} has {sorted(node.keys())}")
        value = _parse_value(text)
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, tuple) and isinstance(value, (list, str)):
            value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise TypeError(f"config override --config.{key}={text}: {e}") from e


def llm_config(config: ml_collections.ConfigDict) -> LlmConfig:
    return LlmConfig.from_dict(config.model.to_dict())
