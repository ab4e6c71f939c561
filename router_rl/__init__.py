"""router-rl: learn, per request, which LLM should answer.

Importing this package is cheap: heavy modules (torch, sentence-transformers, Hydra, MLflow) load only when a
submodule that needs them is imported.
"""

__version__ = "0.1.0"
