"""The matrix products of one LLaMA training step, each timed alone: a floor under any implementation's step.

    from merg_jax.bench.matmul_floor import matmul_floor, train_products
    floor = matmul_floor(cfg, batch=4, seq_len=256)   # {"seconds": s, "flops": F, "products": [...], ...}

A training step on T = batch·seq_len tokens runs, for every projection W of `D_in → D_out` (q, k, v, o, gate, up,
down in each layer; the LM head once), three products: the forward `X·W` (T×D_in by D_in×D_out), the input
gradient `dY·Wᵀ` and the weight gradient `Xᵀ·dY`; and in each layer, for every (batch row, head), the attention's
two forward products (scores `Q·Kᵀ`, values `P·V`) and four backward ones (`dO·Vᵀ`, `Pᵀ·dO`, `dS·K`, `dSᵀ·Q`).
Below 128 tokens their FLOPs are PaLM's count that `bench llm` divides by (6N + 12·layers·heads·head_dim·seq_len
per token); from 128 on, the causal core cuts the queries into blocks that each meet only the keys before their
end (`merg_jax.kernels.dense.causal_query_block`; PyTorch's flash kernel skips masked blocks too), and the floor
lists the attention products of those blocks: a quarter fewer at 2 blocks.

`matmul_floor` times each distinct product on its own — float32, best of `repeats` after a warm-up, in JAX and in
PyTorch, in every operand layout (each operand stored as is or transposed, and the output either way round) —
and takes the fastest. The step also runs norms, RoPE, softmax, the loss, clipping and AdamW, and feeds its
products from memory a step's working set leaves cold, so no implementation of the step is faster than the sum:
`peer step time / floor` is the highest ours/peer ratio any implementation of these products could reach.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools

from merg_jax.bench.timing import best_time


@dataclasses.dataclass(frozen=True)
class Product:
    """`count` products C[m, n] = Σ_k A[m, k]·B[k, n], each over `batch` independent matrices (heads × rows)."""

    name: str
    m: int
    k: int
    n: int
    batch: int = 1
    count: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n * self.count


def train_products(cfg, batch: int, seq_len: int) -> list[Product]:
    """The products of one training step of an `LlmConfig`, forward and backward, merged by shape."""
    t, layers = batch * seq_len, cfg.num_layers
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    projections = [("q", cfg.hidden_size, q, layers), ("k", cfg.hidden_size, kv, layers),
                   ("v", cfg.hidden_size, kv, layers), ("o", q, cfg.hidden_size, layers),
                   ("gate", cfg.hidden_size, cfg.intermediate_size, layers),
                   ("up", cfg.hidden_size, cfg.intermediate_size, layers),
                   ("down", cfg.intermediate_size, cfg.hidden_size, layers),
                   ("lm_head", cfg.hidden_size, cfg.vocab_size, 1)]
    products = []
    for name, d_in, d_out, count in projections:
        products += [Product(f"{name} forward", t, d_in, d_out, count=count),
                     Product(f"{name} input grad", t, d_out, d_in, count=count),
                     Product(f"{name} weight grad", d_in, t, d_out, count=count)]
    from merg_jax.kernels.dense import causal_query_block  # here: importing kernels imports JAX

    bh, k = batch * cfg.num_heads, cfg.head_dim
    block = causal_query_block(seq_len)
    for start in range(0, seq_len, block):  # each query block (rows) against the keys before its end
        rows, keys = min(block, seq_len - start), min(start + block, seq_len)
        # scores Q·Kᵀ and dP = dO·Vᵀ; values P·V and dQ = dS·K; dV = Pᵀ·dO and dK = dSᵀ·Q
        products += [Product(f"attention {rows} x K x {keys}", rows, k, keys, bh, 2 * layers),
                     Product(f"attention {rows} x {keys} x K", rows, keys, k, bh, 2 * layers),
                     Product(f"attention {keys} x {rows} x K", keys, rows, k, bh, 2 * layers)]
    merged: dict[tuple, Product] = {}
    for p in products:  # the same shape under several names is timed once
        key = (p.m, p.k, p.n, p.batch)
        if key in merged:
            old = merged[key]
            merged[key] = dataclasses.replace(old, name=f"{old.name}, {p.name}", count=old.count + p.count)
        else:
            merged[key] = p
    return list(merged.values())


def layouts(p: Product):
    """(m, k, n, A stored transposed, B stored transposed): both output orientations, every operand layout."""
    for (m, n), a_t, b_t in itertools.product(((p.m, p.n), (p.n, p.m)), (False, True), (False, True)):
        yield m, p.k, n, a_t, b_t


def stored_shapes(m: int, k: int, n: int, a_t: bool, b_t: bool, batch: int = 1) -> tuple[tuple, tuple]:
    """Shapes of A (m×k, or k×m stored transposed) and B (k×n, or n×k), with a leading batch axis if batch > 1."""
    lead = (batch,) if batch > 1 else ()
    return (*lead, *((k, m) if a_t else (m, k))), (*lead, *((n, k) if b_t else (k, n)))


def jax_matmul(a_t: bool, b_t: bool, batched: bool):
    """A jitted `(a, b) -> A·B` for operands stored as `stored_shapes` says: one `dot_general` that contracts
    each operand's k axis where it lies (no transpose written)."""
    import jax

    r = 1 if batched else 0
    dims = (((r + (0 if a_t else 1),), (r + (1 if b_t else 0),)), ((0,), (0,)) if batched else ((), ()))
    return jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))


def torch_matmul(a, b, a_t: bool, b_t: bool):
    """A·B in PyTorch for operands stored as `stored_shapes` says: transposes are strided views (no copy), which
    BLAS reads as they lie."""
    import torch

    return torch.matmul(a.transpose(-1, -2) if a_t else a, b.transpose(-1, -2) if b_t else b)


def _jax_time(p: Product, m, k, n, a_t, b_t, repeats: int) -> float:
    import jax.numpy as jnp

    a_shape, b_shape = stored_shapes(m, k, n, a_t, b_t, p.batch)
    a, b = jnp.ones(a_shape, jnp.float32), jnp.ones(b_shape, jnp.float32)
    product = jax_matmul(a_t, b_t, p.batch > 1)
    return best_time(lambda: product(a, b).block_until_ready(), repeats)


def _torch_time(p: Product, m, k, n, a_t, b_t, repeats: int) -> float:
    import torch

    a_shape, b_shape = stored_shapes(m, k, n, a_t, b_t, p.batch)
    a, b = torch.ones(a_shape), torch.ones(b_shape)
    return best_time(lambda: torch_matmul(a, b, a_t, b_t), repeats)


def matmul_floor(cfg, batch: int, seq_len: int, *, repeats: int = 3, use_torch: bool | None = None) -> dict:
    """Times every product of `train_products` alone; returns {"seconds": the floor, "flops", "products": per
    product its fastest time, library and layout, "torch": whether PyTorch was timed}."""
    if use_torch is None:
        use_torch = importlib.util.find_spec("torch") is not None
    rows, total = [], 0.0
    for p in train_products(cfg, batch, seq_len):
        best = None
        for layout in layouts(p):
            for lib, timer in (("jax", _jax_time), ("torch", _torch_time)):
                if lib == "torch" and not use_torch:
                    continue
                s = timer(p, *layout, repeats)
                if best is None or s < best[0]:
                    best = (s, lib, layout)
        s, lib, (m, _, n, a_t, b_t) = best
        rows.append({"name": p.name, "m": p.m, "k": p.k, "n": p.n, "batch": p.batch, "count": p.count,
                     "flops": p.flops, "seconds_each": s, "seconds": s * p.count, "library": lib,
                     "layout": f"{'A^T' if a_t else 'A'}.{'B^T' if b_t else 'B'} -> [{m}, {n}]"})
        total += s * p.count
    return {"seconds": total, "flops": sum(r["flops"] for r in rows), "products": rows, "torch": use_torch}
