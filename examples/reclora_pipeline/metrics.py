"""CTR metrics: AUC, LogLoss and the relative AUC improvement used in the paper's tables."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


EPSILON = 1e-7


def auc(labels, scores) -> float:
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        seen = classes[0] if len(classes) else "-"
        raise ValueError(f"AUC needs both labels (0 and 1), but every sample has label {seen}")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def logloss(labels, scores) -> float:
    scores = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1 - EPSILON)
    return float(log_loss(np.asarray(labels), scores, labels=[0, 1]))


def rel_impr(auc_model: float, auc_baseline: float) -> float:
    """Relative AUC improvement of a model over a baseline, AUC_model / AUC_baseline - 1 (as a fraction)."""
    return auc_model / auc_baseline - 1.0


def ctr_metrics(labels, scores) -> dict:
    return {"auc": auc(labels, scores), "logloss": logloss(labels, scores), "n": int(len(labels)),
            "positive_rate": float(np.mean(labels))}
