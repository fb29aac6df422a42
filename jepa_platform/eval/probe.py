"""Frozen-feature evaluation: features are extracted once, then a linear classifier and a kNN vote are fitted.

The linear probe is multinomial logistic regression on standardised features, fitted full-batch with L-BFGS: no
learning-rate schedule to tune, deterministic, and a few seconds on a CPU for tens of thousands of samples.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_platform.masking.collate import model_input
from jepa_platform.metrics.knn import knn_predict


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(features, labels)`` of every ``{"image" or "frames", "label"}`` batch, with the encoder in eval mode."""
    encoder.eval().to(device)
    feats, labels = [], []
    for batch in batches:
        feats.append(encoder(model_input(batch).to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
    if not feats:
        raise ValueError("no batches to extract features from")
    return torch.cat(feats), torch.cat(labels).long()


def linear_probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 300
) -> float:
    """Top-1 accuracy on ``test`` of an L2-regularised logistic regression fitted on ``train``."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    head = nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(train_x), train_y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (head(test_x).argmax(-1) == test_y).float().mean().item()


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, k: int = 20) -> float:
    return (knn_predict(test_x, train_x, train_y, num_classes, k) == test_y).float().mean().item()
