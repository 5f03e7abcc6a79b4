"""The interface every conventional recommender (CRM) in the pipeline implements.

    logits = crm(batch)                  # (B,) click/like logits, trained with BCE-with-logits
    r_c = crm.represent(batch)           # (B, crm.crm_dim): the hidden layer that feeds RecLoRA's gate

A subclass builds its network in ``__init__`` and implements ``compute(batch) -> (logits, hidden_layers)``, where
``hidden_layers`` lists the outputs of its MLP's hidden layers, first to last. R_c is one of them: ``rc_layer``
(default -1, the last MLP hidden layer, as in the published RecLoRA code) picks which, and ``crm_dim`` is its width.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import nn

from ..config import DEFAULT_CRM_DROPOUT, DEFAULT_RC_LAYER
from .inputs import CrmSchema, SchemaLike, as_schema, check_batch


class CrmModel(nn.Module):
    """Base class: schema, hyper-parameters (everything needed to rebuild the model) and the R_c choice."""

    name: ClassVar[str] = ""  # the registry name (``build_crm(name)``, ``crm.name`` in the run config)
    display_name: ClassVar[str] = ""  # as results tables show it
    # The long history it reads in the pipeline: "retrieved" (the run's retrieval mode) or "recent" (the most recent
    # K_long items, as each model was published).
    history_source: ClassVar[str] = "recent"

    def __init__(
        self,
        schema: SchemaLike,
        *,
        embed_dim: int,
        hidden_dims: Sequence[int],
        dropout: float = DEFAULT_CRM_DROPOUT,
        rc_layer: int = DEFAULT_RC_LAYER,
        validate_inputs: bool = True,
    ):
        super().__init__()
        self.schema: CrmSchema = as_schema(schema)
        hidden_dims = tuple(int(width) for width in hidden_dims)
        if not hidden_dims or min(hidden_dims) < 1:
            raise ValueError(f"hidden_dims must list at least one positive width, got {hidden_dims}")
        if not -len(hidden_dims) <= rc_layer < len(hidden_dims):
            raise ValueError(f"rc_layer={rc_layer} is not a hidden layer of hidden_dims={hidden_dims}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim = int(embed_dim)
        self.hidden_dims = hidden_dims
        self.dropout = float(dropout)
        self.rc_layer = int(rc_layer)
        self.validate_inputs = validate_inputs
        # Subclasses add their own entries; all of it goes into the saved JSON config.
        self.hyper_parameters: dict = {
            "embed_dim": self.embed_dim,
            "hidden_dims": list(hidden_dims),
            "dropout": self.dropout,
        }

    # ----------------------------------------------------------------------------------------------------------------
    # to implement

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (logits (B,), outputs of the MLP hidden layers, first to last)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------------
    # public interface

    @property
    def crm_dim(self) -> int:
        """Width of R_c, the vector ``represent`` returns (what ``RecLoraConfig(crm_dim=...)`` must be set to)."""
        return self.hidden_dims[self.rc_layer]

    def forward(self, batch: dict) -> torch.Tensor:
        if self.validate_inputs:
            check_batch(batch, self.schema)
        logits, _ = self.compute(batch)
        return logits

    def represent(self, batch: dict, layer: Optional[int] = None) -> torch.Tensor:
        """R_c: the output of MLP hidden layer ``layer`` (default: the configured ``rc_layer``), shape (B, width)."""
        layer = self.rc_layer if layer is None else layer
        if not -len(self.hidden_dims) <= layer < len(self.hidden_dims):
            raise ValueError(f"layer={layer} is not a hidden layer of this CRM (hidden_dims={self.hidden_dims})")
        if self.validate_inputs:
            check_batch(batch, self.schema)
        _, hiddens = self.compute(batch)
        return hiddens[layer]

    def config(self) -> dict:
        """Everything ``build_crm`` needs to rebuild this model (JSON-serialisable)."""
        return {
            "model_name": self.name,
            "schema": self.schema.to_dict(),
            "hyper_parameters": dict(self.hyper_parameters),
            "rc_layer": self.rc_layer,
            "crm_dim": self.crm_dim,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, crm_dim={self.crm_dim}, rc_layer={self.rc_layer}"
