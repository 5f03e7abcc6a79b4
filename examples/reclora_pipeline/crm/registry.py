"""``build_crm(name, schema=..., **hyper_parameters)``: every CRM by name."""

from __future__ import annotations

from typing import Type

from .base import CrmModel
from .feature_interaction import DCNv2, AutoInt, DeepFM
from .inputs import SchemaLike
from .sequential import GRU4Rec, SASRec
from .target_attention import DIN, SIM

CRM_CLASSES: dict[str, Type[CrmModel]] = {
    model.name: model for model in (SIM, DIN, DeepFM, DCNv2, AutoInt, GRU4Rec, SASRec)
}
DEFAULT_CRM = "sim"


def available_crms() -> list[str]:
    return list(CRM_CLASSES)


def crm_class(name: str) -> Type[CrmModel]:
    key = name.lower()
    if key not in CRM_CLASSES:
        raise ValueError(f"unknown CRM {name!r}; available: {', '.join(CRM_CLASSES)}")
    return CRM_CLASSES[key]


def build_crm(name: str, *, schema: SchemaLike, rc_layer: int = -1, **hyper_parameters) -> CrmModel:
    """Build a CRM for the given schema (a ``CrmSchema`` or any ``CTRFeatures`` split of the data).

    Common hyper-parameters: ``embed_dim`` (32), ``hidden_dims`` ((256, 256, 256); R_c is ``hidden_dims[rc_layer]``
    wide), ``dropout`` (0.1), ``rc_layer`` (-1: the last MLP hidden layer). Model-specific ones are listed in each
    class; an unknown name raises a ``TypeError`` naming it.
    """
    return crm_class(name)(schema, rc_layer=rc_layer, **hyper_parameters)
