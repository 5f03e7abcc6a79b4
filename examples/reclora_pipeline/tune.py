"""Stage 2 of Few2Many: few-shot tuning of the LLM with RecLoRA (or a LoRA baseline) through the HF Trainer.

Only the adapter trains: the LLM is frozen by PEFT and the CRM is not in the loop at all, because its representation
R_c is precomputed once per sample (frozen, eval mode) and enters each batch as ``crm_embeds``. The loss is the
cross-entropy of the answer token ("Yes"/"No") at the last prompt position, computed from that position's logits only.

Because training goes through the HF ``Trainer``, ``accelerate launch`` (DDP, FSDP, DeepSpeed) runs the same code on
several GPUs, and checkpoints resume exactly (optimizer, scheduler, RNG and data order are restored).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

METHODS = ("reclora", "lora")
# "vocab": cross-entropy of the answer token over the whole vocabulary (the language-modelling loss of TALLRec, ReLLa
# and the paper); "yes_no": cross-entropy over the Yes/No logits only, the quantity P(Yes) scoring reads.
LOSSES = ("vocab", "yes_no")


@dataclass
class TuneSettings:
    """Hyper-parameters of one stage-2 run (defaults: the paper's Appendix C where it gives them)."""

    method: str = "reclora"  # "reclora" or "lora"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    num_meta_loras: int = 16
    gate_hidden_dim: int = 60
    temperature: float = 1.0
    gate_sharing: str = "shared"
    mixing: str = "output"
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 42
    gradient_checkpointing: bool = False
    bf16: Optional[bool] = None  # None: bf16 on CUDA, fp32 on CPU
    save_steps: Optional[int] = None  # checkpoint every N optimizer steps (None: only the final adapter)
    logging_steps: int = 10
    loss: str = "vocab"  # see LOSSES

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    def peft_config(self, crm_dim: Optional[int]):
        if self.method == "reclora":
            import peft_reclora

            if crm_dim is None:
                raise ValueError("RecLoRA tuning needs crm_dim (the width of the precomputed CRM representations)")
            return peft_reclora.RecLoraConfig(
                crm_dim=crm_dim, r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                num_meta_loras=self.num_meta_loras, gate_hidden_dim=self.gate_hidden_dim,
                temperature=self.temperature, gate_sharing=self.gate_sharing, mixing=self.mixing,
                target_modules=list(self.target_modules),
            )
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules), task_type="CAUSAL_LM",
        )


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
        from .scoring import left_pad

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
        over the vocabulary or, with ``answer_pair=(no_id, yes_id)``, over the two answer tokens."""

        def __init__(self, *args, answer_pair=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.answer_pair = answer_pair

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            answer_ids = inputs.pop("answer_ids")
            outputs = model(**inputs, logits_to_keep=1)
            logits = outputs.logits[:, -1].float()
            if self.answer_pair is not None:
                no_id, yes_id = self.answer_pair
                if not bool(((answer_ids == yes_id) | (answer_ids == no_id)).all()):
                    raise ValueError(f"the yes_no loss needs answer ids {yes_id} (Yes) or {no_id} (No)")
                logits, answer_ids = logits[:, [no_id, yes_id]], (answer_ids == yes_id).long()
            # Mean over the micro-batch; the Trainer divides by the accumulation steps (micro-batches are equal-sized).
            loss = torch.nn.functional.cross_entropy(logits, answer_ids)
            return (loss, outputs) if return_outputs else loss

    return AnswerTokenTrainer


def build_peft_model(base_model, settings: TuneSettings, crm_dim: Optional[int]):
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated alias; nothing for the user to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base_model, settings.peft_config(crm_dim))
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def train_adapter(
    model,
    dataset: AnswerTokenDataset,
    settings: TuneSettings,
    output_dir: Path,
    pad_id: int,
    resume_from_checkpoint: Optional[str] = None,
    progress: bool = True,
    answer_pair: Optional[tuple] = None,
):
    """Train ``model`` (a PeftModel) on ``dataset``; saves the final adapter to ``output_dir/adapter``.

    ``answer_pair`` = (no_id, yes_id) is needed by ``settings.loss == "yes_no"``."""
    if settings.loss == "yes_no" and answer_pair is None:
        raise ValueError("settings.loss='yes_no' needs answer_pair=(no_id, yes_id)")
    from transformers import TrainingArguments

    output_dir = Path(output_dir)
    use_cuda = torch.cuda.is_available()
    bf16 = settings.bf16 if settings.bf16 is not None else use_cuda
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=bf16,
        use_cpu=not use_cuda,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        label_names=["answer_ids"],
    )
    trainer = _answer_token_trainer_class()(
        model=model, args=args, train_dataset=dataset, data_collator=LeftPadCollator(pad_id),
        answer_pair=tuple(answer_pair) if settings.loss == "yes_no" else None,
    )
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model.save_pretrained(str(output_dir / "adapter"))
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "settings": asdict(settings),
        "train_samples": len(dataset),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "loss_history": history,
        "bf16": bf16,
    }
    (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def few_shot_indices(candidate_ids: Sequence[int], size: int, seed: int) -> np.ndarray:
    """A uniform sample of ``size`` sample ids (the paper's few-shot set), sorted for stable storage."""
    candidate_ids = np.asarray(candidate_ids)
    if size > len(candidate_ids):
        raise ValueError(f"few-shot size {size} exceeds the {len(candidate_ids)} available training samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidate_ids, size=size, replace=False))


def save_index_file(path: Path, sample_ids: Sequence[int], **metadata) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**metadata, "sample_ids": [int(i) for i in sample_ids]}, indent=1))


def load_index_file(path: Path) -> np.ndarray:
    return np.asarray(json.loads(Path(path).read_text())["sample_ids"], dtype=np.int64)


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
