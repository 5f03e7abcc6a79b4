"""Stage 1: a CRM trained on the whole training split (early-stopped on validation AUC), and R_c, the hidden layer
the gate reads, computed once for every training and test sample by the frozen CRM in eval mode.

A CRM reads the long history of its ``history_source`` (SIM: the run's retrieval; the others: the most recent K_long
items), so each (CRM, history) pair is one node. The R_c table records the fingerprint of the CRM's weights; loading
it against another CRM fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import RunFolder, StageInputs, StageNode, cached
from ..config import CrmConfig, CrmModelConfig, CrmTrainingConfig
from ..crm import CrmModel, RcTable, crm_class, crm_fingerprint, load_crm, save_crm, train_crm
from ..data import RecDataset
from ..retriever import RetrievalResult
from ..views import build_ctr_features
from . import Runtime, device_kind


VERSION = 1
RC_VERSION = 1
RC_FILE = "rc.safetensors"
RC_SPLITS = ("train", "test")


def history_mode(name: str, retrieval_mode: str) -> str:
    """The history a CRM reads in a run whose retrieval mode is ``retrieval_mode``."""
    return retrieval_mode if crm_class(name).history_source == "retrieved" else "recent"


def label(name: str, mode: str) -> str:
    return f"{crm_class(name).display_name} ({mode})"


@dataclass(frozen=True)
class CrmInputs(StageInputs):
    """What training a CRM reads: which CRM (its registry name), its network and training settings, the device."""

    name: str
    model: CrmModelConfig
    training: CrmTrainingConfig
    device: str


@dataclass(frozen=True)
class RcInputs(StageInputs):
    """What computing R_c reads besides the trained CRM: the splits it covers and the batch of the CRM's forward."""

    splits: tuple[str, ...]
    batch_size: int


def node(crm: CrmConfig, name: str, data: StageNode, retrieval: StageNode) -> StageNode:
    inputs = CrmInputs(name, crm.model, crm.training, device_kind())
    return StageNode("crm", label(name, retrieval.label), inputs, (data, retrieval), VERSION)


def rc_node(crm: CrmConfig, trained: StageNode) -> StageNode:
    data, retrieval = trained.upstream
    inputs = RcInputs(RC_SPLITS, crm.training.eval_batch_size)
    return StageNode("rc", trained.label, inputs, (trained, data, retrieval), RC_VERSION)


@dataclass(frozen=True)
class TrainedCrm:
    model: CrmModel
    key: str
    path: Path
    fingerprint: str
    valid_auc: float


def run(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalResult,
        runtime: Runtime) -> TrainedCrm:
    inputs: CrmInputs = node.inputs

    def build(staging: Path) -> dict:
        train = build_ctr_features(dataset, retrieval=retrieval, split="train")
        folder.log(f"stage 1: {node.label} on {len(train):,} training samples")
        trackers = runtime.trackers(node.label, {"stage": "crm", "crm": inputs.name, **inputs.model.to_dict(),
                                                 **inputs.training.to_dict()})
        try:
            model, report = train_crm(inputs.name, train,
                                      build_ctr_features(dataset, retrieval=retrieval, split="valid"),
                                      inputs.training, model_kwargs=inputs.model.to_dict(), device=runtime.device,
                                      progress=runtime.show_progress, tracker=trackers)
        finally:
            trackers.finish()
        save_crm(model, staging, metrics={"valid_auc": report.valid_auc, "valid_logloss": report.valid_logloss})
        (staging / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
        folder.log(f"{node.label}: best epoch {report.best_epoch} of {report.epochs_run}, valid AUC "
                   f"{report.valid_auc:.4f} ({report.train_seconds:.0f} s)")
        return {"valid_auc": report.valid_auc, "best_epoch": report.best_epoch, "crm_dim": model.crm_dim,
                "fingerprint": crm_fingerprint(model)}

    def load(artifact) -> TrainedCrm:
        model = load_crm(artifact.path, device=runtime.device)
        fingerprint = crm_fingerprint(model)
        if fingerprint != artifact.summary["fingerprint"]:
            raise ValueError(f"the weights in {artifact.path} are not the ones trained (fingerprint changed)")
        return TrainedCrm(model, artifact.key, artifact.path, fingerprint, artifact.summary["valid_auc"])

    trained, _ = cached(folder, node, build, load)
    return trained


def rc(folder: RunFolder, node: StageNode, crm: TrainedCrm, dataset: RecDataset,
       retrieval: RetrievalResult, runtime: Runtime) -> RcTable:
    """R_c of every sample of ``RC_SPLITS``, looked up by sample id."""
    inputs: RcInputs = node.inputs

    def build(staging: Path) -> dict:
        tables = [RcTable.from_model(crm.model, build_ctr_features(dataset, retrieval=retrieval, split=split),
                                     batch_size=inputs.batch_size, progress=runtime.show_progress)
                  for split in inputs.splits]
        table = RcTable.merge(tables)
        table.save(staging / RC_FILE)
        return {"samples": len(table), "crm_dim": table.crm_dim, "crm_fingerprint": crm.fingerprint,
                "mean_norm": float(np.linalg.norm(table.embeds_for(table.sample_ids), axis=1).mean())}

    table, _ = cached(folder, node, build,
                      lambda artifact: RcTable.load(artifact.path / RC_FILE, expected_fingerprint=crm.fingerprint))
    return table
