"""The standard library: constraints (hard) and potentials (soft)."""
