"""steerppl: probabilistic programs that steer language models, compiled to JAX."""
