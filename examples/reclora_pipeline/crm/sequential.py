"""GRU4Rec and SASRec as CTR models: a sequence encoder reads the history, its last state joins the field embeddings.

Both were proposed for next-item prediction; the paper (Table 2, Appendix B) uses them as CTR baselines in the
usual way: the user's interest is the encoder state after the most recent behaviour, concatenated with the embedded
fields (target item included) and scored by an MLP. Behaviours are encoded with their ratings exactly as in DIN/SIM.
The history is read in stored order, which the data stage keeps chronological (oldest first); padding may sit
anywhere, the filled slots are moved to the front first.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import CrmModel
from .inputs import SchemaLike
from .layers import HistoryEncoder, MLPTower, left_align


class _SequenceCRM(CrmModel):
    def __init__(self, schema: SchemaLike, **common):
        super().__init__(schema, **common)
        dim = self.embed_dim
        self.embedding = nn.Embedding(self.schema.vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.history_encoder = HistoryEncoder(dim)

    def encode_sequence(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, K, E) left-aligned behaviours -> (B, K, H) states."""
        raise NotImplementedError

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        field_embeds = self.embedding(batch["fields"])
        mask = batch["hist_mask"]
        items, _ = left_align(batch["hist_items"], mask)
        ratings, mask = left_align(batch["hist_ratings"], mask)
        history = self.history_encoder(self.embedding(items), self.embedding(ratings), mask)
        states = self.encode_sequence(history, mask)
        lengths = mask.sum(dim=1)
        last = (lengths - 1).clamp(min=0)
        interest = states[torch.arange(states.shape[0], device=states.device), last]
        interest = interest * (lengths > 0).unsqueeze(1).to(interest.dtype)  # no history: no interest vector
        return self.tower(torch.cat([field_embeds.flatten(1), interest], dim=1))


class GRU4Rec(_SequenceCRM):
    """GRU over the behaviour sequence (Hidasi et al., ICLR 2016); interest = hidden state after the last behaviour."""

    name = "gru4rec"
    display_name = "GRU4Rec"

    def __init__(self, schema: SchemaLike, *, gru_hidden_dim: int = 64, gru_layers: int = 1, **common):
        super().__init__(schema, **common)
        self.hyper_parameters.update(gru_hidden_dim=int(gru_hidden_dim), gru_layers=int(gru_layers))
        self.gru = nn.GRU(self.embed_dim, gru_hidden_dim, num_layers=gru_layers, batch_first=True)
        self.tower = MLPTower(self.schema.num_fields * self.embed_dim + gru_hidden_dim, self.hidden_dims, self.dropout)

    def encode_sequence(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Filled slots come first, so the state at the last filled slot has not seen any padding.
        states, _ = self.gru(history)
        return states


class SASRec(_SequenceCRM):
    """Causal self-attention over the behaviour sequence (Kang and McAuley, ICDM 2018)."""

    name = "sasrec"
    display_name = "SASRec"

    def __init__(self, schema: SchemaLike, *, num_heads: int = 2, attention_layers: int = 1, **common):
        super().__init__(schema, **common)
        if self.embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={num_heads}")
        self.hyper_parameters.update(num_heads=int(num_heads), attention_layers=int(attention_layers))
        self.positions = nn.Embedding(self.schema.history_length, self.embed_dim)
        nn.init.normal_(self.positions.weight, std=0.05)
        layer = nn.TransformerEncoderLayer(
            self.embed_dim,
            num_heads,
            dim_feedforward=self.embed_dim,
            dropout=self.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.embed_dim)
        length = self.schema.history_length
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.tower = MLPTower((self.schema.num_fields + 1) * self.embed_dim, self.hidden_dims, self.dropout)

    def encode_sequence(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        history = history + self.positions.weight.unsqueeze(0) * mask.unsqueeze(-1).to(history.dtype)
        # A row with no behaviour would attend to nothing (NaN); let it see its first (zero) slot, its output is
        # discarded by the caller anyway.
        padding = ~mask
        padding[:, 0] = False
        states = self.encoder(history, mask=self.causal_mask, src_key_padding_mask=padding)
        return self.norm(states)
