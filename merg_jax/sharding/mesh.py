"""Device meshes from the config: `data` × `fsdp` × `tensor`, one size may be -1 ("the rest").

Multi-slice (several TPU slices joined over the data-centre network) splits each axis into an ICI part (inside
a slice) and a DCN part (across slices); the product of the DCN parts must equal the number of slices. The
usual choice puts only `data` (or `fsdp`) across DCN: those axes carry one gradient all-reduce per step, while
`tensor` needs fast interconnect on every layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int, *, what: str = "mesh") -> dict[str, int]:
    """Fills in the one -1 size so the product equals `num_devices`; checks the rest."""
    sizes = {a: int(sizes.get(a, 1)) for a in AXES}
    unknown = [a for a, s in sizes.items() if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"{what}: at most one axis may be -1, got {sizes}")
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ValueError(f"{what}: axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"{what}: {num_devices} devices are not divisible by the fixed axes {sizes}")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"{what}: axis sizes {sizes} multiply to {math.prod(sizes.values())}, "
                         f"but there are {num_devices} devices")
    return sizes


def make_mesh(mesh_config: Mapping | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Builds the `(data, fsdp, tensor)` mesh with Auto axes.

    `mesh_config` keys: `data`, `fsdp`, `tensor` (ICI sizes, one may be -1) and optionally `dcn_data`,
    `dcn_fsdp`, `dcn_tensor` (sizes across slices, default 1). Axis types are `Auto`: NNX partitioning and
    `with_sharding_constraint` by logical names need them (jax.make_mesh defaults to Explicit).
    """
    mesh_config = dict(mesh_config or {"data": 1, "fsdp": -1, "tensor": 1})
    devices = list(devices if devices is not None else jax.devices())
    dcn = {a: int(mesh_config.get(f"dcn_{a}", 1)) for a in AXES}
    num_slices = math.prod(dcn.values())
    if len(devices) % num_slices:
        raise ValueError(f"mesh: {len(devices)} devices cannot form {num_slices} slices (dcn sizes {dcn})")
    ici = resolve_axis_sizes(mesh_config, len(devices) // num_slices, what="mesh (per slice)")
    axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
    if num_slices > 1:
        device_array = hybrid_device_array([ici[a] for a in AXES], [dcn[a] for a in AXES], devices)
        return jax.sharding.Mesh(device_array, AXES, axis_types=axis_types)
    shape = tuple(ici[a] for a in AXES)
    try:
        return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
    except (ValueError, NotImplementedError):
        # make_mesh knows physical topologies only for some device kinds; a plain reshape is correct everywhere.
        return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=axis_types)


def hybrid_device_array(ici: Sequence[int], dcn: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
    """Devices laid out as ICI axes inside each granule and DCN axes across granules. A granule is a TPU slice
    when the devices come from several (their `slice_index`), else one process: a GPU node under
    launch/slurm.sbatch, which runs one process per node."""
    from jax.experimental import mesh_utils

    by_process = len({getattr(d, "slice_index", 0) for d in devices}) == 1
    granules = len({d.process_index if by_process else d.slice_index for d in devices})
    if granules != math.prod(dcn):
        kind = "processes" if by_process else "slices"
        raise ValueError(f"mesh: dcn sizes {tuple(dcn)} need {math.prod(dcn)} {kind}, but the devices come from "
                         f"{granules} (set config.mesh.dcn_* to the number of {kind})")
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices, process_is_granule=by_process)


def single_device_mesh() -> jax.sharding.Mesh:
    return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def parse_mesh_flag(text: str | None) -> jax.sharding.Mesh | None:
    """`--mesh data=1,fsdp=-1,tensor=2` → a mesh (None for an empty flag); errors name the flag."""
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size or name.strip() not in AXES:
            raise ValueError(f"--mesh {text!r}: expected comma-separated axis=size over {AXES}, "
                             "e.g. data=1,fsdp=-1,tensor=1")
        try:
            sizes[name.strip()] = int(size)
        except ValueError as e:
            raise ValueError(f"--mesh {text!r}: size {size!r} of {name.strip()!r} is not an integer") from e
    return make_mesh(sizes)
