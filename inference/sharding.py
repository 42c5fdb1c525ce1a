"""Sharding the particle axis across devices (``ppl.infer(..., devices=jax.devices())``).

The whole SMC loop stays one jitted program. The population's particle axis is constrained to
a one-dimensional mesh axis ``"particles"``; model weights are replicated. XLA's SPMD
partitioner then runs each device's particles locally (program step, LM forward, automata)
and inserts the collectives that resampling needs:

* global resampling (default): weights are all-gathered (``N`` floats) to compute ancestors,
  and the gather of particles and KV cache along ancestors moves the rows that change device.
* island resampling (``islands=D``): each group of ``N / D`` consecutive particles resamples
  within itself, so ancestors stay on the group's device; every ``exchange_every`` steps a
  global resampling mixes the islands.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["particle_mesh", "constrain"]

AXIS = "particles"


def particle_mesh(devices: Sequence | Mesh | None) -> Mesh | None:
    """A one-axis mesh over ``devices`` (or the given mesh); None for a single device."""
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise ValueError(f"The mesh needs an axis named {AXIS!r}; it has {devices.axis_names}.")
        return devices
    devices = list(devices)
    if len(devices) <= 1:
        return None
    import numpy as np

    return Mesh(np.array(devices), (AXIS,))


def constrain(tree: Any, mesh: Mesh | None, axis_sizes: Sequence[int], axis: int = 0) -> Any:
    """Shards every leaf whose dimension ``axis`` has one of ``axis_sizes`` over the mesh."""
    if mesh is None:
        return tree

    def one(x):
        if x.ndim > axis and x.shape[axis] in axis_sizes and x.shape[axis] % mesh.size == 0:
            spec = [None] * x.ndim
            spec[axis] = AXIS
            return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
        return x

    return jax.tree.map(one, tree)


def constrain_state(state, mesh: Mesh | None, num_particles: int, num_contexts: int):
    """Constrains an SMC state: population and cache rows on axis 0, histories on axis 1."""
    if mesh is None:
        return state
    sizes = (num_particles, num_particles * num_contexts)
    parts = constrain(state.particles, mesh, sizes)
    lm = state.lm._replace(cache=constrain(state.lm.cache, mesh, sizes),
                           logprobs=constrain(state.lm.logprobs, mesh, sizes),
                           hidden=constrain(state.lm.hidden, mesh, sizes))
    out = state._replace(particles=parts, lm=lm)
    for name in ("ancestors", "hist_tokens", "hist_logw"):
        if hasattr(out, name):
            out = out._replace(**{name: constrain(getattr(out, name), mesh, sizes, axis=1)})
    return out
