"""Where a pipeline run keeps its files: one place that the stages, the report and the publisher agree on.

    OUT/pipeline.json                       the settings of the run (PipelineConfig)
    OUT/data/                               the processed dataset (RecDataset.save)
    OUT/retrieval/<mode>/                   retrieval.npz + retrieval.json; semantic mode also item_vectors.safetensors
    OUT/crm/<crm>/                          crm_config.json + crm_model.safetensors (+ vocabulary.json, report.json)
    OUT/rc/<crm>/<split>.safetensors        R_c of every sample of a split (frozen CRM, eval mode), cached once
    OUT/few_shot/n<N>-seed<S>.json          the few-shot training sample (sample ids)
    OUT/models/<model>/model.json           how the model scores: prompt, retrieval, CRM, adapter, settings
    OUT/models/<model>/adapter/             the PEFT adapter (adapter_config.json + adapter_model.safetensors)
    OUT/results.json, results.md, predictions/<model>.csv, plots/*.png   (see report.py)

``<crm>`` is the CRM's name plus its history source (``sim``: retrieved long history; ``sim-recent``: the most
recent K_long items, the ablation "w/o long retriever").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .report import safe_name
from .retriever import ITEM_VECTORS_NAME

MODEL_INFO_NAME = "model.json"
VOCABULARY_NAME = "vocabulary.json"
PIPELINE_CONFIG_NAME = "pipeline.json"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: Union[str, Path]):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / PIPELINE_CONFIG_NAME

    @property
    def data(self) -> Path:
        return self.root / "data"

    def retrieval(self, mode: str) -> Path:
        return self.root / "retrieval" / mode

    def item_vectors(self, mode: str = "semantic") -> Path:
        return self.retrieval(mode) / ITEM_VECTORS_NAME

    def crm(self, crm_key: str) -> Path:
        return self.root / "crm" / crm_key

    def rc(self, crm_key: str, split: str) -> Path:
        return self.root / "rc" / crm_key / f"{split}.safetensors"

    def few_shot(self, size: int, seed: int) -> Path:
        return self.root / "few_shot" / f"n{size}-seed{seed}.json"

    def model(self, name: str) -> Path:
        return self.root / "models" / safe_name(name)

    def model_info(self, name: str) -> Path:
        return self.model(name) / MODEL_INFO_NAME

    def adapter(self, name: str) -> Path:
        return self.model(name) / "adapter"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    def read_model_info(self, name: str) -> dict:
        path = self.model_info(name)
        if not path.is_file():
            known = sorted(p.parent.name for p in (self.root / "models").glob(f"*/{MODEL_INFO_NAME}"))
            raise FileNotFoundError(f"{self.root} has no model {name!r} (no {path}); models in this run: {known}")
        return json.loads(path.read_text())

    def write_model_info(self, name: str, info: dict) -> Path:
        path = self.model_info(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2, default=str) + "\n")
        return path
