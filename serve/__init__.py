"""The serving module: loads an exported artifact and decides, without any training-only import."""
