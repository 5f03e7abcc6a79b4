"""The score stage: every model of the comparison scores the same evaluation samples (the whole test split, or a
seeded subsample), a CRM with P(click), an LLM with P(Yes) of its prompt (paper, Eq. 16).

An LLM is scored from its tune artifact (the adapter on a freshly loaded base model), never from the model object
that training left in memory, so a reused adapter and a just-trained one score through the same code. The artifact
holds the sample ids, the float64 scores and, for RecLoRA, the gate weights of every sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..artifacts import RunFolder, StageInputs, StageNode, cached, omitted_when_none
from ..config import EvalConfig, PromptConfig
from ..crm import RcTable, predict_crm
from ..data import RecDataset
from ..llm import load_adapter, load_tokenizer
from ..metrics import ctr_metrics
from ..retriever import RetrievalResult
from ..sampling import load_index_file, save_index_file, seeded_sample
from ..scoring import AnswerTokens, score_yes_probability
from ..trainer import adapter_weights_file
from ..views import FieldVocabulary, PromptFormatter, SampleView, ctr_features, prompt_token_ids, text_records
from . import LlmInputs, Runtime, device_kind


VERSION = 1
SAMPLES_FILE = "eval_samples.json"
SCORES_FILE = "scores.npy"
GATE_FILE = "gate.npy"


@dataclass(frozen=True)
class EvaluationSamples(StageInputs):
    """Which test samples every model scores: a seeded subsample of ``test_samples`` (None: the whole split)."""

    test_samples: Optional[int]
    test_seed: int

    @classmethod
    def of(cls, evaluation: EvalConfig) -> "EvaluationSamples":
        return cls(evaluation.test_samples, evaluation.test_seed)


@dataclass(frozen=True)
class CrmScoreInputs(StageInputs):
    """What scoring a CRM reads besides the CRM: the samples, the batch of its forward and the device."""

    samples: EvaluationSamples
    batch_size: int
    device: str
    kind: str = field(default="crm", init=False)


@dataclass(frozen=True)
class LlmScoreInputs(StageInputs):
    """What scoring an LLM model reads besides its adapter and R_c: its method, the samples, the batch, the base LLM,
    the prompt settings and the device; ``shuffled_rc_seed`` only for the score with R_c shuffled across samples."""

    method: str
    samples: EvaluationSamples
    batch_size: int
    llm: LlmInputs
    prompt: PromptConfig
    device: str
    shuffled_rc_seed: Optional[int] = omitted_when_none()
    kind: str = field(default="llm", init=False)


def crm_node(name: str, evaluation: EvalConfig, batch_size: int, data: StageNode, retrieval: StageNode,
             crm: StageNode) -> StageNode:
    inputs = CrmScoreInputs(EvaluationSamples.of(evaluation), batch_size, device_kind())
    return StageNode("score", name, inputs, (data, retrieval, crm), VERSION)


def llm_node(name: str, method: str, evaluation: EvalConfig, llm: LlmInputs, prompt: PromptConfig, data: StageNode,
             retrieval: StageNode, tune: Optional[StageNode], rc: Optional[StageNode],
             shuffled_rc_seed: Optional[int] = None) -> StageNode:
    """``shuffled_rc_seed``: score with the R_c rows permuted across the samples (a diagnostic of how much the model
    relies on the CRM's signal)."""
    inputs = LlmScoreInputs(method, EvaluationSamples.of(evaluation), evaluation.batch_size, llm, prompt,
                            device_kind(), shuffled_rc_seed)
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


def evaluation_ids(dataset: RecDataset, samples: EvaluationSamples) -> np.ndarray:
    test = dataset.sample_ids("test")
    size = samples.test_samples
    return seeded_sample(test, None if size is None or size >= len(test) else size, samples.test_seed,
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
    inputs: CrmScoreInputs = node.inputs

    def build(staging: Path) -> dict:
        ids = evaluation_ids(dataset, inputs.samples)
        features = ctr_features(SampleView.from_dataset(dataset, ids, long=retrieval, k_short=0, split="test"),
                                FieldVocabulary.from_dataset(dataset))
        scores = checked_scores(node.label, predict_crm(model, features, batch_size=inputs.batch_size,
                                                        progress=runtime.show_progress)[1])
        labels = dataset.label[dataset.rows_for(ids)]
        return _finish(staging, ids, scores, labels, len(dataset.sample_ids("test")), inputs.samples.test_seed)

    scores, _ = cached(folder, node, build, _load(node.label, "crm"))
    folder.log(f"{node.label}: test AUC {scores.metrics['auc']:.4f}")
    return scores


def score_llm(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalResult,
              adapter_dir: Optional[Path], rc: Optional[RcTable], runtime: Runtime) -> Scores:
    """P(Yes) of the base LLM with the adapter in ``adapter_dir`` (None: the frozen LLM); ``rc`` feeds a RecLoRA
    adapter's gate."""
    inputs: LlmScoreInputs = node.inputs

    def build(staging: Path) -> dict:
        if adapter_dir is not None:
            adapter_weights_file(adapter_dir)  # before the base LLM is loaded
        tokenizer = load_tokenizer(inputs.llm.base_model)
        formatter = PromptFormatter.from_config(tokenizer, inputs.prompt)
        model = inputs.llm.load(runtime.device)
        model.config.pad_token_id = tokenizer.pad_token_id
        if adapter_dir is not None:
            model = load_adapter(model, adapter_dir)
        ids = evaluation_ids(dataset, inputs.samples)
        view = SampleView.from_dataset(dataset, ids, short=retrieval, k_long=0, split="test")
        token_ids = prompt_token_ids(dataset.spec, text_records(view), formatter, inputs.prompt.max_tokens)
        crm_embeds = rc.get(ids) if rc is not None else None
        if crm_embeds is not None and inputs.shuffled_rc_seed is not None:
            # The diagnostic "gate input shuffled across samples": each prompt with another sample's R_c.
            order = np.random.default_rng(inputs.shuffled_rc_seed).permutation(len(ids))
            crm_embeds = crm_embeds[torch.as_tensor(order)]
        if adapter_dir is None:
            folder.log(f"{node.label}: the frozen LLM without tuning")
        processes = runtime.processes
        mine = processes.shard(len(ids))  # every process scores its share; the shares are gathered in order
        scores = processes.gather_in_order(score_yes_probability(
            model, [token_ids[i] for i in mine], AnswerTokens.from_formatter(formatter), tokenizer.pad_token_id,
            crm_embeds=None if crm_embeds is None else crm_embeds[torch.as_tensor(mine)],
            batch_size=inputs.batch_size, desc=f"scoring {node.label}", progress=runtime.show_progress), len(ids))
        if not processes.main:
            return None
        scores = checked_scores(node.label, scores)
        if crm_embeds is not None:
            with torch.no_grad():
                alpha = model.base_model.compute_gate(crm_embeds.to(runtime.device)).float().cpu().numpy()
            np.save(staging / GATE_FILE, alpha)
        return _finish(staging, ids, scores, view.label, len(dataset.sample_ids("test")), inputs.samples.test_seed)

    # Collective: on several processes the evaluation samples are sharded across them.
    scores, _ = cached(folder, node, build, _load(node.label, "llm"), collective=True)
    folder.log(f"{node.label}: test AUC {scores.metrics['auc']:.4f}, LogLoss {scores.metrics['logloss']:.4f}")
    return scores
