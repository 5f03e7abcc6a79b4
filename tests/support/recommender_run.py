"""The tiny pipeline run the recommender, publishing and provenance tests share: its config, the requests of its test
samples and the tolerance a recommender meets its scores to. conftest.py's ``tiny_run`` fixture runs it once per
session."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reclora_pipeline.artifacts import RunFolder, safe_name
from reclora_pipeline.config import RunConfig
from reclora_pipeline.data import RecDataset
from reclora_pipeline.pipeline import run_pipeline
from reclora_pipeline.plan import plan_run
from reclora_pipeline.retriever import RetrievalResult

from support.pipeline_runs import fast_config


MODEL = "RecLoRA"
# The Hub id the published folder records for the run's local base model (``--base-model``); loading passes the
# local copy back with ``base_model=``.
HUB_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ATOL = 1e-6  # same code, same batches: the run's float64 scores are met to float32 rounding


@dataclass
class TinyRun:
    """A finished pipeline run on the tiny Llama, with the test samples its models scored."""

    root: Path
    config: RunConfig
    base_model: str
    dataset: RecDataset
    sample_ids: np.ndarray
    requests: list  # one request per test sample: its user, target and every earlier interaction

    @property
    def scores(self) -> np.ndarray:
        """RecLoRA's float64 scores, from its score artifact."""
        return self.model_scores(MODEL)

    def retrieval(self, mode: str) -> RetrievalResult:
        return RetrievalResult.load(RunFolder(self.root).artifact("retrieval", plan_run(self.config)
                                                                  .retrievals[mode].key).path, self.dataset)

    def results(self) -> dict:
        return json.loads((self.root / "results.json").read_text())

    def model_scores(self, model: str) -> np.ndarray:
        key = self.results()["models"][model]["stages"]["score"]
        return np.load(RunFolder(self.root).artifact("score", key).path / "scores.npy")

    def predictions(self, model: str) -> pd.DataFrame:
        return pd.read_csv(self.root / "predictions" / f"{safe_name(model)}.csv",
                           dtype={"user_id": str, "item_id": str})


def tiny_config(out: Path, base_model: str, cache: Path, **changes) -> RunConfig:
    """Semantic retrieval on the tiny Llama, RecLoRA with its ablations and a LoRA, 24 test samples; the high learning
    rate makes the gate move away from uniform, so R_c (and a wrong CRM) changes the scores."""
    settings = dict(retrieval__mode="semantic", retrieval__pca_dim=16, retrieval__cache_dir=str(cache),
                    models=["reclora", "ablations", "lora"], eval__test_samples=24,
                    tune__training__learning_rate=5e-2)
    return fast_config(out, base_model, **{**settings, **changes})


def requests_of(dataset: RecDataset, sample_ids) -> list:
    """Requests of the given samples: user, item, and every earlier interaction with its rating, oldest first."""
    samples = dataset.samples.set_index("sample_id")
    requests = []
    for sample, items, ratings, _ in dataset.history(sample_ids):
        history = [(item, int(rating)) for item, rating in zip(items, ratings)]
        requests.append({"user_id": str(samples.at[sample, "user_id"]), "item_id": str(samples.at[sample, "item_id"]),
                         "history": history})
    return requests


def build_tiny_run(root: Path, base_model: str) -> TinyRun:
    config = tiny_config(root / "run", base_model, root / "encodings")
    run_pipeline(config)
    folder = RunFolder(config.out)
    dataset = RecDataset.load(folder.artifact("data", plan_run(config).data.key).path)
    sample_ids = np.asarray(json.loads((folder.root / "eval_samples.json").read_text())["sample_ids"])
    return TinyRun(folder.root, config, base_model, dataset, sample_ids, requests_of(dataset, sample_ids))
