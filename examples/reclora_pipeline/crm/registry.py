"""``build_crm(name, schema=..., **hyper_parameters)``: every CRM by name. The registry is the one list of CRMs: the
run config's choices, the display names (``crm_class(name).display_name``) and the history each reads come from it.

Entries name the module and class, which are imported when a CRM is first used, so listing the names (the command
line's choices and ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Type


if TYPE_CHECKING:
    from .base import CrmModel
    from .inputs import SchemaLike

# name -> (module of this package, class)
CRMS: dict[str, tuple[str, str]] = {
    "sim": (".target_attention", "SIM"),
    "din": (".target_attention", "DIN"),
    "deepfm": (".feature_interaction", "DeepFM"),
    "dcnv2": (".feature_interaction", "DCNv2"),
    "autoint": (".feature_interaction", "AutoInt"),
    "gru4rec": (".sequential", "GRU4Rec"),
    "sasrec": (".sequential", "SASRec"),
}
DEFAULT_CRM = "sim"


def available_crms() -> list[str]:
    """The names ``crm.name`` and ``crm.baselines`` choose from."""
    return list(CRMS)


def crm_class(name: str) -> Type["CrmModel"]:
    key = name.lower()
    if key not in CRMS:
        raise ValueError(f"unknown CRM {name!r}; available: {', '.join(CRMS)}")
    module, class_name = CRMS[key]
    cls = getattr(importlib.import_module(module, __package__), class_name)
    if cls.name != key:
        raise RuntimeError(f"the CRM registry lists {class_name} as {key!r}, but the class calls itself {cls.name!r}")
    return cls


def build_crm(name: str, *, schema: "SchemaLike", rc_layer: int = -1, **hyper_parameters) -> "CrmModel":
    """Build a CRM for the given schema (a ``CrmSchema`` or any ``CTRFeatures`` split of the data).

    Common hyper-parameters, as the run config's ``crm.model`` section sets them: ``embed_dim`` and ``hidden_dims``
    (both required; R_c is ``hidden_dims[rc_layer]`` wide), ``dropout`` (0.1), ``rc_layer`` (-1: the last MLP hidden
    layer). Model-specific ones are listed in each class; an unknown name raises a ``TypeError`` naming it.
    """
    return crm_class(name)(schema, rc_layer=rc_layer, **hyper_parameters)
