"""The gate network: CRM representation R_c -> per-sample mixing weights over the meta-LoRA bank (paper, Eq. 13-14).

    beta  = W2 ReLU(LN(W1 R_c + b1)) + b2
    alpha = softmax(beta / temperature)

The parameters are held directly on the module (``fc1_weight``, ``norm_bias``, ...) rather than in child ``Linear`` /
``LayerNorm`` modules, so that the adapter name stays the second-to-last component of every state-dict key
(``reclora_gate.<adapter>.fc1_weight``). PEFT strips the adapter name from exactly that position when saving, which is
what lets an adapter be loaded back under another name.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RecLoraGate(nn.Module):
    def __init__(
        self, crm_dim: int, hidden_dim: int, num_meta_loras: int, temperature: float = 1.0, dropout: float = 0.0
    ):
        super().__init__()
        self.crm_dim = crm_dim
        self.hidden_dim = hidden_dim
        self.num_meta_loras = num_meta_loras
        self.temperature = float(temperature)
        self.dropout = float(dropout)
        self.fc1_weight = nn.Parameter(torch.empty(hidden_dim, crm_dim))
        self.fc1_bias = nn.Parameter(torch.empty(hidden_dim))
        self.norm_weight = nn.Parameter(torch.ones(hidden_dim))
        self.norm_bias = nn.Parameter(torch.zeros(hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_meta_loras, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_meta_loras))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Linear`` and ``nn.LayerNorm``."""
        for weight, bias in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(bias, -bound, bound)
        nn.init.ones_(self.norm_weight)
        nn.init.zeros_(self.norm_bias)

    def logits(self, crm_embeds: torch.Tensor, dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """beta of Eq. 13, (batch, num_meta_loras). ``dropout_mask`` (batch, hidden_dim), already scaled by 1/(1-p),
        is applied after the ReLU; the caller draws it once per forward call so every layer sees the same mask."""
        crm_embeds = crm_embeds.to(dtype=self.fc1_weight.dtype, device=self.fc1_weight.device)
        hidden = F.linear(crm_embeds, self.fc1_weight, self.fc1_bias)
        hidden = F.layer_norm(hidden, (self.hidden_dim,), self.norm_weight, self.norm_bias)
        hidden = F.relu(hidden)
        if dropout_mask is not None:
            hidden = hidden * dropout_mask.to(hidden.dtype)
        return F.linear(hidden, self.fc2_weight, self.fc2_bias)

    def forward(self, crm_embeds: torch.Tensor, dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """alpha of Eq. 14, (batch, num_meta_loras); rows sum to one."""
        return torch.softmax(self.logits(crm_embeds, dropout_mask) / self.temperature, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"crm_dim={self.crm_dim}, hidden_dim={self.hidden_dim}, num_meta_loras={self.num_meta_loras}, "
            f"temperature={self.temperature}, dropout={self.dropout}"
        )
