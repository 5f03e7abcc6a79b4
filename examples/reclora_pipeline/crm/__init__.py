"""Conventional recommenders (CRMs): stage 1 of Few2Many and the source of R_c for RecLoRA's gate.

    model, report = train_crm("sim", train_features, valid_features, CrmTrainingConfig(),
                              model_kwargs=CrmModelConfig().to_dict())   # reclora_pipeline.config's crm.model
    evaluate_crm(model, test_features)                        # {"auc": ..., "logloss": ..., "num_samples": ...}
    table = RcTable.from_model(model, features, cache_path="rc/train.safetensors")
    crm_embeds = table.get(sample_ids)                        # (batch, model.crm_dim) for RecLoRA
    save_crm(model, "crm/"); load_crm("crm/", expected_schema=features)
"""

from ..lazy import lazy_exports


_EXPORTS = {
    "CrmModel": ".base",
    "RcTable": ".embeddings",
    "StaleCrmCacheError": ".embeddings",
    "assert_frozen_eval": ".embeddings",
    "crm_fingerprint": ".embeddings",
    "freeze_crm": ".embeddings",
    "precompute_crm_embeds": ".embeddings",
    "DCNv2": ".feature_interaction",
    "AutoInt": ".feature_interaction",
    "DeepFM": ".feature_interaction",
    "CrmSchema": ".inputs",
    "FeatureTensors": ".inputs",
    "check_batch": ".inputs",
    "check_features": ".inputs",
    "features_to_batch": ".inputs",
    "CRMS": ".registry",
    "DEFAULT_CRM": ".registry",
    "available_crms": ".registry",
    "build_crm": ".registry",
    "crm_class": ".registry",
    "GRU4Rec": ".sequential",
    "SASRec": ".sequential",
    "CRM_CONFIG_NAME": ".serialization",
    "CRM_WEIGHTS_NAME": ".serialization",
    "load_crm": ".serialization",
    "read_crm_config": ".serialization",
    "save_crm": ".serialization",
    "DIN": ".target_attention",
    "SIM": ".target_attention",
    "CrmTrainingConfig": ".train",
    "CrmTrainingReport": ".train",
    "binary_metrics": ".train",
    "evaluate_crm": ".train",
    "predict_crm": ".train",
    "train_crm": ".train",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
