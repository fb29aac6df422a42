"""jepa-platform: joint-embedding self-supervised learning and world models on Lightning, Hydra and MLflow."""

__version__ = "0.1.0"
