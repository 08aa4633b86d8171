"""Argument checks every attention implementation shares, so they all fail the same clear way."""

from __future__ import annotations


def check_qkv(name: str, q, k, v, *, same_dtype: bool = False) -> None:
    """q `[B, Lq, H, D]`, k `[B, Lk, Hk, D]`, v `[B, Lk, Hk, Dv]`, H a multiple of Hk."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{name}: expected [B, L, H, D] inputs, got q{q.shape} k{k.shape} v{v.shape}")
    if k.shape[:3] != v.shape[:3] or k.shape[0] != q.shape[0] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{name}: incompatible shapes q{q.shape} k{k.shape} v{v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{name}: {q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
    if same_dtype and (k.dtype != q.dtype or v.dtype != q.dtype):
        raise ValueError(f"{name}: q, k, v must share a dtype, got {q.dtype} {k.dtype} {v.dtype}")
