"""Inference backends."""
