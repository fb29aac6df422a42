"""Embedding-health and evaluation metrics (torchmetrics, so they sync across DDP ranks)."""

from jepa_platform.metrics.embedding import EmbeddingStats, effective_rank, embedding_stats
from jepa_platform.metrics.knn import KNNAccuracy

__all__ = ["EmbeddingStats", "KNNAccuracy", "effective_rank", "embedding_stats"]
