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
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ppl.inference import resampling as R

__all__ = ["AXIS", "particle_mesh", "constrain", "constrain_state", "islands"]

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


def constrain(tree: Any, mesh: Mesh | None, axis: int = 0) -> Any:
    """Shards axis ``axis`` of every leaf of ``tree`` over the mesh's particle axis.

    Callers pass only trees whose every leaf has the particle (or cache-row) axis there: the
    fields are chosen by name, never by matching a dimension's size.
    """
    if mesh is None:
        return tree

    def one(x):
        spec = [None] * x.ndim
        spec[axis] = AXIS
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))

    return jax.tree.map(one, tree)


def constrain_state(state, mesh: Mesh | None):
    """Constrains an [SMCState][ppl.inference.smc.SMCState] field by field: the population,
    cache rows, log-probabilities and hidden states on axis 0; the per-step histories
    (``ancestors``, ``hist_tokens``, ``hist_logw``: ``[T, N]``) on axis 1."""
    if mesh is None:
        return state
    kv = state.kv
    return state._replace(
        particles=constrain(state.particles, mesh),
        kv=kv._replace(cache=constrain(kv.cache, mesh), logprobs=constrain(kv.logprobs, mesh),
                       hidden=constrain(kv.hidden, mesh)),
        ancestors=constrain(state.ancestors, mesh, 1),
        hist_tokens=constrain(state.hist_tokens, mesh, 1),
        hist_logw=constrain(state.hist_logw, mesh, 1),
    )


def islands(scheme: str, ess_threshold: float, num_islands: int, exchange_every: int = 0
            ) -> R.Resampling:
    """Island resampling: each group of ``N / num_islands`` consecutive particles resamples
    within itself, its weights reset to the group's mean weight (so the final estimate is the
    mean of the islands' unbiased estimates); every ``exchange_every`` steps (0: never) a
    resampling is global instead. With one island per device the draw and the row gathers stay
    on the device that holds the island."""
    resample_fn = R.RESAMPLERS[scheme]
    g_islands = int(num_islands)

    def exchange(t):
        return (exchange_every > 0) & ((t + 1) % max(exchange_every, 1) == 0)

    def draw(key, logw, m):
        # Survivors keep their slots (within their island for an island draw).
        return R.stable_ancestors(resample_fn(key, logw, m))

    def select(k_res, k_anc, t, cand: R.Candidates):
        lw = cand.particles.logw
        n = lw.shape[0]
        g = n // g_islands
        idx = draw(k_res, lw, n)
        mean = R.log_mean_exp(lw)
        lwr = lw.reshape(g_islands, g)
        local = jax.vmap(lambda k, w: draw(k, w, g))(jax.random.split(k_res, g_islands), lwr)
        island_idx = (local + g * jnp.arange(g_islands, dtype=jnp.int32)[:, None]).reshape(n)
        island_mean = jnp.repeat(jax.vmap(R.log_mean_exp)(lwr), g)
        ex = exchange(t)
        return jnp.where(ex, idx, island_idx), jnp.full_like(lw, jnp.where(ex, mean, island_mean))

    def take(y, rows, t):
        return jax.lax.cond(exchange(t), lambda z: jnp.take(z, rows, axis=0),
                            lambda z: _island_take(z, rows, g_islands), y)

    return R.Resampling(float(ess_threshold), select, take, True)


def _island_take(y, rows, islands: int):
    """``jnp.take(y, rows, axis=0)`` for island ancestors (every row's source in its own island).

    A batched gather over an ``[islands, rows per island, ...]`` view: with the particle axis
    sharded one island (or several) per device, XLA's partitioner keeps it on the device that
    holds the island, where a flat take all-gathers the whole array.
    """
    g = y.shape[0] // islands
    local = rows.reshape(islands, g) - g * jnp.arange(islands, dtype=rows.dtype)[:, None]
    yr = y.reshape((islands, g) + y.shape[1:])
    return jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(yr, local).reshape(y.shape)
