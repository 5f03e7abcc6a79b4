"""DeepFM, DCNv2 and AutoInt from torch-rechub, the paper's feature-interaction baselines (Table 2, Appendix B).

The networks are torch-rechub's own classes (``torch_rechub.models.ranking``); this module only feeds them
``CTRFeatures`` batches and reads their outputs the way the pipeline needs:

- Inputs: every field becomes a torch-rechub ``SparseFeature`` and all of them share one embedding table (the
  pipeline's single vocabulary). As the paper does for these models, the history is mean-pooled into two extra
  fields: one for the behaviours, one for their ratings (``SequenceFeature`` with mean pooling, padding token 0).
- Outputs: torch-rechub's ``forward`` returns probabilities; the pipeline trains on logits (numerically stable BCE)
  and needs a hidden layer as R_c, so ``compute`` runs the same sub-modules in the same order and stops before the
  sigmoid, collecting the MLP's hidden layers on the way. torch-rechub's MLP blocks are
  ``[Linear, BatchNorm1d, activation, Dropout]``; their layout is checked when a model is built.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import CrmModel
from .inputs import SchemaLike


HISTORY = "history"
HISTORY_RATING = "history_rating"
_MLP_BLOCK = 4  # Linear, BatchNorm1d, activation, Dropout


def _import_rechub():
    try:
        import torch_rechub.basic.features as features
        import torch_rechub.basic.initializers as initializers
        import torch_rechub.models.ranking as ranking
    except ImportError as error:  # pragma: no cover - exercised only without the dependency
        raise ImportError(
            "DeepFM, DCNv2 and AutoInt come from torch-rechub: `pip install torch-rechub==0.9.0`"
        ) from error
    return features, initializers, ranking


class _RechubCRM(CrmModel):
    """Shared input mapping and MLP reading for the torch-rechub models."""

    def __init__(self, schema: SchemaLike, **common):
        super().__init__(schema, **common)
        features, initializers, _ = _import_rechub()
        init = initializers.RandomNormal(0.0, 0.05)
        vocab, dim = self.schema.vocab_size, self.embed_dim
        self.field_keys = [f"field_{column}" for column in range(self.schema.num_fields)]
        owner = self.field_keys[0]
        self.rechub_features = [features.SparseFeature(owner, vocab, dim, padding_idx=0, initializer=init)]
        self.rechub_features += [
            features.SparseFeature(key, vocab, dim, shared_with=owner, padding_idx=0) for key in self.field_keys[1:]
        ]
        self.rechub_features += [
            features.SequenceFeature(key, vocab, dim, pooling="mean", shared_with=owner, padding_idx=0)
            for key in (HISTORY, HISTORY_RATING)
        ]
        self.mlp_params = {"dims": list(self.hidden_dims), "dropout": self.dropout, "activation": "relu"}

    def rechub_inputs(self, batch: dict) -> dict:
        fields = batch["fields"]
        inputs = {key: fields[:, column] for column, key in enumerate(self.field_keys)}
        inputs[HISTORY] = batch["hist_items"]
        inputs[HISTORY_RATING] = batch["hist_ratings"]
        return inputs

    def check_mlp_layout(self, sequential: nn.Sequential, output_layer: bool) -> None:
        expected = _MLP_BLOCK * len(self.hidden_dims) + int(output_layer)
        linears = [module for module in sequential if isinstance(module, nn.Linear)]
        if len(sequential) != expected or len(linears) != len(self.hidden_dims) + int(output_layer):
            raise RuntimeError(
                "torch-rechub's MLP layout changed (expected [Linear, BatchNorm1d, activation, Dropout] blocks); "
                "this wrapper was written for torch-rechub 0.9"
            )

    def run_mlp(self, sequential: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
        hiddens = []
        for start in range(0, _MLP_BLOCK * len(self.hidden_dims), _MLP_BLOCK):
            for module in sequential[start : start + _MLP_BLOCK]:
                x = module(x)
            hiddens.append(x)
        return hiddens


class DeepFM(_RechubCRM):
    """DeepFM (Guo et al., IJCAI 2017): linear + factorization machine + MLP over the field embeddings."""

    name = "deepfm"
    display_name = "DeepFM"

    def __init__(self, schema: SchemaLike, **common):
        super().__init__(schema, **common)
        _, _, ranking = _import_rechub()
        self.net = ranking.DeepFM(self.rechub_features, self.rechub_features, self.mlp_params)
        self.check_mlp_layout(self.net.mlp.mlp, output_layer=True)

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        embeds = net.embedding(self.rechub_inputs(batch), net.fm_features, squeeze_dim=False)  # (B, fields, E)
        flat = embeds.flatten(start_dim=1)  # the deep and FM parts read the same features
        hiddens = self.run_mlp(net.mlp.mlp, flat)
        logits = net.linear(flat) + net.fm(embeds) + net.mlp.mlp[-1](hiddens[-1])
        return logits.squeeze(1), hiddens


class DCNv2(_RechubCRM):
    """DCN-V2 (Wang et al., WWW 2021) with full-rank cross layers.

    ``structure="stacked"`` (default) runs the MLP on the cross network's output, so R_c, the last MLP hidden layer,
    carries both the explicit crosses and the deep part. ``"parallel"`` runs them side by side; R_c is then the deep
    part's last hidden layer only.
    """

    name = "dcnv2"
    display_name = "DCNv2"

    def __init__(self, schema: SchemaLike, *, cross_layers: int = 3, structure: str = "stacked", **common):
        super().__init__(schema, **common)
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        self.hyper_parameters.update(cross_layers=int(cross_layers), structure=structure)
        _, _, ranking = _import_rechub()
        self.structure = structure
        self.net = ranking.DCNv2(
            self.rechub_features,
            n_cross_layers=cross_layers,
            mlp_params=self.mlp_params,
            model_structure=structure,
            use_low_rank_mixture=False,
        )
        self.check_mlp_layout(self.dnn.mlp, output_layer=False)

    @property
    def dnn(self):
        return self.net.stacked_dnn if self.structure == "stacked" else self.net.parallel_dnn

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        embeds = net.embedding(self.rechub_inputs(batch), net.features, squeeze_dim=True)
        cross = net.crossnet(embeds)
        if self.structure == "stacked":
            hiddens = self.run_mlp(self.dnn.mlp, cross)
            final = hiddens[-1]
        else:
            hiddens = self.run_mlp(self.dnn.mlp, embeds)
            final = torch.cat([cross, hiddens[-1]], dim=1)
        return net.linear(final).squeeze(1), hiddens


class AutoInt(_RechubCRM):
    """AutoInt (Song et al., CIKM 2019): self-attention across fields, plus a linear part and an MLP."""

    name = "autoint"
    display_name = "AutoInt"

    def __init__(self, schema: SchemaLike, *, attention_layers: int = 3, num_heads: int = 1, **common):
        super().__init__(schema, **common)
        if self.embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={num_heads}")
        self.hyper_parameters.update(attention_layers=int(attention_layers), num_heads=int(num_heads))
        _, _, ranking = _import_rechub()
        self.net = ranking.AutoInt(
            self.rechub_features, None, num_layers=attention_layers, num_heads=num_heads, mlp_params=self.mlp_params
        )
        self.check_mlp_layout(self.net.mlp.mlp, output_layer=True)

    def compute(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        embeds = net.sparse_embedding(self.rechub_inputs(batch), net.sparse_features, squeeze_dim=False)
        flat = embeds.flatten(start_dim=1)
        attended = embeds
        for layer in net.interacting_layers:
            attended = layer(attended)
        hiddens = self.run_mlp(net.mlp.mlp, flat)
        logits = net.attn_linear(attended.flatten(start_dim=1)) + net.linear(flat) + net.mlp.mlp[-1](hiddens[-1])
        return logits.squeeze(1), hiddens
