"""Stage-2 machinery: few-shot tuning of the LLM with RecLoRA (or a LoRA baseline) through the HF Trainer.

Only the adapter trains: the LLM is frozen by PEFT and the CRM is not in the loop at all, because its representation
R_c is precomputed once per sample (frozen, eval mode) and enters each batch as ``crm_embeds``. The loss is the
cross-entropy of the answer token ("Yes"/"No") at the last prompt position, computed from that position's logits only.

``TrainingArguments`` come from the run config's ``tune.training`` mapping, passed on as it is; the pipeline adds only
what its data contract needs (``output_dir``, ``remove_unused_columns=False``, ``label_names``) and, unless given,
what follows from the device and the sample (``use_cpu``, ``bf16``, ``logging_steps``, ``save_strategy``). Because
training goes through the HF ``Trainer``, ``accelerate launch`` runs the same code on several GPUs, and checkpoints
resume exactly (optimizer, scheduler, RNG and data order are restored).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import shutil
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from torch.utils.data import Dataset
from transformers import set_seed

from peft_reclora.adapter_folder import WEIGHTS_FILES, check_adapter_folder

from .config import RESERVED_TRAINING_KEYS, SEED_RANGE
from .llm import is_quantized
from .scoring import AnswerTokens, left_pad
from .stages import Runtime
from .tracking import tracker_names


logger = logging.getLogger(__name__)

# "vocab": cross-entropy of the answer token over the whole vocabulary (the language-modelling loss of TALLRec, ReLLa
# and the paper); "yes_no": cross-entropy over the Yes/No logits only, the quantity P(Yes) scoring reads.
LOSSES = ("vocab", "yes_no")
GATE_PARAMETER = "reclora_gate"  # in the names of RecLoRA's gate parameters
# TrainingArguments names added in transformers 5.23, and the names the same settings have in every earlier 5.x release
# (kept there as deprecated aliases), so that --gradient-checkpointing works on every supported transformers.
OLDER_TRAINING_NAMES = {"activation_checkpointing": "gradient_checkpointing",
                        "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}
ADAPTER_DIR = "adapter"  # where train_adapter saves the final adapter, under its output folder
# The weights file of a saved PEFT adapter: safetensors (what PEFT writes by default), or PyTorch's pickle format.


@dataclass(frozen=True)
class AdapterTraining:
    """How an adapter trains, as ``tune`` sets it: ``arguments`` are ``tune.training`` (TrainingArguments keywords,
    passed on as they are), ``loss`` is one of ``LOSSES``, ``gate_learning_rate`` a peak learning rate of RecLoRA's
    gate of its own (None: the meta-LoRA banks' rate)."""

    arguments: Mapping[str, Any] = field(default_factory=dict)
    loss: str = "vocab"
    gate_learning_rate: Optional[float] = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def checkpoints_activations(self) -> bool:
        """Whether training recomputes activations in the backward pass (``activation_checkpointing``, or its name
        before transformers 5.23, ``gradient_checkpointing``)."""
        return any(bool(self.arguments.get(name)) for name in ("activation_checkpointing", "gradient_checkpointing"))


def adapter_weights_file(adapter_dir: Path) -> Path:
    """The weights file of the PEFT adapter saved in ``adapter_dir``, checked before anything is loaded
    (``peft_reclora.check_adapter_folder`` names the folder and the file it lacks; PEFT's own error would not)."""
    check_adapter_folder(adapter_dir)
    return next(Path(adapter_dir) / name for name in WEIGHTS_FILES if (Path(adapter_dir) / name).is_file())


class AnswerTokenDataset(Dataset):
    """Tokenized prompts with their answer token and (for RecLoRA) the CRM representation of the same sample_id."""

    def __init__(
        self,
        sample_ids: Sequence[int],
        token_ids: Sequence[Sequence[int]],
        answer_ids: Sequence[int],
        crm_embeds: Optional[torch.Tensor] = None,
    ):
        if not (len(sample_ids) == len(token_ids) == len(answer_ids)):
            raise ValueError("sample_ids, token_ids and answer_ids must have one entry per sample")
        if crm_embeds is not None and len(crm_embeds) != len(sample_ids):
            raise ValueError(f"crm_embeds has {len(crm_embeds)} rows for {len(sample_ids)} samples")
        if any(len(ids) == 0 for ids in token_ids):
            raise ValueError("empty prompt in the training set")
        self.sample_ids = list(sample_ids)
        self.token_ids = [list(ids) for ids in token_ids]
        self.answer_ids = list(answer_ids)
        self.crm_embeds = crm_embeds

    def __len__(self):
        return len(self.sample_ids)

    def __getitem__(self, index):
        item = {"input_ids": self.token_ids[index], "answer_ids": self.answer_ids[index]}
        if self.crm_embeds is not None:
            item["crm_embeds"] = self.crm_embeds[index]
        return item


class LeftPadCollator:
    """Left-pads prompts (the answer position is the last column) and stacks answer ids and CRM rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        input_ids, attention_mask = left_pad([row["input_ids"] for row in rows], self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "answer_ids": torch.tensor([row["answer_ids"] for row in rows], dtype=torch.long),
        }
        if "crm_embeds" in rows[0]:
            batch["crm_embeds"] = torch.stack([torch.as_tensor(row["crm_embeds"]) for row in rows]).float()
        return batch


def _answer_token_trainer_class():
    from transformers import Trainer

    class AnswerTokenTrainer(Trainer):
        """Trainer whose loss is the answer token's cross-entropy at the last position (logits of that position only),
        over the vocabulary or, with ``answers`` (:class:`AnswerTokens`), over the two answer tokens."""

        def __init__(self, *args, answers: Optional[AnswerTokens] = None, gate_learning_rate=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.answers = answers
            self.gate_learning_rate = gate_learning_rate

        def create_optimizer(self, *args, **kwargs):
            """The Trainer's optimizer, with RecLoRA's gate in parameter groups of their own learning rate when
            ``gate_learning_rate`` is set (the scheduler scales every group alike)."""
            if self.gate_learning_rate is None or self.optimizer is not None:
                return super().create_optimizer(*args, **kwargs)
            decay = set(self.get_decay_parameter_names(self.model))
            groups: dict = {}
            for name, parameter in self.model.named_parameters():
                if parameter.requires_grad:
                    groups.setdefault((GATE_PARAMETER in name, name in decay), []).append(parameter)
            if not any(gate for gate, _ in groups):
                raise ValueError("gate_learning_rate is set but the model has no RecLoRA gate")
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_class(
                [{"params": parameters, "weight_decay": self.args.weight_decay if decays else 0.0,
                  **({"lr": self.gate_learning_rate} if gate else {})}
                 for (gate, decays), parameters in groups.items()], **optimizer_kwargs)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            answer_ids = inputs.pop("answer_ids")
            outputs = model(**inputs, logits_to_keep=1)
            logits = outputs.logits[:, -1].float()
            if self.answers is not None:
                logits, answer_ids = self.answers.pair_logits(logits), self.answers.yes_labels(answer_ids)
            # Mean over the micro-batch; the Trainer divides by the accumulation steps (micro-batches are equal-sized).
            loss = torch.nn.functional.cross_entropy(logits, answer_ids)
            return (loss, outputs) if return_outputs else loss

    return AnswerTokenTrainer


def build_peft_model(base_model, peft_config, *, gradient_checkpointing: bool = False):
    """``get_peft_model`` with the method's config (RecLoRA or LoRA). A quantized (bitsandbytes) base is first
    prepared as PEFT prescribes for k-bit training (``prepare_model_for_kbit_training``: frozen base, fp32 norms and
    embeddings, input gradients for checkpointing, which it enables when ``gradient_checkpointing``)."""
    if is_quantized(base_model):
        base_model = prepare_model_for_kbit_training(base_model, use_gradient_checkpointing=gradient_checkpointing)
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated alias; nothing for the user to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base_model, peft_config)


def training_arguments(training: Mapping, output_dir: Path, *, num_samples: int, progress: bool = True,
                       report_to: Sequence[str] = (), run_name: Optional[str] = None, project: Optional[str] = None,
                       processes: int = 1):
    """``TrainingArguments`` of ``tune.training`` for a run over ``num_samples`` samples into ``output_dir``, reporting
    to the trackers ``report_to`` (TensorBoard is attached by :func:`train_adapter`, to write where CRM training
    writes).

    ``per_device_train_batch_size`` is the batch of a one-process run: on ``processes`` processes (DDP) each takes
    its share, so the global batch, the number of steps and the result do not depend on how many processes run."""
    from transformers import TrainingArguments

    use_cuda = torch.cuda.is_available()
    arguments = installed_training_keys(training)
    batch = int(arguments.get("per_device_train_batch_size", training_default("per_device_train_batch_size")))
    if processes > 1:
        if batch % processes:
            raise ValueError(f"tune.training.per_device_train_batch_size={batch} is the batch of one process and must "
                             f"split evenly over the {processes} processes")
        arguments["per_device_train_batch_size"] = batch // processes
    arguments.setdefault("logging_steps", max(1, num_samples // batch // 10))
    arguments.setdefault("save_strategy", "steps" if arguments.get("save_steps") else "no")
    arguments.setdefault("use_cpu", not use_cuda)
    arguments.setdefault("bf16", use_cuda)
    arguments.setdefault("disable_tqdm", not progress)
    arguments.update(output_dir=str(Path(output_dir) / "checkpoints"), remove_unused_columns=False,
                     label_names=["answer_ids"],
                     report_to=[name for name in tracker_names(report_to) if name != "tensorboard"] or "none")
    if run_name is not None:
        arguments["run_name"] = run_name
    if project is not None:
        arguments["project"] = project
    return TrainingArguments(**arguments)


def _training_fields() -> set:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def installed_training_keys(training: Mapping) -> dict:
    """``training`` with each key the installed TrainingArguments does not know but knows under its older name (see
    ``OLDER_TRAINING_NAMES``) renamed to that name."""
    known = _training_fields()
    return {OLDER_TRAINING_NAMES[key] if key not in known and OLDER_TRAINING_NAMES.get(key) in known else key: value
            for key, value in training.items()}


def training_default(name: str):
    """The default of a ``TrainingArguments`` field, as the installed transformers declares it."""
    from transformers import TrainingArguments

    item = {f.name: f for f in dataclasses.fields(TrainingArguments)}[name]
    return item.default


# Values TrainingArguments accepts but no training run survives: the lowest value of each field, and what it means.
TRAINING_LOWER_BOUNDS = {
    "num_train_epochs": (0, "epochs over the few-shot sample"),
    "per_device_train_batch_size": (1, "samples per step"),
    "gradient_accumulation_steps": (1, "micro-batches per optimizer step"),
    "learning_rate": (0, "the peak learning rate"),
    "weight_decay": (0, "the AdamW weight decay"),
    "max_grad_norm": (0, "the gradient clipping norm"),
    "warmup_steps": (0, "warmup steps, or a fraction of the steps below 1"),
}


def training_value_problem(key: str, value, hint) -> Optional[str]:
    """Why ``value`` is not what the TrainingArguments field ``key`` (annotated ``hint``) takes at run time, or None:
    numbers must be numbers (a string learning rate reaches the optimizer), finite and within
    ``TRAINING_LOWER_BOUNDS``; seeds must be in ``SEED_RANGE``. Fields of other types are left to TrainingArguments."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    if options:
        if value is None and type(None) in options:
            return None
        simple = [option for option in options if option is not type(None)]
        if len(simple) != 1:
            return None
        hint = simple[0]
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                hint is int and isinstance(value, float)):
            kind = "an integer" if hint is int else "a number"
            return f"expected {kind}, got {value!r}" + (" (a string: write the number unquoted)"
                                                        if isinstance(value, str) else "")
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if key in ("seed", "data_seed") and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            return f"a seed is in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value!r}"
        if key in TRAINING_LOWER_BOUNDS:
            lowest, meaning = TRAINING_LOWER_BOUNDS[key]
            if value < lowest:
                return f"{meaning}: must be at least {lowest}, got {value!r}"
        return None
    if hint is str and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    return None


def training_arguments_problem(training: Mapping) -> Optional[str]:
    """Why ``tune.training`` does not make TrainingArguments a run can train with (an unknown or reserved key, a value
    of the wrong type or range, zero training steps, what TrainingArguments itself rejects), or None."""
    from transformers import TrainingArguments

    known = _training_fields()
    for key in installed_training_keys(training):
        if key in RESERVED_TRAINING_KEYS:
            return f"{key} cannot be set: {RESERVED_TRAINING_KEYS[key]}"
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            suggestion = f"; did you mean {', '.join(close)}?" if close else ""
            return f"{key!r} is not a TrainingArguments field{suggestion}"
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in installed_training_keys(training).items():
        problem = training_value_problem(key, value, hints[key])
        if problem:
            return f"{key}: {problem}"
    if training.get("max_steps", training_default("max_steps")) <= 0 and training.get(
            "num_train_epochs", training_default("num_train_epochs")) <= 0:
        return "the run would train zero steps: give num_train_epochs above 0 (or max_steps of at least 1)"
    try:
        training_arguments(training, Path("unused"), num_samples=1, progress=False)
    except (TypeError, ValueError) as error:
        return f"TrainingArguments rejects it: {error}"
    return None


def train_adapter(
    model,
    dataset: AnswerTokenDataset,
    training: AdapterTraining,
    output_dir: Path,
    *,
    pad_id: int,
    answers: Optional[AnswerTokens] = None,
    runtime: Optional[Runtime] = None,
    run_name: Optional[str] = None,
    resume_from_checkpoint: Optional[Path] = None,
) -> dict:
    """Train ``model`` (a PeftModel) on ``dataset`` as ``training`` says; saves the final adapter to
    ``output_dir/adapter`` and returns a summary (runtime, loss, loss history). ``pad_id`` pads the prompts;
    ``answers`` (the Yes/No tokens) is needed by the ``yes_no`` loss. ``runtime``: progress bars, the trackers of the
    run (named ``run_name``; TensorBoard writes to ``runtime.tracking_dir/run_name``) and how many processes train
    together (DDP; see :func:`training_arguments`); None: a one-process run with progress bars and no trackers."""
    runtime = runtime or Runtime()
    if training.loss == "yes_no" and answers is None:
        raise ValueError("the yes_no loss needs answers, the Yes/No tokens (AnswerTokens)")
    output_dir = Path(output_dir)
    args = training_arguments(training.arguments, output_dir, num_samples=len(dataset),
                              progress=runtime.show_progress, report_to=runtime.report_to, run_name=run_name,
                              project=runtime.project, processes=runtime.processes.count)
    callbacks = []
    if "tensorboard" in tracker_names(runtime.report_to):
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()  # its writer is made on the main process only, at the start of training
        tensorboard.logging_dir = str(Path(runtime.tracking_dir or output_dir / "tracking") / (run_name or "tune"))
        callbacks.append(tensorboard)
    trainer = _answer_token_trainer_class()(
        model=model, args=args, train_dataset=dataset, data_collator=LeftPadCollator(pad_id),
        answers=answers if training.loss == "yes_no" else None, callbacks=callbacks,
        gate_learning_rate=training.gate_learning_rate,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None)
    if trainer.is_world_process_zero():
        model.save_pretrained(str(output_dir / ADAPTER_DIR))
    return {
        "train_samples": len(dataset),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "loss_history": [entry for entry in trainer.state.log_history if "loss" in entry],
        "bf16": bool(args.bf16),
        "global_steps": int(trainer.state.global_step),
    }


CHECKPOINT_STATE = "trainer_state.json"
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt")  # torch-saved state dicts the Trainer resumes from
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "adapter_config.json")  # what PEFT saves of the model


def last_checkpoint(checkpoints: Path, processes: int = 1, log=logger.warning, discard: bool = False
                    ) -> Optional[Path]:
    """The newest complete Trainer checkpoint under ``checkpoints``, or None.

    Complete means every file resuming reads is present and loads: the adapter weights and config, the optimizer and
    scheduler states, the RNG state of each of the ``processes`` and the trainer state. A checkpoint missing any of
    them (killed while it was written, or while it was removed) is skipped with a message naming what it lacks:
    resuming it would restart the schedule, or fail. ``discard``: also remove the incomplete checkpoints newer than
    the one returned (only for a caller that wrote them), so that the training resumed never writes into a half."""
    found = sorted((path for path in Path(checkpoints).glob("checkpoint-*") if path.name.split("-")[-1].isdigit()),
                   key=lambda path: int(path.name.split("-")[-1]), reverse=True)
    for path in found:
        problem = checkpoint_problem(path, processes)
        if problem is None:
            return path
        log(f"checkpoint {path} is incomplete ({problem}); it is not resumed")
        if discard:
            discard_checkpoints(path)
    return None


def checkpoint_problem(path: Path, processes: int = 1) -> Optional[str]:
    """What a checkpoint lacks for an exact resume, or None."""
    rng = ["rng_state.pth"] if processes <= 1 else [f"rng_state_{index}.pth" for index in range(processes)]
    for name in (*CHECKPOINT_WEIGHTS, *CHECKPOINT_FILES, *rng, CHECKPOINT_STATE):
        if not (path / name).is_file():
            return f"no {name}"
    readers = {CHECKPOINT_WEIGHTS[0]: _safetensors_keys, CHECKPOINT_WEIGHTS[1]: _read_json,
               CHECKPOINT_STATE: _read_json,
               **{name: _torch_state for name in (*CHECKPOINT_FILES, *rng)}}
    for name, read in readers.items():
        try:
            read(path / name)
        except Exception as error:  # whatever a cut or damaged file raises
            return f"{name} cannot be read: {type(error).__name__}"
    return None


def _safetensors_keys(path: Path) -> list:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _torch_state(path: Path):
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():  # as the Trainer reads it: tensors, and the numpy arrays of an RNG state
        return torch.load(path, map_location="cpu", weights_only=True)


def discard_checkpoints(checkpoints: Path) -> None:
    """Remove a checkpoint (or the folder of them) so that no moment of the removal leaves a resumable-looking one:
    the folder is first renamed (one step) to a name nothing resumes from, then deleted."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return
    doomed = checkpoints.with_name(f".discarded-{checkpoints.name}-{os.getpid()}")
    os.replace(checkpoints, doomed)
    shutil.rmtree(doomed)


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def seed_everything(seed: int) -> None:
    set_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
