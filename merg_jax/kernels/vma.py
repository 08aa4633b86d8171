"""Shard-map "varying manual axes" bookkeeping for hand-written kernels.

Inside `jax.shard_map` (with `check_vma`), every value records the mesh axes it varies over. Loop carries and
cond branches must agree on them, and Pallas output shapes must declare them; values created from scratch
(accumulators, `ShapeDtypeStruct`s) carry none. These helpers give them the varying axes of the inputs they
derive from. Outside shard_map they change nothing.
"""

from __future__ import annotations

import jax


def varying_axes(*refs) -> frozenset[str]:
    axes: set[str] = set()
    for ref in refs:
        aval = jax.typeof(ref)
        manual = getattr(aval, "manual_axis_type", None)  # JAX ≥ 0.10; older releases call it `vma`
        axes |= set(manual.varying if manual is not None else (getattr(aval, "vma", None) or ()))
    return frozenset(axes)


def varying_like(ref, x):
    """`x` marked as varying over the same mesh axes as `ref`."""
    axes = tuple(sorted(varying_axes(ref)))
    return jax.lax.pcast(x, axes, to="varying") if axes else x


def out_struct(shape, dtype, *refs) -> jax.ShapeDtypeStruct:
    """A `ShapeDtypeStruct` for a kernel output that varies over the mesh axes of `refs`."""
    axes = varying_axes(*refs)
    if not axes:
        return jax.ShapeDtypeStruct(shape, dtype)
    manual = jax.typeof(refs[0]).manual_axis_type.update(varying=axes)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=manual)
