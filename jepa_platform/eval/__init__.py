"""Offline evaluation of frozen encoders: linear probe and kNN on extracted features."""

from jepa_platform.eval.probe import extract_features, knn_accuracy, linear_probe_accuracy

__all__ = ["extract_features", "knn_accuracy", "linear_probe_accuracy"]
