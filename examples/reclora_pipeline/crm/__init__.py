"""Conventional recommenders (CRMs): stage 1 of Few2Many and the source of R_c for RecLoRA's gate.

    model, report = train_crm("sim", train_features, valid_features, CrmTrainingConfig())
    evaluate_crm(model, test_features)                        # {"auc": ..., "logloss": ..., "num_samples": ...}
    table = CrmEmbeddingTable.from_model(model, features, cache_path="rc/train.safetensors")
    crm_embeds = table.get(sample_ids)                        # (batch, model.crm_dim) for RecLoRA
    save_crm(model, "crm/"); load_crm("crm/", expected_schema=features)
"""

from .base import CrmModel
from .embeddings import (
    CrmEmbeddingTable,
    StaleCrmCacheError,
    assert_frozen_eval,
    crm_fingerprint,
    freeze_crm,
    precompute_crm_embeds,
)
from .feature_interaction import DCNv2, AutoInt, DeepFM
from .inputs import CrmSchema, FeatureTensors, check_batch, check_features, features_to_batch
from .registry import CRM_CLASSES, DEFAULT_CRM, available_crms, build_crm, crm_class
from .sequential import GRU4Rec, SASRec
from .serialization import CRM_CONFIG_NAME, CRM_WEIGHTS_NAME, load_crm, read_crm_config, save_crm
from .target_attention import DIN, SIM
from .train import CrmTrainingConfig, CrmTrainingReport, binary_metrics, evaluate_crm, predict_crm, train_crm

__all__ = [
    "AutoInt",
    "CRM_CLASSES",
    "CRM_CONFIG_NAME",
    "CRM_WEIGHTS_NAME",
    "CrmEmbeddingTable",
    "CrmModel",
    "CrmSchema",
    "CrmTrainingConfig",
    "CrmTrainingReport",
    "DCNv2",
    "DEFAULT_CRM",
    "DIN",
    "DeepFM",
    "FeatureTensors",
    "GRU4Rec",
    "SASRec",
    "SIM",
    "StaleCrmCacheError",
    "assert_frozen_eval",
    "available_crms",
    "binary_metrics",
    "build_crm",
    "check_batch",
    "check_features",
    "crm_class",
    "crm_fingerprint",
    "evaluate_crm",
    "features_to_batch",
    "freeze_crm",
    "load_crm",
    "precompute_crm_embeds",
    "predict_crm",
    "read_crm_config",
    "save_crm",
    "train_crm",
]
