"""Hydra configs shipped with router-rl (the top-level configs/ folder)."""
