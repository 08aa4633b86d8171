"""`merg-jax bench attention`: our attention kernels against the peers, in one run.

    merg-jax bench attention [--lengths 1024,4096,16384] [--batch 1] [--heads 8] [--kv-heads 8] [--head-dim 64]
                             [--causal | --no-causal] [--dtype float32] [--repeats 2] [--max-run-gib 4]
                             [--json FILE]

On CPU, ours is `blockwise` and the peers are `xla` (the whole score matrix, one fused program) and the naive
`reference`. On a GPU, ours is `pallas_gpu` and the peers are cuDNN (`jax.nn.dot_product_attention(
implementation="cudnn")`) and `xla`; on a TPU, ours is `pallas_tpu`. For each length and implementation: the
forward and the forward+backward (gradients of q, k, v) time, the throughput in TFLOP/s (4·B·H·Lq·Lk·D flops
forward, halved when causal; backward counted as 2.5× forward), and the compiled programs' temporary memory from
`memory_analysis()`. A program whose temporaries exceed `--max-run-gib` is compiled (for its memory) but not run.
`ours/peer` is the peer's time over ours: above 1 means ours is faster. `--json FILE` also writes every number to
FILE (seconds, TFLOP/s, temporary bytes and the ratios, per length and implementation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

GIB = 1 << 30


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("attention", help="attention kernels vs XLA / cuDNN / the naive reference",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,4096,16384", help="comma-separated sequence lengths (%(default)s)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32 on CPU, bfloat16 else)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats; the median is reported (%(default)s)")
    p.add_argument("--max-run-gib", type=float, default=4.0,
                   help="run a program only if its temporaries fit in this many GiB (%(default)s)")
    p.add_argument("--impls", default=None, help="comma-separated implementations (default: ours then the peers)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


def default_impls(backend: str) -> list[str]:
    if backend == "gpu":
        return ["pallas_gpu", "cudnn", "xla"]
    if backend == "tpu":
        return ["pallas_tpu", "xla"]
    return ["blockwise", "xla", "reference"]


def _attention_fn(impl: str, causal: bool):
    import jax

    from merg_jax.kernels import attention

    if impl == "cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    return lambda q, k, v: attention(q, k, v, causal=causal, impl=impl)


def _median_time(fn, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(impl: str, *, batch, length, heads, kv_heads, head_dim, causal, dtype, repeats, max_run_bytes) -> dict:
    import jax
    import jax.numpy as jnp

    fn = _attention_fn(impl, causal)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
    fwd = jax.jit(fn)
    fwd_bwd = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
    row = {"impl": impl, "length": length}
    for name, program in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        try:
            compiled = program.lower(q, k, v).compile()
        except Exception as e:  # an implementation this backend cannot compile (cuDNN on old GPUs, say)
            row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"}
            continue
        memory = compiled.memory_analysis()
        temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
        entry = {"temp_bytes": temp}
        if temp is not None and temp > max_run_bytes:
            entry["skipped"] = f"needs {temp / GIB:.1f} GiB" if temp >= GIB else f"needs {temp / (1 << 20):.0f} MiB"
        else:
            entry["seconds"] = _median_time(compiled, (q, k, v), repeats)
        row[name] = entry
    flops = 4.0 * batch * heads * length * length * head_dim * (0.5 if causal else 1.0)
    for name, mult in (("fwd", 1.0), ("fwd_bwd", 3.5)):
        if "seconds" in row[name]:
            row[name]["tflops"] = mult * flops / row[name]["seconds"] / 1e12
    return row


def _cell_time(entry: dict) -> str:
    if "error" in entry:
        return "error"
    if "skipped" in entry:
        return "not run"
    ms = entry["seconds"] * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:,.1f}"


def _cell_mem(entry: dict) -> str:
    return "-" if entry.get("temp_bytes") is None else f"{entry['temp_bytes'] / (1 << 20):,.0f}"


def ratios(rows: list[dict]) -> list[dict[str, float | None] | None]:
    """Per row, {"fwd", "fwd_bwd"}: the peer's time over ours at the same length (None where either side did not
    run); None for ours' own rows (the first implementation of each length)."""
    ours_by_length: dict[int, dict] = {}
    out = []
    for r in rows:
        ours = ours_by_length.setdefault(r["length"], r)
        out.append(None if r is ours else {
            name: r[name]["seconds"] / ours[name]["seconds"] if "seconds" in r[name] and "seconds" in ours[name]
            else None for name in ("fwd", "fwd_bwd")})
    return out


def format_report(rows: list[dict], *, header: str) -> str:
    lines = [header, "",
             f"{'L':>6} {'impl':<11}{'fwd ms':>11}{'fwd+bwd ms':>12}{'fwd TF/s':>10}{'f+b TF/s':>10}"
             f"{'fwd MiB':>10}{'f+b MiB':>10}{'ours/peer fwd':>15}{'ours/peer f+b':>15}"]
    for r, ratio in zip(rows, ratios(rows)):
        cells = (["(ours)"] * 2 if ratio is None else
                 ["-" if ratio[name] is None else f"{ratio[name]:.2f}" for name in ("fwd", "fwd_bwd")])
        tf = [f"{r[n]['tflops']:.3f}" if "tflops" in r[n] else "-" for n in ("fwd", "fwd_bwd")]
        lines.append(f"{r['length']:>6} {r['impl']:<11}{_cell_time(r['fwd']):>11}{_cell_time(r['fwd_bwd']):>12}"
                     f"{tf[0]:>10}{tf[1]:>10}{_cell_mem(r['fwd']):>10}{_cell_mem(r['fwd_bwd']):>10}"
                     f"{cells[0]:>15}{cells[1]:>15}")
    notes = sorted({f"{r['impl']} L={r['length']} {n}: {r[n].get('skipped') or r[n].get('error')}"
                    for r in rows for n in ("fwd", "fwd_bwd") if "skipped" in r[n] or "error" in r[n]})
    if notes:
        lines += ["", "not run: " + "; ".join(notes)]
    return "\n".join(lines)


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    import sys

    import jax
    import jax.numpy as jnp

    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        print(f"merg-jax bench attention: error: --lengths must be comma-separated integers, got {args.lengths!r}",
              file=sys.stderr)
        return 2
    kv_heads = args.kv_heads or args.heads
    for name, value in (("batch", args.batch), ("heads", args.heads), ("head-dim", args.head_dim),
                        ("repeats", args.repeats), ("kv-heads", kv_heads)):
        if value < 1:
            print(f"merg-jax bench attention: error: --{name} must be >= 1", file=sys.stderr)
            return 2
    if not lengths or min(lengths) < 1 or args.heads % kv_heads:
        print("merg-jax bench attention: error: lengths must be >= 1 and --heads a multiple of --kv-heads",
              file=sys.stderr)
        return 2
    backend = jax.default_backend()
    backend = "gpu" if backend in ("cuda", "rocm") else backend
    dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
    impls = args.impls.split(",") if args.impls else default_impls(backend)
    device = jax.devices()[0]
    header = (f"merg-jax bench attention | {backend} ({getattr(device, 'device_kind', device.platform)}), jax "
              f"{jax.__version__} | batch {args.batch}, heads {args.heads}/{kv_heads} kv, head_dim {args.head_dim}, "
              f"{'causal' if args.causal else 'full'}, {dtype.name}, median of {args.repeats} (warm-up excluded)")
    rows = []
    for length in lengths:
        for impl in impls:
            rows.append(measure(impl, batch=args.batch, length=length, heads=args.heads, kv_heads=kv_heads,
                                head_dim=args.head_dim, causal=args.causal, dtype=dtype, repeats=args.repeats,
                                max_run_bytes=args.max_run_gib * GIB))
            print(f"  measured {impl} at L={length}", file=sys.stderr, flush=True)
    print(format_report(rows, header=header))
    if args.json:
        versions = {"jax": jax.__version__, "backend": backend,
                    "device_kind": getattr(device, "device_kind", device.platform), "dtype": dtype.name}
        out = {"target": "attention", "args": {k: v for k, v in vars(args).items() if k not in ("json", "target")},
               "versions": versions, "impls": impls, "kv_heads": kv_heads,
               "rows": [{**r, "ours": ratio is None, "ours_over_peer": ratio} for r, ratio in zip(rows, ratios(rows))]}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
