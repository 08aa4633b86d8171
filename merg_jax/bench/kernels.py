"""`merg-jax bench kernels`: are our attention kernels right on this machine? Each case runs the forward pass and
the gradients of q, k and v through our kernel and through the naive float32 reference, and on a GPU through
cuDNN (`jax.nn.dot_product_attention(implementation="cudnn")`) as well, and reports each one's largest error
against the reference, relative to the reference's largest magnitude.

    merg-jax bench kernels [--impl pallas_gpu] [--small] [--markdown FILE] [--json FILE]

The kernel is the backend's (`pallas_gpu` on a GPU, `pallas_tpu` on a TPU): compiled there, and run in the Pallas
interpreter anywhere else (`mode` in the table says which; `--small` shrinks the cases for the interpreter). A case
passes when our error is within the dtype's tolerance (float32 1e-4, bfloat16 2e-2) or within twice cuDNN's.
launch/gpu_check.sh runs this on a GPU; the exit status is 1 when a case fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    lq: int
    lk: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    dtype: str
    segments: int = 1  # packed sequences per row (segment ids), 1: none

    def shrunk(self, by: int) -> Case:
        return dataclasses.replace(self, lq=max(16, self.lq // by), lk=max(16, self.lk // by))


CASES = (
    Case("causal self-attention", 2, 1024, 1024, 8, 8, 64, True, "bfloat16"),
    Case("grouped queries (8 q / 2 kv heads)", 2, 1024, 1024, 8, 2, 128, True, "bfloat16"),
    Case("packed sequences (3 per row)", 2, 1024, 1024, 4, 4, 64, True, "bfloat16", segments=3),
    Case("cross-attention (Lq < Lk)", 2, 256, 768, 4, 4, 64, False, "float32"),
    Case("lengths not a block multiple", 1, 300, 300, 4, 4, 64, True, "float32"),
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("kernels", help="attention kernels' errors vs the naive reference (and cuDNN on a GPU)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", default=None, help="pallas_gpu or pallas_tpu (default: this backend's, else pallas_gpu)")
    p.add_argument("--small", action="store_true", help="lengths / 8: for the interpreter on a CPU")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    return p


def _inputs(case: Case, seed: int = 0):
    import jax
    import jax.numpy as jnp
    import numpy as np

    keys = jax.random.split(jax.random.key(seed), 4)
    dtype = jnp.dtype(case.dtype)
    q = jax.random.normal(keys[0], (case.batch, case.lq, case.heads, case.head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (case.batch, case.lk, case.kv_heads, case.head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (case.batch, case.lk, case.kv_heads, case.head_dim), jnp.float32).astype(dtype)
    d_out = jax.random.normal(keys[3], q.shape, jnp.float32).astype(dtype)
    segments = None
    if case.segments > 1:  # equal runs of ids 0, 1, 2 ... (q and k have the same length here)
        segments = jnp.asarray(np.minimum(np.arange(case.lq) * case.segments // case.lq, case.segments - 1)
                               [None].repeat(case.batch, 0).astype(np.int32))
    return q, k, v, d_out, segments


def _vjp(fn, q, k, v, d_out):
    import jax

    out, pull = jax.vjp(fn, q, k, v)
    return (out, *pull(d_out))


def _relative_errors(got, want) -> float:
    import numpy as np

    worst = 0.0
    for g, w in zip(got, want):
        w = np.asarray(w, np.float32)
        err = np.max(np.abs(np.asarray(g, np.float32) - w)) / max(float(np.max(np.abs(w))), 1e-6)
        worst = max(worst, float(err))
    return worst


def check_case(case: Case, impl: str) -> dict:
    """One case: ours (and cuDNN on a GPU) against the float32 reference, forward and the three gradients."""
    import jax
    import jax.numpy as jnp

    from merg_jax.kernels import attention

    q, k, v, d_out, seg = _inputs(case)
    mask = dict(causal=case.causal, q_segment_ids=seg, kv_segment_ids=seg)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    want = jax.jit(lambda q, k, v, do: _vjp(lambda *a: attention(*a, impl="reference", **mask), q, k, v, do))(*f32)
    ours = jax.jit(lambda q, k, v, do: _vjp(lambda *a: attention(*a, impl=impl, **mask), q, k, v, do))(q, k, v, d_out)
    platform = "gpu" if jax.default_backend() in ("cuda", "rocm", "gpu") else jax.default_backend()
    row = {"case": case.name, "shape": f"B{case.batch} Lq{case.lq} Lk{case.lk} H{case.heads}/{case.kv_heads} "
                                       f"D{case.head_dim}", "dtype": case.dtype, "impl": impl,
           "mode": "compiled" if impl == f"pallas_{platform}" else "interpreted",
           "ours_error": _relative_errors(ours, want)}
    if platform == "gpu" and case.segments == 1 and case.dtype != "float32":  # what cuDNN's fused kernel takes
        from merg_jax.bench.attention import _attention_fn

        cudnn = _attention_fn("cudnn", case.causal)
        try:
            peer = jax.jit(lambda q, k, v, do: _vjp(cudnn, q, k, v, do))(q, k, v, d_out)
            row["cudnn_error"] = _relative_errors(peer, want)
        except Exception as e:  # a shape or GPU cuDNN does not support
            row["cudnn_note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    bound = max(TOLERANCE[case.dtype], 2 * row.get("cudnn_error", 0.0))
    row["passed"] = bool(row["ours_error"] <= bound)
    return row


def format_markdown(rows: list[dict], *, header: str) -> str:
    lines = [header, "", "| case | shape | dtype | kernel | ours: max error | cuDNN: max error | passed |",
             "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        cudnn = f"{r['cudnn_error']:.2e}" if "cudnn_error" in r else r.get("cudnn_note", "–")
        lines.append(f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['impl']} ({r['mode']}) | "
                     f"{r['ours_error']:.2e} | {cudnn} | {'yes' if r['passed'] else '**no**'} |")
    lines += ["", "Errors: largest |ours − reference| over the output and dq, dk, dv, divided by the reference's "
              "largest magnitude; the reference is the naive float32 attention."]
    return "\n".join(lines) + "\n"


def run(args, rest: list[str], parser: argparse.ArgumentParser) -> int:
    import jax

    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    backend = jax.default_backend()
    impl = args.impl or {"tpu": "pallas_tpu"}.get(backend, "pallas_gpu")
    if impl not in ("pallas_gpu", "pallas_tpu"):
        parser.error(f"--impl {impl}: expected pallas_gpu or pallas_tpu")
    cases = [c.shrunk(8) if args.small else c for c in CASES]
    rows = []
    for case in cases:
        rows.append(check_case(case, impl))
        r = rows[-1]
        print(f"{r['case']:<36} {r['mode']:<11} ours {r['ours_error']:.2e}  "
              f"cuDNN {r.get('cudnn_error', float('nan')):.2e}  {'ok' if r['passed'] else 'FAILED'}", flush=True)
    device = jax.devices()[0].device_kind
    text = format_markdown(rows, header=f"Attention kernels on {device} (jax {jax.__version__}, {backend})")
    print("\n" + text)
    for path, payload in ((args.markdown, text), (args.json, json.dumps(rows, indent=2) + "\n")):
        if path:
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(path).write_text(payload)
    failed = [r["case"] for r in rows if not r["passed"]]
    if failed:
        print(f"merg-jax bench kernels: {len(failed)} case(s) out of tolerance: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
