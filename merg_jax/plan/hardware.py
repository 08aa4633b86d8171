"""The targets `merg-jax plan` plans for: chips, memory and peak bf16 FLOP/s per chip, the mesh, and the MFU we
expect there, each MFU a figure MaxText published (cited, never invented).

    targets = parse_targets("v5p-128,v5e-256,8xh100")   # [Target, ...]; unknown names: ValueError naming --targets

A TPU slice's name counts TensorCores on v5p (v5p-128 = 64 chips of 2 cores, one JAX device per chip) and chips
on v5e (v5e-256 = 256 chips, one core each). One JAX device = one chip everywhere here, so `chips` is the number
of devices the mesh spans and `hbm_gib` / `peak_tflops` are per device.
"""

from __future__ import annotations

import dataclasses
import math

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class MfuReference:
    """A published MFU figure: the value (0–1), what ran, and where it is published."""

    mfu: float
    what: str
    source: str


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    chips: int  # JAX devices (one per chip)
    hbm_gib: float  # memory per chip
    peak_tflops: float  # dense bf16 TFLOP/s per chip
    mesh: dict[str, int]  # data × fsdp × tensor, product = chips
    why_mesh: str
    reference: MfuReference

    def __post_init__(self):
        if math.prod(self.mesh.values()) != self.chips:
            raise ValueError(f"target {self.name}: mesh {self.mesh} does not span its {self.chips} chips")

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * GIB)

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * 1e12

    @property
    def batch_shards(self) -> int:
        """How many ways the batch is split: `data × fsdp` (the rule table's `batch` axis); `tensor` replicates it."""
        return self.mesh.get("data", 1) * self.mesh.get("fsdp", 1)

    def mesh_text(self) -> str:
        return " × ".join(f"{axis}={size}" for axis, size in self.mesh.items() if size > 1) or "one device"


MAXTEXT = "MaxText (github.com/AI-Hypercomputer/maxtext)"

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target(
        name="v5p-128", description="Cloud TPU v5p-128 slice: 64 chips (128 TensorCores), 95 GiB HBM each",
        chips=64, hbm_gib=95.0, peak_tflops=459.0, mesh={"data": 1, "fsdp": 64, "tensor": 1},
        why_mesh="pure FSDP: 95 GiB per chip holds a 7B model's activations without tensor parallelism, and FSDP's "
                 "traffic (the weights all-gathered layer by layer, forward and backward; LoRA's gradients "
                 "reduce-scattered) hides behind compute once each chip has a few rows",
        reference=MfuReference(0.7147, "32B model on 1x v5p-128 (the smallest model MaxText lists for v5p)",
                               f"{MAXTEXT} README.md, 'Runtime Performance Results', TPU v5p table; also "
                               "MaxText/configs/v5p/README.md")),
    Target(
        name="v5e-256", description="Cloud TPU v5e-256 pod: 256 chips, 16 GiB HBM each",
        chips=256, hbm_gib=16.0, peak_tflops=197.0, mesh={"data": 1, "fsdp": 64, "tensor": 4},
        why_mesh="16 GiB per chip is tight, and tensor=4 splits every row's q/k/v and MLP "
                 "activations 4 ways (32 heads, 11008 MLP columns and 32128 vocabulary rows all divide by 4) while "
                 "a 4-chip tensor group stays on neighbouring chips of the 16×16 torus; the batch splits 64 ways, "
                 "not 256, so the smallest runnable global batch is 64 rows instead of 256",
        reference=MfuReference(0.6110, "16B model on 1x v5e-256 (the smallest model MaxText lists for v5e)",
                               f"{MAXTEXT} MaxText/configs/v5e/README.md (and README.md, TPU v5e table)")),
    Target(
        name="8xh100", description="one node of 8 NVIDIA H100 SXM, 80 GiB HBM each",
        chips=8, hbm_gib=80.0, peak_tflops=989.0, mesh={"data": 1, "fsdp": 8, "tensor": 1},
        why_mesh="pure FSDP over NVLink (launch/gpu_node.sh's default, `mesh.fsdp=-1`)",
        reference=MfuReference(492.0 / 989.0, "Llama2-7B on 1x A3 (h100-80gb-8): 492 TFLOP/s per chip, over the "
                                              "H100 SXM's 989 dense bf16 TFLOP/s",
                               f"{MAXTEXT} MaxText/configs/a3/llama_2_7b/README.md (run: 1vm.sh, fsdp=8, "
                               "per_device_batch_size=4, max_target_length=4096)")),
)}


def parse_targets(text: str) -> list[Target]:
    """`"v5p-128,8xh100"` → the targets in that order; errors name the flag and the known targets."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError(f"--targets is empty: name one or more of {', '.join(TARGETS)}")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"--targets: unknown target(s) {', '.join(map(repr, unknown))}; the targets are "
                         f"{', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


__all__ = ["GIB", "MfuReference", "TARGETS", "Target", "parse_targets"]
