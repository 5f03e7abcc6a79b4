"""The score stage: every model of the comparison scores the same evaluation samples (the whole test split, or a
seeded subsample), a CRM with P(click), an LLM with P(Yes) of its prompt (paper, Eq. 16).

An LLM is scored from its tune artifact (the adapter on a freshly loaded base model), never from the model object
that training left in memory, so a reused adapter and a just-trained one score through the same code. The artifact
holds the sample ids, the float64 scores and, for RecLoRA, the gate weights of every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..artifacts import RunFolder, StageNode, cached
from ..config import EvalConfig, PromptConfig
from ..crm import CrmEmbeddingTable, predict_crm
from ..data import RecDataset
from ..llm import load_adapter, load_base_model, load_tokenizer, resolve_dtype
from ..metrics import ctr_metrics
from ..retriever import RetrievalResult
from ..sampling import load_index_file, save_index_file, seeded_sample
from ..scoring import score_yes_probability
from ..views import FieldVocabulary, PromptFormatter, SampleView, ctr_features, prompt_token_ids, text_records
from . import Runtime, device_kind

VERSION = 1
SAMPLES_FILE = "eval_samples.json"
SCORES_FILE = "scores.npy"
GATE_FILE = "gate.npy"


def evaluation_inputs(evaluation: EvalConfig) -> dict:
    return {"test_samples": evaluation.test_samples, "test_seed": evaluation.test_seed}


def crm_node(name: str, evaluation: EvalConfig, batch_size: int, data: StageNode, retrieval: StageNode,
             crm: StageNode) -> StageNode:
    inputs = {"kind": "crm", "samples": evaluation_inputs(evaluation), "batch_size": batch_size,
              "device": device_kind()}
    return StageNode("score", name, inputs, (data, retrieval, crm), VERSION)


def llm_node(name: str, method: str, evaluation: EvalConfig, llm: dict, prompt: PromptConfig, data: StageNode,
             retrieval: StageNode, tune: Optional[StageNode], rc: Optional[StageNode],
             shuffled_rc_seed: Optional[int] = None) -> StageNode:
    """``shuffled_rc_seed``: score with the R_c rows permuted across the samples (a diagnostic of how much the model
    relies on the CRM's signal)."""
    inputs = {"kind": "llm", "method": method, "samples": evaluation_inputs(evaluation),
              "batch_size": evaluation.batch_size, "llm": llm, "prompt": prompt, "device": device_kind()}
    if shuffled_rc_seed is not None:
        inputs["shuffled_rc_seed"] = shuffled_rc_seed
    upstream = (data, retrieval) + tuple(node for node in (tune, rc) if node is not None)
    return StageNode("score", name, inputs, upstream, VERSION)


@dataclass(frozen=True)
class Scores:
    """A model's scores of the evaluation samples, with its metrics."""

    name: str
    kind: str  # "crm" or "llm"
    key: str
    path: Path
    sample_ids: np.ndarray
    scores: np.ndarray
    metrics: dict
    gate: Optional[np.ndarray] = None


def evaluation_ids(dataset: RecDataset, samples: dict) -> np.ndarray:
    test = dataset.sample_ids("test")
    size = samples["test_samples"]
    return seeded_sample(test, None if size is None or size >= len(test) else size, samples["test_seed"],
                         what="test subsample")


def checked_scores(name: str, scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} produced non-finite scores ({int((~np.isfinite(scores)).sum())} of {len(scores)})")
    return scores


def _finish(staging: Path, ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, of: int, seed: int) -> dict:
    save_index_file(staging / SAMPLES_FILE, ids, split="test", size=len(ids), seed=seed, of=of)
    np.save(staging / SCORES_FILE, np.asarray(scores, dtype=np.float64))
    return ctr_metrics(labels, scores)


def _load(name: str, kind: str):
    def load(artifact) -> Scores:
        gate = artifact.path / GATE_FILE
        return Scores(name, kind, artifact.key, artifact.path, load_index_file(artifact.path / SAMPLES_FILE),
                      np.load(artifact.path / SCORES_FILE, allow_pickle=False), artifact.summary,
                      np.load(gate, allow_pickle=False) if gate.is_file() else None)

    return load


def score_crm(folder: RunFolder, node: StageNode, model, dataset: RecDataset, retrieval: RetrievalResult,
              runtime: Runtime) -> Scores:
    """P(click) of a trained CRM (``model``) on the evaluation samples, with the long history of ``retrieval``."""
    samples = node.inputs["samples"]

    def build(staging: Path) -> dict:
        ids = evaluation_ids(dataset, samples)
        features = ctr_features(SampleView.from_dataset(dataset, ids, long=retrieval, k_short=0, split="test"),
                                FieldVocabulary.from_dataset(dataset))
        scores = checked_scores(node.label, predict_crm(model, features, batch_size=node.inputs["batch_size"],
                                                        progress=runtime.show_progress)[1])
        labels = dataset.label[dataset.rows_for(ids)]
        return _finish(staging, ids, scores, labels, len(dataset.sample_ids("test")), samples["test_seed"])

    scores, _ = cached(folder, node, build, _load(node.label, "crm"))
    folder.log(f"{node.label}: test AUC {scores.metrics['auc']:.4f}")
    return scores


def score_llm(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalResult,
              adapter_dir: Optional[Path], rc: Optional[CrmEmbeddingTable], runtime: Runtime) -> Scores:
    """P(Yes) of the base LLM with the adapter in ``adapter_dir`` (None: the frozen LLM); ``rc`` feeds a RecLoRA
    adapter's gate."""
    inputs = node.inputs
    samples = inputs["samples"]

    def build(staging: Path) -> dict:
        prompt: PromptConfig = inputs["prompt"]
        tokenizer = load_tokenizer(inputs["llm"]["base_model"])
        formatter = PromptFormatter.from_config(tokenizer, prompt)
        model = load_base_model(inputs["llm"]["base_model"], dtype=resolve_dtype(inputs["llm"]["dtype"]))
        model.to(runtime.device)
        model.config.pad_token_id = tokenizer.pad_token_id
        if adapter_dir is not None:
            model = load_adapter(model, adapter_dir)
        ids = evaluation_ids(dataset, samples)
        view = SampleView.from_dataset(dataset, ids, short=retrieval, k_long=0, split="test")
        token_ids = prompt_token_ids(dataset.spec, text_records(view), formatter, prompt.max_tokens)
        crm_embeds = rc.get(ids) if rc is not None else None
        if crm_embeds is not None and inputs.get("shuffled_rc_seed") is not None:
            # The diagnostic "gate input shuffled across samples": each prompt with another sample's R_c.
            order = np.random.default_rng(inputs["shuffled_rc_seed"]).permutation(len(ids))
            crm_embeds = crm_embeds[torch.as_tensor(order)]
        if adapter_dir is None:
            folder.log(f"{node.label}: the frozen LLM without tuning")
        processes = runtime.processes
        mine = processes.shard(len(ids))  # every process scores its share; the shares are gathered in order
        scores = processes.gather_in_order(score_yes_probability(
            model, [token_ids[i] for i in mine], formatter.yes_id, formatter.no_id, tokenizer.pad_token_id,
            crm_embeds=None if crm_embeds is None else crm_embeds[torch.as_tensor(mine)],
            batch_size=inputs["batch_size"], desc=f"scoring {node.label}", progress=runtime.show_progress), len(ids))
        if not processes.main:
            return None
        scores = checked_scores(node.label, scores)
        if crm_embeds is not None:
            with torch.no_grad():
                alpha = model.base_model.compute_gate(crm_embeds.to(runtime.device)).float().cpu().numpy()
            np.save(staging / GATE_FILE, alpha)
        return _finish(staging, ids, scores, view.label, len(dataset.sample_ids("test")), samples["test_seed"])

    # Collective: on several processes the evaluation samples are sharded across them.
    scores, _ = cached(folder, node, build, _load(node.label, "llm"), collective=True)
    folder.log(f"{node.label}: test AUC {scores.metrics['auc']:.4f}, LogLoss {scores.metrics['logloss']:.4f}")
    return scores
