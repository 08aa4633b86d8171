"""Attention: one entry point (`attention`), a reference definition and the fast implementations."""

from merg_jax.kernels.attention import IMPLS, attention, auto_impl
from merg_jax.kernels.dense import from_kv_rows, kv_rows
from merg_jax.kernels.mask import MaskInfo, dense_mask, make_mask_info

__all__ = ["IMPLS", "auto_impl", "MaskInfo", "attention", "dense_mask", "from_kv_rows", "kv_rows", "make_mask_info"]
