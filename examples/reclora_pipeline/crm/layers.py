"""Building blocks shared by the CRMs written in this package (SIM, DIN, GRU4Rec, SASRec)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLPTower(nn.Module):
    """``[Linear, ReLU, Dropout]`` blocks followed by a one-logit output layer.

    Every hidden layer's output is returned, so any of them can serve as the CRM representation R_c (the default,
    as in the published RecLoRA code, is the last one).
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], dropout: float = 0.0):
        super().__init__()
        if not hidden_dims:
            raise ValueError("the MLP tower needs at least one hidden layer (R_c is taken from one)")
        blocks = []
        width = input_dim
        for hidden in hidden_dims:
            blocks.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)))
            width = hidden
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hiddens = []
        for block in self.blocks:
            x = block(x)
            hiddens.append(x)
        return self.output(x).squeeze(-1), hiddens


class HistoryEncoder(nn.Module):
    """One vector per history slot: item embedding and rating embedding, concatenated, Linear(2E -> E) + ReLU.

    This is how the published RecLoRA CRM combines a behaviour with its rating. Padding slots are zeroed so they
    carry nothing into pooling or attention.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.ReLU())

    def forward(self, item_embeds: torch.Tensor, rating_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoded = self.project(torch.cat([item_embeds, rating_embeds], dim=-1))
        return encoded * mask.unsqueeze(-1).to(encoded.dtype)


class DinAttention(nn.Module):
    """DIN's activation unit: an MLP scores each behaviour from [target, h, target - h, target * h].

    As in DIN (and the published RecLoRA code) the weights are not normalised by a softmax, so the pooled vector also
    carries how much relevant history there is; masked slots get weight 0.
    """

    def __init__(self, embed_dim: int, hidden_dims: Sequence[int] = (64,), softmax: bool = False):
        super().__init__()
        layers = []
        width = 4 * embed_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.score = nn.Sequential(*layers)
        self.softmax = softmax

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = target.unsqueeze(1).expand_as(history)
        scores = self.score(torch.cat([query, history, query - history, query * history], dim=-1)).squeeze(-1)
        if self.softmax:
            weights = masked_softmax(scores, mask)
        else:
            weights = scores * mask.to(scores.dtype)
        return torch.bmm(weights.unsqueeze(1), history).squeeze(1)


class MultiHeadTargetAttention(nn.Module):
    """SIM's exact search unit: multi-head attention of the target item over the retrieved behaviours.

    Scores are scaled dot products of projected target and behaviours, normalised per head with a softmax over the
    filled slots; a user with no filled slot gets a zero vector instead of a NaN.
    """

    def __init__(self, embed_dim: int, num_heads: int = 2):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = history.shape
        query = self.query(target).view(batch, self.num_heads, 1, self.head_dim)
        key = self.key(history).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.value(history).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (query @ key.transpose(-1, -2)).squeeze(2) / self.head_dim**0.5  # (batch, heads, length)
        weights = masked_softmax(scores, mask.unsqueeze(1))
        pooled = (weights.unsqueeze(2) @ value).squeeze(2).reshape(batch, dim)
        return self.out(pooled) * mask.any(dim=1, keepdim=True).to(pooled.dtype)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with no True give all-zero weights (not NaN)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    return weights * mask.to(weights.dtype)


def left_align(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the filled slots of each row to the front, keeping their order, so padding may sit anywhere on input.

    Sequence models read the history in stored order (oldest first) and need the filled slots contiguous.
    """
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    return tokens.gather(1, order), mask.gather(1, order)
