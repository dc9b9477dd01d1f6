"""Data parallelism over one named device axis, ``'batch'``.

The per-device step is written once against ``AXIS``. ``DataParallel.run`` runs it either
as ``jax.jit(jax.shard_map(...))`` over a 1-D mesh (the default) or as ``jax.pmap``;
both give the same per-device semantics: gradients of local sums, made global by
``psum``. State lives replicated; under pmap it carries a leading device axis.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
PARALLEL_MODES: tuple[str, ...] = ("shard_map", "pmap")
PLACEMENTS: tuple[str, ...] = ("replicated", "sharded", "host")


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (all devices of all processes by default)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def axis_size(axis_name: str | None) -> int:
    return 1 if axis_name is None else lax.axis_size(axis_name)


def axis_index(axis_name: str | None) -> jax.Array:
    return jnp.int32(0) if axis_name is None else lax.axis_index(axis_name)


def global_example_ids(local_size: int, axis_name: str | None) -> jax.Array:
    """Positions in the global batch of this device's ``local_size`` examples."""
    return axis_index(axis_name) * local_size + jnp.arange(local_size)


def gather_global(tree: Any, axis_name: str | None) -> Any:
    """Concatenates every device's shard along the leading axis (identity on one device)."""
    if axis_name is None:
        return tree
    return jax.tree.map(lambda x: lax.all_gather(x, axis_name, tiled=True), tree)


def local_shard(tree: Any, axis_name: str | None) -> Any:
    """This device's contiguous share of a global batch (the inverse of ``gather_global``)."""
    if axis_name is None:
        return tree
    def take(x: jax.Array) -> jax.Array:
        size = x.shape[0] // lax.axis_size(axis_name)
        return lax.dynamic_slice_in_dim(x, lax.axis_index(axis_name) * size, size)
    return jax.tree.map(take, tree)


def bytes_on_this_process(tree: Any) -> int:
    """Bytes that this process's devices hold of ``tree`` (a replicated array counts
    once per device): the device memory a placement costs each host."""
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
               for shard in x.addressable_shards)


class DataParallel:
    """Places data for, and runs, per-device functions under ``mode`` on ``mesh``.

    ``replicate``/``shard`` put host or device arrays where ``run`` expects them:
    replicated (every device a full copy) or split along the leading axis.
    """

    def __init__(self, mode: str, mesh: Mesh):
        if mode not in PARALLEL_MODES:
            raise ValueError(f"parallel mode {mode!r} is not known; allowed: {PARALLEL_MODES}")
        self.mode = mode
        self.mesh = mesh
        self.num_devices = mesh.devices.size

    def replicate(self, tree: Any) -> Any:
        """A full copy on every device; with several processes each passes the same value."""
        if self.mode == "shard_map":
            sharding = NamedSharding(self.mesh, P())
            if jax.process_count() == 1:
                return jax.device_put(tree, sharding)
            return jax.tree.map(lambda x: jax.make_array_from_callback(
                np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)
        stacked = jax.tree.map(
            lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), tree)
        return jax.pmap(lambda x: x, axis_name=AXIS, devices=list(self.mesh.devices.flat))(stacked)

    def shard(self, tree: Any) -> Any:
        """Splits the leading axis (a multiple of the device count) over the devices; with
        several processes, each one places only the rows of its own devices."""
        if self.mode == "shard_map":
            sharding = NamedSharding(self.mesh, P(AXIS))
            if jax.process_count() == 1:
                return jax.device_put(tree, sharding)
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(
                    sharding, self._process_rows(np.asarray(x)), np.shape(x)), tree)
        split = jax.tree.map(
            lambda x: np.reshape(np.asarray(x), (self.num_devices, -1) + np.shape(x)[1:]), tree)
        return jax.pmap(lambda x: x, axis_name=AXIS, devices=list(self.mesh.devices.flat))(split)

    def _process_rows(self, array: np.ndarray) -> np.ndarray:
        """The contiguous rows of a global array that belong to this process's devices."""
        rows = array.shape[0] // self.num_devices
        positions = [i for i, d in enumerate(self.mesh.devices.flat)
                     if d.process_index == jax.process_index()]
        return np.concatenate([array[i * rows:(i + 1) * rows] for i in positions])

    def unreplicate(self, tree: Any) -> Any:
        """One copy of a replicated tree, on the host (from this process's first device)."""
        if self.mode == "pmap":
            return jax.device_get(jax.tree.map(lambda x: x[0], tree))
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def run(self, fn: Callable[..., Any], in_kinds: Sequence[Any],
            donate_argnums: tuple[int, ...] = ()) -> jax.stages.Wrapped:
        """Compiles ``fn`` (written against ``AXIS``) for this mode. ``in_kinds`` says for
        each argument ``"replicated"`` or ``"sharded"`` (or a pytree of those, per leaf);
        outputs must be replicated (reduced over ``AXIS`` inside ``fn``)."""
        if self.mode == "shard_map":
            specs = tuple(jax.tree.map(lambda kind: P() if kind == "replicated" else P(AXIS),
                                       kinds) for kinds in in_kinds)
            mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=P(),
                                   check_vma=False)
            return jax.jit(mapped, donate_argnums=donate_argnums)
        return jax.pmap(fn, axis_name=AXIS, devices=list(self.mesh.devices.flat),
                        donate_argnums=donate_argnums)
