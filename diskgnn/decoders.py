"""Link prediction's model side: edge decoders, the encoder-decoder model, its loss and ranking metrics.

An encoder (any model of :mod:`diskgnn.models`, its last layer ``hidden`` wide)
gives an embedding per seed of a link batch; a decoder scores a pair of
embeddings:

* ``dot``: ``<h_s, h_d>``;
* ``mlp``: a two-layer MLP on ``h_s * h_d`` (the Hadamard product, as OGB's
  link predictors; symmetric in s and d);
* ``distmult``: ``<h_s, r * h_d>`` with one learned relation vector ``r``
  (DistMult with a single relation).

Training minimises binary cross-entropy with logits over every positive
(label 1) and negative (label 0) score of the batch. Evaluation ranks each
held-out positive among its K candidates: with ``o`` candidates scoring higher
and ``t`` scoring equal, its rank is ``1 + o + t / 2``, the mean of the
optimistic (``1 + o``) and pessimistic (``1 + o + t``) ranks, as OGB's
evaluator does; MRR is the mean of ``1 / rank`` and Hits@K the share of
positives with ``rank <= K``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from diskgnn.errors import ConfigError

DECODERS = ("dot", "mlp", "distmult")
HITS_AT = (1, 10, 50)


class DotDecoder(nn.Module):
    """``score(s, d) = <h_s, h_d>``."""

    def forward(self, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        return (h_src * h_dst).sum(-1)


class DistMultDecoder(nn.Module):
    """``score(s, d) = <h_s, r * h_d>`` with one learned relation vector ``r`` (starts at all ones: the dot)."""

    def __init__(self, dim: int):
        super().__init__()
        self.relation = nn.Parameter(torch.ones(dim))

    def forward(self, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        return (h_src * self.relation * h_dst).sum(-1)


class MLPDecoder(nn.Module):
    """``score(s, d) = w2 . relu(W1 (h_s * h_d) + b1) + b2``."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(h_src * h_dst))).squeeze(-1)


def build_decoder(name: str, dim: int) -> nn.Module:
    if name not in DECODERS:
        raise ConfigError(f"--decoder {name!r} does not exist; choose one of {', '.join(DECODERS)}")
    if name == "dot":
        return DotDecoder()
    if name == "distmult":
        return DistMultDecoder(dim)
    return MLPDecoder(dim)


class LinkModel(nn.Module):
    """An encoder over the blocks and a decoder over pairs of its output rows.

    ``forward(blocks, x, pairs)`` takes a link batch's ``pairs`` (int64 [P, 2 + k]:
    seed positions of source, destination, then k negative or candidate
    destinations) and returns scores [P, 1 + k]: column 0 the positive edge
    ``(src, dst)``, column j the pair ``(src, candidate j-1)``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def embed(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(blocks, x)

    def forward(self, blocks: Sequence, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return score_pairs(self.decoder, self.encoder(blocks, x), pairs)


def score_pairs(decoder: nn.Module, h: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Scores [P, 1 + k] of the pairs of ``pairs`` (see :class:`LinkModel`) over embeddings ``h``."""
    if pairs.dim() != 2 or pairs.shape[1] < 3:
        raise ConfigError(f"link pairs must be [P, 2 + k] with k >= 1, got shape {tuple(pairs.shape)}")
    src = h[pairs[:, 0]].unsqueeze(1)            # [P, 1, D]
    dst = h[pairs[:, 1:].reshape(-1)].view(pairs.shape[0], pairs.shape[1] - 1, -1)  # [P, 1 + k, D]
    return decoder(src, dst)


def build_link_model(encoder: str, *, in_dim: int, num_layers: int, hidden: int | None = None, heads: int = 4,
                     dropout: float = 0.0, decoder: str = "dot", init: str | None = None) -> LinkModel:
    """An encoder of :func:`diskgnn.models.build_model` whose last layer outputs ``hidden`` values, and a decoder."""
    from diskgnn.models import build_model
    if hidden is None:
        hidden = 32 if encoder == "gat" else 128
    enc = build_model(encoder, in_dim=in_dim, num_classes=hidden, num_layers=num_layers, hidden=hidden,
                      heads=heads, dropout=dropout, init=init)
    return LinkModel(enc, build_decoder(decoder, hidden))


def link_loss(scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy with logits: column 0 of ``scores`` [P, 1 + k] is positive, the others negative."""
    target = torch.zeros_like(scores)
    target[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, target, reduction=reduction)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """float [P]: each positive's rank among its candidates, the mean of the optimistic and pessimistic ranks."""
    pos = scores[:, :1]
    neg = scores[:, 1:]
    optimistic = (neg > pos).sum(1)
    pessimistic = (neg >= pos).sum(1)
    return 0.5 * (optimistic + pessimistic).to(torch.float64) + 1.0


class RankingMetrics:
    """Sums of reciprocal ranks and hits over batches; :meth:`result` gives MRR and Hits@K."""

    def __init__(self, hits_at: Sequence[int] = HITS_AT):
        self.hits_at = tuple(hits_at)
        self.count = 0
        self.reciprocal_sum = 0.0
        self.hits = {k: 0 for k in self.hits_at}
        self.loss_sum = 0.0

    def add(self, scores: torch.Tensor) -> None:
        r = ranks(scores.detach().float())
        self.count += int(r.shape[0])
        self.reciprocal_sum += float((1.0 / r).sum())
        for k in self.hits_at:
            self.hits[k] += int((r <= k).sum())
        self.loss_sum += float(link_loss(scores.detach().float(), reduction="sum")) / max(scores.shape[1], 1)

    def result(self, prefix: str) -> dict:
        n = self.count
        out = {f"{prefix}_mrr": self.reciprocal_sum / n if n else None,
               f"{prefix}_loss": self.loss_sum / n if n else None}
        for k in self.hits_at:
            out[f"{prefix}_hits@{k}"] = self.hits[k] / n if n else None
        out[f"{prefix}_seeds"] = n
        return out
