"""The machine's matmul peak, measured: the denominator of every MFU figure `merg-jax bench` prints.

    from merg_jax.bench.peak import matmul_peak
    peak = matmul_peak()          # {"jax": FLOP/s, "torch": FLOP/s or None, "peak": the higher, "n": 2048, ...}

A square float32 matmul of side `n` (default 2048 on CPU, 8192 on accelerators), timed as the best of `repeats`
calls after a warm-up, on JAX's default device and — when PyTorch is installed — on PyTorch's CPU with its
default threads. The peak is the higher of the two: no model step can beat the best dense matmul of its own
dtype on the same machine, so MFU = model FLOPs / step time / peak is at most ~1.
"""

from __future__ import annotations

import importlib.util

from merg_jax.bench.timing import best_time


def matmul_peak(n: int | None = None, repeats: int = 10, dtype: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    matmul = jax.jit(jnp.matmul)
    flops = 2.0 * n ** 3
    out = {"n": n, "dtype": dtype, "jax": flops / best_time(lambda: matmul(ja, jb).block_until_ready(), repeats),
           "torch": None, "jax_backend": jax.default_backend()}
    if importlib.util.find_spec("torch") is not None and jax.default_backend() == "cpu":
        import torch

        ta, tb = torch.from_numpy(a).to(getattr(torch, dtype)), torch.from_numpy(b).to(getattr(torch, dtype))
        out["torch"] = flops / best_time(lambda: ta @ tb, repeats)
    out["peak"] = max(v for v in (out["jax"], out["torch"]) if v is not None)
    return out
