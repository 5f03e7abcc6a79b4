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

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """How a run executes, never what it computes (progress bars; the device is part of the keys that need it)."""

    progress: bool = True

    @property
    def device(self) -> str:
        return device_kind()


def device_kind() -> str:
    """"cuda" or "cpu": part of the inputs of every stage whose numbers depend on the device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
