"""`merg-jax plan`: the scale plan of a recipe, computed — per-device memory on TPU slices and GPU nodes, the largest
batch that fits and the step time at a published MFU, with nothing but a CPU.

    merg-jax plan --config configs/empatheia_7b.py --targets v5p-128,v5e-256,8xh100 --markdown docs/scaling.md

    hardware.py    the targets: chips, HBM, peak FLOP/s, mesh, MaxText's MFU figure (cited)
    state.py       parameters, Adam moments, gradients per device, from the real sharding rules
    activations.py activations per row under the remat policy, counted
    flops.py       FLOPs per row of stage a, term by term
    fit.py         one target's plan: fits?, largest batch, step time
    crosscheck.py  the activation count against XLA's compiled memory analysis (8 fake CPU devices)
    report.py      the table, the JSON, docs/scaling.md
    cli.py         the command
"""

from merg_jax.plan.fit import Plan, TargetPlan, plan_targets
from merg_jax.plan.hardware import TARGETS, Target, parse_targets

__all__ = ["Plan", "TARGETS", "Target", "TargetPlan", "parse_targets", "plan_targets"]
