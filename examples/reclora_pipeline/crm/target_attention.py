"""DIN and SIM: target attention over the user's behaviour history (the paper's user behaviour models).

Both embed every categorical field and every history slot in one shared table, encode each behaviour together with
its rating (``HistoryEncoder``), pool the history with attention queried by the target item, and feed the field
embeddings plus the pooled interest to an MLP. They differ in the history they read and the attention they use:

- DIN (Zhou et al., KDD 2018) reads the history it is given (usually the most recent behaviours) with DIN's
  activation-unit attention.
- SIM (Pi et al., CIKM 2020) is a two-stage model. Its search stage is the pipeline's Long-Short Modality Retriever,
  which has already put the behaviours most relevant to the target into ``hist_items``; its exact search unit is
  multi-head target attention over those retrieved behaviours. The published RecLoRA code instead runs its DIN class
  on the retrieved history; ``SIM(attention="din")`` reproduces that.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import CrmModel
from .inputs import SchemaLike
from .layers import DinAttention, HistoryEncoder, MLPTower, MultiHeadTargetAttention


ATTENTIONS = ("din", "multihead")


class DIN(CrmModel):
    name = "din"
    display_name = "DIN"
    default_attention = "din"

    def __init__(
        self,
        schema: SchemaLike,
        *,
        attention: str | None = None,
        attention_hidden_dims: Sequence[int] = (64,),
        attention_softmax: bool = False,
        num_heads: int = 2,
        **common,
    ):
        super().__init__(schema, **common)
        attention = attention or self.default_attention
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.hyper_parameters.update(
            attention=attention,
            attention_hidden_dims=list(attention_hidden_dims),
            attention_softmax=bool(attention_softmax),
            num_heads=int(num_heads),
        )
        dim = self.embed_dim
        self.embedding = nn.Embedding(self.schema.vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.history_encoder = HistoryEncoder(dim)
        if attention == "din":
            self.attention = DinAttention(dim, attention_hidden_dims, softmax=attention_softmax)
        else:
            self.attention = MultiHeadTargetAttention(dim, num_heads=num_heads)
        self.tower = MLPTower((self.schema.num_fields + 1) * dim, self.hidden_dims, self.dropout)

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        field_embeds = self.embedding(batch["fields"])
        target = field_embeds[:, self.schema.item_field]
        mask = batch["hist_mask"]
        history = self.history_encoder(self.embedding(batch["hist_items"]), self.embedding(batch["hist_ratings"]),
                                       mask)
        interest = self.attention(target, history, mask)
        return self.tower(torch.cat([field_embeds.flatten(1), interest], dim=1))


class SIM(DIN):
    """SIM's exact search unit over the retrieved long history (the paper's default CRM)."""

    name = "sim"
    display_name = "SIM"
    history_source = "retrieved"  # SIM is defined by its retrieved long history
    default_attention = "multihead"
