"""Device meshes and parameter shardings from logical axis names (pjit semantics).

Every parameter gets *logical* axis names from its path and shape (MaxText's idea, without
annotating model code): a Dense kernel ``(in, out)`` is ``("embed", "mlp")``, or
``("mlp", "embed")`` for the projections that return to the residual stream (attention output,
FFN output: Megatron's row-parallel layers); an embedding table is ``("vocab", "embed")``; LoRA
factors follow their kernel; vectors and everything else are replicated. A config then maps
logical names onto mesh axes:

    data parallel   rules = []                                   (parameters replicated)
    FSDP            rules = [("embed", "data")]                  (ZeRO-3 style: gathered per use)
    tensor parallel rules = [("mlp", "model"), ("vocab", "model")]
    FSDP + TP       rules = [("embed", "data"), ("mlp", "model"), ("vocab", "model")]

A dimension is sharded only when the mesh axis divides it (otherwise it stays replicated), and a
mesh axis is used at most once per parameter. Batches are sharded along ``data``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adapt import paths

RULE_PRESETS: dict[str, list[tuple[str, str]]] = {
    "dp": [],
    "fsdp": [("embed", "data")],
    "tp": [("mlp", "model"), ("vocab", "model")],
    "fsdp_tp": [("embed", "data"), ("mlp", "model"), ("vocab", "model")],
}

# Projections whose output returns to the residual stream (row-parallel in Megatron terms).
_ROW_PARALLEL = re.compile(
    r".*(o_proj|down_proj|attention/output/dense|layer_\d+/output/dense|out_proj)(/[^/]+)?$"
)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh from ``[(name, size), ...]``; one size may be -1 (all remaining devices). Without
    -1, a mesh smaller than the device count uses the first devices (e.g. ``[("data", 1)]``)."""
    devices = list(jax.devices() if devices is None else devices)
    names = [str(n) for n, _ in axes]
    sizes = [int(s) for _, s in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {axes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh {axes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if -1 not in [int(s) for _, s in axes] and int(np.prod(sizes)) < len(devices):
        devices = devices[: int(np.prod(sizes))]  # a smaller mesh over the first devices
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
            f"have {len(devices)}; use -1 for one axis to absorb the rest"
        )
    return Mesh(np.asarray(devices).reshape(sizes), names)


def logical_axes(path: str, shape: Sequence[int]) -> tuple[str | None, ...]:
    """Logical axis names for one parameter (see module docstring)."""
    leaf = path.rsplit("/", 1)[-1]
    row = bool(_ROW_PARALLEL.fullmatch(path))
    inner, outer = ("mlp", "embed") if row else ("embed", "mlp")
    if len(shape) == 2:
        if leaf == "embedding":
            return ("vocab", "embed")
        if leaf == "kernel":
            return (inner, outer)
        if leaf.endswith("_a"):  # LoRA A: (in, r)
            return (inner, None)
        if leaf.endswith("_b"):  # LoRA B: (r, out)
            return (None, outer)
    return (None,) * len(shape)


def spec_for(
    path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, str]]
) -> PartitionSpec:
    mapping = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, logical_axes(path, shape), strict=True):
        axis = mapping.get(name) if name else None
        if axis and axis not in used and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0:
            spec.append(axis)
            used.add(axis)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def param_shardings(
    tree: Mapping[str, Any], mesh: Mesh, rules: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """NamedShardings for a parameter tree (arrays or ``jax.ShapeDtypeStruct``s)."""
    unknown = {axis for _, axis in rules} - set(mesh.axis_names)
    if unknown:
        raise ValueError(f"sharding rules use mesh axes {sorted(unknown)} not in {mesh.axis_names}")
    return paths.map_with_path(
        lambda p, v: NamedSharding(mesh, spec_for(p, np.shape(v), mesh, rules)), tree
    )


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Leading (batch) dimension split over ``axis``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data") -> dict:
    """Assemble this process's rows into global arrays sharded over ``axis``.

    Single-process: a plain ``device_put``. Multi-process: each process passes its contiguous
    block of the global batch (see :func:`adapt.data.train_batches`).
    """
    sharding = batch_sharding(mesh, axis)
    size = mesh.shape[axis]
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % size:
            raise ValueError(
                f"batch of {global_rows} rows ({key}) does not split over the {size}-way "
                f"'{axis}' mesh axis; choose a batch size divisible by {size}"
            )
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
