"""The stages of a run, one module each. Every stage is ``node(config slice, upstream nodes) -> StageNode`` (what it
reads, hence its key) and ``run(folder, node, upstream artifacts) -> artifact`` (reused when the folder holds it):

    data ──> retrieval (per history mode) ──> crm (per CRM and history) ──> rc (R_c of the gate CRM)
                │                                  │                         │
                └──────────────> tune (per LLM model) <──────────────────────┘
                                   │
    score (per model: every CRM, every LLM model) ──> report (results.json, results.md, predictions/, plots/)

Each stage declares what it reads as one frozen dataclass (``DataInputs``, ``RetrievalInputs``, ``CrmInputs``,
``RcInputs``, ``TuneInputs``, ``CrmScoreInputs`` / ``LlmScoreInputs``; the base LLM of the stages that load it is
``LlmInputs``), a ``StageInputs`` whose dict form is what the key hashes; a reader of a finished artifact gets it back
typed with ``artifact.inputs_as(TuneInputs)``.

Stages never import each other; ``reclora_pipeline.plan`` builds the graph and ``reclora_pipeline.pipeline`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..artifacts import StageInputs, omitted_when_none
from ..config import LlmConfig
from ..distributed import Processes
from ..llm import dtype_name, load_base_model, resolve_dtype
from ..model_identity import base_model_identity
from ..tracking import Trackers


@dataclass(frozen=True)
class Runtime:
    """How a run executes, never what it computes: progress bars, experiment trackers, and the processes it runs on
    (the device kind is part of the keys of the stages whose numbers depend on it)."""

    progress: bool = True
    processes: Processes = field(default_factory=Processes)
    report_to: tuple = ()
    project: Optional[str] = None
    tracking_dir: Optional[Path] = None

    @property
    def device(self) -> str:
        """This process's device ("cpu", "cuda", "cuda:1", ...)."""
        return self.processes.device

    @property
    def show_progress(self) -> bool:
        """Progress bars of the main process only (the others' would repeat them)."""
        return self.progress and self.processes.main

    def trackers(self, run_name: str, config: Mapping):
        """The experiment trackers of one training run (a CRM), started; none on processes other than the main."""
        if not self.processes.main:
            return Trackers()
        return Trackers.start(self.report_to, run_name, self.tracking_dir, {"project": self.project, **config})


def device_kind() -> str:
    """"cuda" or "cpu": part of the inputs of every stage whose numbers depend on the device."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class LlmInputs(StageInputs):
    """The base LLM as the stages that load it read it: its name (to load it), its content identity (what it
    computes: other weights at the same path are another model), its dtype as loaded (a quantized base's compute
    dtype) and its bitsandbytes quantization (absent for an unquantized base, so those keys are unchanged)."""

    base_model: str
    identity: str
    dtype: str
    quantization: Optional[str] = omitted_when_none()

    @classmethod
    def of(cls, llm: LlmConfig) -> "LlmInputs":
        return cls(llm.base_model, base_model_identity(llm.base_model), dtype_name(resolve_dtype(llm.dtype)),
                   None if llm.quantization == "none" else llm.quantization)

    def load(self, device: str):
        """The base LLM on ``device``: an unquantized base is moved there, a quantized one is loaded there
        (bitsandbytes weights cannot move after loading), so each process of a multi-GPU run holds its own copy."""
        return load_base_model(self.base_model, dtype=self.torch_dtype, quantization=self.quantization, device=device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)
