"""The retrieval stage: each sample's long (CRM) and short (prompt) history, by the Long-Short Modality Retriever
(``semantic``) or as the most recent items (``recent``, what the CRM baselines and the ablations read).

A semantic retrieval's key covers the retriever settings and the encoder (``llm.base_model``, its content identity
and its dtype); a recent one reads only K_long and K_short. The artifact is ``RetrievalResult.save``'s folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..artifacts import RunFolder, StageInputs, StageNode, cached, omitted_when_none
from ..config import LlmConfig, RetrievalConfig
from ..data import RecDataset
from ..retriever import RetrievalResult, retrieve
from . import LlmInputs, Runtime


VERSION = 1


@dataclass(frozen=True)
class RetrievalInputs(StageInputs):
    """What a retrieval reads: the settings of its mode (``RetrievalConfig.reads``: a recent retrieval reads only
    K_long and K_short) and, for a semantic one, the LLM that encodes the items."""

    retrieval: RetrievalConfig = field(metadata={"to_dict": RetrievalConfig.reads})
    encoder: Optional[LlmInputs] = omitted_when_none()


def node(retrieval: RetrievalConfig, llm: LlmConfig, data: StageNode, mode: str) -> StageNode:
    settings = RetrievalConfig(**retrieval.replace(mode=mode).reads())  # what it reads, the rest as declared
    inputs = RetrievalInputs(settings, LlmInputs.of(llm) if mode == "semantic" else None)
    return StageNode("retrieval", mode, inputs, (data,), VERSION)


def run(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalConfig,
        runtime: Runtime) -> RetrievalResult:
    """``retrieval`` supplies what does not change the result (the encoding cache folder)."""
    inputs: RetrievalInputs = node.inputs
    settings = inputs.retrieval.replace(cache_dir=retrieval.cache_dir)
    encoder = inputs.encoder

    def build(staging: Path) -> dict:
        folder.log(f"retrieval ({settings.mode}): K_long {settings.k_long}, K_short {settings.k_short}")
        result = retrieve(dataset, settings, encoder="embedded" if encoder is None else encoder.base_model,
                          dtype=None if encoder is None else encoder.dtype,
                          quantization=None if encoder is None else encoder.quantization, device=runtime.device,
                          progress=runtime.show_progress)
        if runtime.processes.main:
            result.save(staging)
        return {"samples": len(result), "k_long": result.k_long, "k_short": result.k_short,
                "encoding_key": result.metadata.get("encoding_key")}

    # Collective: on several processes the item encoding is split across them (retriever.encode_texts).
    result, _ = cached(folder, node, build, lambda artifact: RetrievalResult.load(artifact.path, dataset),
                       collective=True)
    return result
