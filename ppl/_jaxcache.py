"""JAX's persistent compilation cache, on by default for every run."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache for this process; returns its folder.

    The folder is ``$PPL_CACHE_DIR`` or ``~/.cache/steerppl/jax``; an empty ``PPL_CACHE_DIR``
    disables it. Failures (read-only home, old JAX) leave the cache off, never the run.
    """
    folder = os.environ.get("PPL_CACHE_DIR")
    if folder is None:
        folder = str(Path.home() / ".cache" / "steerppl" / "jax")
    if not folder:
        return None
    try:
        import jax

        Path(folder).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # the cache is an optimisation only
        return None
    return folder
