"""The retrieval stage: each sample's long (CRM) and short (prompt) history, by the Long-Short Modality Retriever
(``semantic``) or as the most recent items (``recent``, what the CRM baselines and the ablations read).

A semantic retrieval's key covers the retriever settings and the encoder (``llm.base_model``, its content identity
and its dtype); a recent one reads only K_long and K_short. The artifact is ``RetrievalResult.save``'s folder.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import RunFolder, StageNode, cached
from ..config import LlmConfig, RetrievalConfig
from ..data import RecDataset
from ..llm import dtype_name, resolve_dtype
from ..model_identity import base_model_identity
from ..retriever import RetrievalResult, retrieve
from . import Runtime

VERSION = 1


def node(retrieval: RetrievalConfig, llm: LlmConfig, data: StageNode, mode: str) -> StageNode:
    settings = retrieval.replace(mode=mode)
    inputs = {"retrieval": settings.reads()}
    if mode == "semantic":
        inputs["encoder"] = {"base_model": llm.base_model, "identity": base_model_identity(llm.base_model),
                             "dtype": dtype_name(resolve_dtype(llm.dtype))}
    return StageNode("retrieval", mode, inputs, (data,), VERSION)


def run(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalConfig,
        runtime: Runtime) -> RetrievalResult:
    """``retrieval`` supplies what does not change the result (the encoding cache folder)."""
    settings = RetrievalConfig(**node.inputs["retrieval"], cache_dir=retrieval.cache_dir)
    encoder = node.inputs.get("encoder", {})

    def build(staging: Path) -> dict:
        folder.log(f"retrieval ({settings.mode}): K_long {settings.k_long}, K_short {settings.k_short}")
        result = retrieve(dataset, settings, encoder=encoder.get("base_model", "embedded"),
                          dtype=encoder.get("dtype"), device=runtime.device, progress=runtime.show_progress)
        if runtime.processes.main:
            result.save(staging)
        return {"samples": len(result), "k_long": result.k_long, "k_short": result.k_short,
                "encoding_key": result.metadata.get("encoding_key")}

    # Collective: on several processes the item encoding is split across them (retriever.encode_texts).
    result, _ = cached(folder, node, build, lambda artifact: RetrievalResult.load(artifact.path, dataset),
                       collective=True)
    return result
