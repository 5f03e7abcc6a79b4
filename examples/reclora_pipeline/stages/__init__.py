"""The stages of a run, one module each. Every stage is ``node(config slice, upstream nodes) -> StageNode`` (what it
reads, hence its key) and ``run(folder, node, upstream artifacts) -> artifact`` (reused when the folder holds it):

    data ──> retrieval (per history mode) ──> crm (per CRM and history) ──> rc (R_c of the gate CRM)
                │                                  │                         │
                └──────────────> tune (per LLM model) <──────────────────────┘
                                   │
    score (per model: every CRM, every LLM model) ──> report (results.json, results.md, predictions/, plots/)

Stages never import each other; ``reclora_pipeline.plan`` builds the graph and ``reclora_pipeline.pipeline`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from ..distributed import Processes


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
        from ..tracking import Trackers

        if not self.processes.main:
            return Trackers()
        return Trackers.start(self.report_to, run_name, self.tracking_dir, {"project": self.project, **config})


def device_kind() -> str:
    """"cuda" or "cpu": part of the inputs of every stage whose numbers depend on the device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
