"""Weighted k-nearest-neighbour accuracy on frozen features (Wu et al. 2018), the usual SSL monitor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def knn_predict(
    query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024
) -> Tensor:
    """Class predictions for ``query`` by cosine-similarity-weighted vote of the ``k`` nearest bank features."""
    bank = F.normalize(bank.float(), dim=-1)
    k = min(k, bank.shape[0])
    preds = []
    for q in F.normalize(query.float(), dim=-1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=-1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(-1))
    return torch.cat(preds)


class KNNAccuracy(Metric):
    """Top-1 kNN accuracy of query features against a labelled feature bank, both gathered over ranks."""

    full_state_update = False

    def __init__(self, num_classes: int, k: int = 20, temperature: float = 0.07, dim: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.k, self.temperature, self.dim = num_classes, k, temperature, dim
        for name in ("bank_feats", "bank_labels", "query_feats", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._start_empty()

    def _start_empty(self) -> None:
        # a rank without bank or query samples must gather (0, dim) features, not torchmetrics' empty 1-D stand-in
        if self.dim is not None:
            for prefix in ("bank", "query"):
                getattr(self, f"{prefix}_feats").append(torch.zeros(0, self.dim, device=self.device))
                getattr(self, f"{prefix}_labels").append(torch.zeros(0, dtype=torch.long, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._start_empty()

    def update(self, features: Tensor, labels: Tensor, bank: bool) -> None:
        """Add features to the bank (``bank=True``) or to the queries."""
        prefix = "bank" if bank else "query"
        getattr(self, f"{prefix}_feats").append(features.detach().float())
        getattr(self, f"{prefix}_labels").append(labels.detach().long())

    def compute(self) -> Tensor:
        # list states before a sync; one concatenated tensor per state after torchmetrics gathers them over ranks
        if any(isinstance(s, list) and not s for s in (self.bank_feats, self.query_feats)):
            return torch.tensor(float("nan"))
        bank, bank_labels = dim_zero_cat(self.bank_feats), dim_zero_cat(self.bank_labels)
        query, query_labels = dim_zero_cat(self.query_feats), dim_zero_cat(self.query_labels)
        if bank.shape[0] == 0 or query.shape[0] == 0:
            return torch.tensor(float("nan"), device=query.device)
        preds = knn_predict(query, bank, bank_labels, self.num_classes, self.k, self.temperature)
        return (preds == query_labels).float().mean()
