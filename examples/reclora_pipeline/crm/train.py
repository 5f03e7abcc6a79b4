"""Stage 1 of Few2Many: train a CRM on the full training split, select it on validation AUC, report its metrics.

BCE on logits, AdamW, shuffled mini-batches, early stopping on validation AUC with the best epoch's weights restored
(every epoch really runs: training stops only when validation stops improving or ``epochs`` is reached).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import CrmTrainingConfig
from ..data.features import CTRFeatures
from ..metrics import ctr_metrics
from .base import CrmModel
from .inputs import CrmSchema, FeatureTensors, check_features
from .registry import build_crm


logger = logging.getLogger(__name__)
LOG_EVERY = 10  # training steps between loss reports (progress bar and trackers)

@dataclass
class CrmTrainingReport:
    """What stage 1 did: per-epoch history and the restored (best) epoch's validation metrics."""

    model_name: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    valid_auc: float
    valid_logloss: float
    history: list[dict]
    train_seconds: float
    num_parameters: int
    num_train: int
    num_valid: int
    crm_dim: int
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)

def train_crm(
    model_name: Union[str, CrmModel],
    train_features: CTRFeatures,
    valid_features: CTRFeatures,
    config: Optional[CrmTrainingConfig] = None,
    *,
    model_kwargs: Optional[Mapping] = None,
    device: str = "cpu",
    progress: bool = True,
    tracker=None,
) -> tuple[CrmModel, CrmTrainingReport]:
    """Train a CRM (a registry name built with ``model_kwargs``, e.g. the run config's ``crm.model.to_dict()``, or a
    model already built) and return it with the best epoch's weights, in eval mode, together with a
    ``CrmTrainingReport``. ``device``: "cpu", "cuda", ... or "auto". ``tracker``
    (``reclora_pipeline.tracking.Trackers``) receives the training loss every ``LOG_EVERY`` steps and each epoch's
    validation metrics, by global step."""
    config = config or CrmTrainingConfig()
    schema = CrmSchema.from_features(train_features)
    check_features(train_features, schema, split="training features")
    check_features(valid_features, schema, split="validation features")
    device = resolve_device(device)

    torch.manual_seed(config.seed)
    if isinstance(model_name, CrmModel):
        model = model_name
        differences = model.schema.differences(schema)
        if differences:
            raise ValueError("the model was built for other features (model vs training): " + "; ".join(differences))
    else:
        model = build_crm(model_name, schema=schema, **dict(model_kwargs or {}))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(config.seed)
    train_tensors = FeatureTensors(train_features, device=device)
    valid_tensors = FeatureTensors(valid_features, device=device)

    history: list[dict] = []
    best_auc, best_epoch, best_state = -math.inf, 0, None
    stale_epochs = 0
    global_step = 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        total_loss, total_rows = 0.0, 0
        bar = tqdm(
            train_tensors.batches(config.batch_size, shuffle=True, generator=generator),
            total=train_tensors.num_batches(config.batch_size),
            desc=f"{model.name} epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for step, batch in enumerate(bar):
            loss = loss_fn(model(batch), batch["labels"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model.name}: loss is {loss.item()} at epoch {epoch}, batch {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            rows = batch["labels"].shape[0]
            total_loss += loss.item() * rows
            total_rows += rows
            global_step += 1
            if step % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{total_loss / total_rows:.4f}")
                if tracker is not None:
                    tracker.log({"train/loss": loss.item(), "train/epoch": epoch - 1 + step / bar.total}, global_step)
        bar.close()
        train_seconds = time.perf_counter() - epoch_start
        metrics = _evaluate_tensors(model, valid_tensors, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / total_rows,
            "valid_auc": metrics["auc"],
            "valid_logloss": metrics["logloss"],
            "train_seconds": train_seconds,
        }
        history.append(record)
        if tracker is not None:
            tracker.log({"train/epoch_loss": record["train_loss"], "eval/auc": metrics["auc"],
                         "eval/logloss": metrics["logloss"], "train/epoch": epoch}, global_step)
        improved = metrics["auc"] > best_auc + config.min_delta
        if improved:
            best_auc, best_epoch = metrics["auc"], epoch
            best_state = copy.deepcopy(model.state_dict())
            stale_epochs = 0
        else:
            stale_epochs += 1
        message = (
            f"{model.name} epoch {epoch}: train loss {record['train_loss']:.4f}, valid AUC {metrics['auc']:.4f}, "
            f"LogLoss {metrics['logloss']:.4f} ({train_seconds:.1f} s){' *' if improved else ''}"
        )
        if progress:
            tqdm.write(message)
        logger.info(message)
        if stale_epochs >= config.patience:
            break

    model.load_state_dict(best_state)
    model.eval()
    best = history[best_epoch - 1]
    report = CrmTrainingReport(
        model_name=model.name,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=len(history) < config.epochs,
        valid_auc=best["valid_auc"],
        valid_logloss=best["valid_logloss"],
        history=history,
        train_seconds=time.perf_counter() - start,
        num_parameters=sum(parameter.numel() for parameter in model.parameters()),
        num_train=len(train_features),
        num_valid=len(valid_features),
        crm_dim=model.crm_dim,
        config={**config.to_dict(), "model": model.config()},
    )
    return model, report

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)

@torch.no_grad()
def predict_crm(
    model: CrmModel, features: CTRFeatures, batch_size: int = 4096, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, P(click)) for every row of a split, in row order, computed in eval mode."""
    check_features(features, model.schema, split="features to score", need_labels=False)
    device = next(model.parameters()).device
    probabilities = _predict_tensors(model, FeatureTensors(features, device=device), batch_size, progress)
    return np.asarray(features.sample_id), probabilities

def evaluate_crm(model: CrmModel, features: CTRFeatures, batch_size: int = 4096, *, progress: bool = False) -> dict:
    """AUC and LogLoss (scikit-learn) of a CRM on a split, plus the number of samples scored."""
    check_features(features, model.schema, split="evaluation features")
    _, probabilities = predict_crm(model, features, batch_size, progress=progress)
    return binary_metrics(np.asarray(features.labels), probabilities)

def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    metrics = ctr_metrics(labels, probabilities)
    return {"auc": metrics["auc"], "logloss": metrics["logloss"], "num_samples": metrics["n"]}

def _predict_tensors(model: CrmModel, tensors: FeatureTensors, batch_size: int, progress: bool = False) -> np.ndarray:
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            batches = tensors.batches(batch_size)
            for batch in tqdm(batches, total=tensors.num_batches(batch_size), disable=not progress, desc="scoring"):
                outputs.append(torch.sigmoid(model(batch).double()).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs).numpy()

def _evaluate_tensors(model: CrmModel, tensors: FeatureTensors, batch_size: int) -> dict:
    return binary_metrics(tensors.tensors["labels"].numpy(), _predict_tensors(model, tensors, batch_size))
