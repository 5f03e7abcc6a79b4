"""Stage 2 (Few2Many): one LLM model tuned on a seeded few-shot sample of the training split.

The key covers the model's PEFT config as PEFT receives it (``tune.adapter`` through the model's method), the
few-shot sample, the loss, ``tune.training``, the base LLM, the prompt settings, and upstream the retrieval that writes
its prompts and (RecLoRA) the R_c table that feeds its gate. The artifact holds the PEFT adapter, the few-shot sample
ids and the training summary. An interrupted build resumes from its newest complete checkpoint
(``tune.training.save_steps``; ``trainer.last_checkpoint`` says what complete means): they live in the build folder of
the same key, so they are never resumed into other settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from peft import PeftConfig
from safetensors.torch import load_file

from ..artifacts import RunFolder, StageInputs, StageNode, cached, canonical, omitted_when_none, read_json
from ..config import PromptConfig, RunConfig
from ..crm import RcTable
from ..data import RecDataset
from ..llm import load_tokenizer
from ..methods import Method
from ..retriever import RetrievalResult
from ..sampling import load_index_file, save_index_file, seeded_sample
from ..scoring import AnswerTokens
from ..trainer import (
    ADAPTER_DIR,
    AdapterTraining,
    AnswerTokenDataset,
    build_peft_model,
    discard_checkpoints,
    last_checkpoint,
    seed_everything,
    train_adapter,
    training_default,
)
from ..views import PromptFormatter, SampleView, prompt_token_ids, text_records
from . import LlmInputs, Runtime, device_kind


VERSION = 1
FEW_SHOT_FILE = "few_shot.json"
# Fields of a PEFT config that record where and when it was made, not what it trains.
PEFT_BOOKKEEPING = ("base_model_name_or_path", "revision", "peft_version", "auto_mapping", "inference_mode")


@dataclass(frozen=True)
class TuneInputs(StageInputs):
    """What tuning one LLM model reads: its method and PEFT config (as PEFT receives it, less ``PEFT_BOOKKEEPING``),
    the few-shot sample, the loss, ``tune.training``, the base LLM, the prompt settings and the device;
    ``gate_learning_rate`` only for a method with a gate, and only when set."""

    method: str
    peft: Optional[dict]
    few_shot: int
    few_shot_seed: int
    loss: str
    training: Mapping[str, Any]
    llm: LlmInputs
    prompt: PromptConfig
    device: str
    gate_learning_rate: Optional[float] = omitted_when_none()

    @property
    def adapter_training(self) -> AdapterTraining:
        return AdapterTraining(self.training, self.loss, self.gate_learning_rate)


def peft_inputs(model: Method, config: RunConfig) -> Optional[dict]:
    peft_config = model.peft_config(model.adapter_settings(config), crm_dim=config.crm.model.crm_dim)
    if peft_config is None:
        return None
    return {key: value for key, value in canonical(peft_config.to_dict()).items() if key not in PEFT_BOOKKEEPING}


def node(model: Method, config: RunConfig, data: StageNode, retrieval: StageNode,
         rc: Optional[StageNode]) -> StageNode:
    inputs = TuneInputs(
        method=type(model).__name__,
        peft=peft_inputs(model, config),
        few_shot=model.few_shot_size(config),
        few_shot_seed=config.tune.few_shot_seed,
        loss=config.tune.loss,
        training=config.tune.training,
        llm=LlmInputs.of(config.llm),
        prompt=config.prompt,
        device=device_kind(),
        gate_learning_rate=config.tune.gate_learning_rate if model.needs_crm else None,  # only a gate has one
    )
    upstream = (data, retrieval) + ((rc,) if rc is not None else ())
    return StageNode("tune", model.label(config), inputs, upstream, VERSION)


@dataclass(frozen=True)
class TunedAdapter:
    """A finished tune artifact: where the adapter is, and what training reported."""

    path: Path
    key: str
    few_shot_ids: object
    summary: dict

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR


def run(folder: RunFolder, node: StageNode, dataset: RecDataset, retrieval: RetrievalResult,
        rc: Optional[RcTable], runtime: Runtime) -> TunedAdapter:
    """``retrieval`` writes the prompts' short histories; ``rc`` (RecLoRA) is the R_c table of the gate CRM."""
    inputs: TuneInputs = node.inputs

    def build(staging: Path) -> dict:
        tokenizer = load_tokenizer(inputs.llm.base_model)
        formatter = PromptFormatter.from_config(tokenizer, inputs.prompt)
        # TrainingArguments' own default seed, which the Trainer uses when tune.training sets none.
        seed_everything(int(inputs.training.get("seed", training_default("seed"))))
        base = inputs.llm.load(runtime.device)
        base.config.pad_token_id = tokenizer.pad_token_id
        train_ids = seeded_sample(dataset.sample_ids("train"), inputs.few_shot, inputs.few_shot_seed, what="few-shot")
        if runtime.processes.main:
            save_index_file(staging / FEW_SHOT_FILE, train_ids, split="train", size=len(train_ids),
                            seed=inputs.few_shot_seed)
        crm_embeds = rc.get(train_ids) if rc is not None else None
        view = SampleView.from_dataset(dataset, train_ids, short=retrieval, k_long=0)
        token_ids = prompt_token_ids(dataset.spec, text_records(view), formatter, inputs.prompt.max_tokens)
        folder.log(f"stage 2: {node.label} on {len(train_ids)} few-shot samples "
                   f"(positive rate {view.label.mean():.2f})")
        train_set = AnswerTokenDataset(train_ids, token_ids, [formatter.answer_id(label) for label in view.label],
                                       crm_embeds)
        peft_model = build_peft_model(base, peft_config_of(inputs.peft, rc),
                                      gradient_checkpointing=inputs.adapter_training.checkpoints_activations)
        trainable, total = peft_model.get_nb_trainable_parameters()
        folder.log(f"trainable parameters: {trainable:,} of {total:,}")
        resume = None  # the main process decides (and removes incomplete checkpoints), the others follow
        if runtime.processes.main:
            resume = last_checkpoint(staging / "checkpoints", runtime.processes.count, log=folder.log, discard=True)
        resume = runtime.processes.broadcast(None if resume is None else str(resume))
        resume = None if resume is None else Path(resume)
        if resume is not None:
            folder.log(f"resuming {node.label} from its last checkpoint ({resume.name})")
        summary = train_adapter(peft_model, train_set, inputs.adapter_training, staging,
                                pad_id=tokenizer.pad_token_id, answers=AnswerTokens.from_formatter(formatter),
                                runtime=runtime, run_name=node.label, resume_from_checkpoint=resume)
        runtime.processes.wait()  # every process is done with the checkpoints
        if runtime.processes.main:
            discard_checkpoints(staging / "checkpoints")  # the adapter is final; nothing to resume
        return {**summary, "trainable_parameters": int(trainable), "total_parameters": int(total),
                "resumed_from": resume.name if resume else None}

    def load(artifact) -> TunedAdapter:
        """Reads the adapter as scoring will, so that a damaged adapter is trained again here instead of failing the
        scoring of a reused one."""
        adapter = artifact.path / ADAPTER_DIR
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (adapter / name).is_file():
                raise FileNotFoundError(f"{adapter} has no {name}")
        read_json(adapter / "adapter_config.json", "adapter config")
        load_file(str(adapter / "adapter_model.safetensors"))
        return TunedAdapter(artifact.path, artifact.key, load_index_file(artifact.path / FEW_SHOT_FILE),
                            artifact.summary)

    # Collective: on several processes every one trains (DDP through the Trainer); the main one writes.
    adapter, _ = cached(folder, node, build, load, keep=("checkpoints",), collective=True)
    return adapter


def peft_config_of(recorded: dict, rc: Optional[RcTable]):
    """The PEFT config a node records, rebuilt (PEFT picks the class by ``peft_type``); a RecLoRA config must read
    R_c as wide as the table's."""
    peft_config = PeftConfig.from_peft_type(**recorded)
    crm_dim = getattr(peft_config, "crm_dim", None)
    if crm_dim is not None and (rc is None or rc.crm_dim != crm_dim):
        raise ValueError(f"the adapter's crm_dim {crm_dim} does not match R_c of width "
                         f"{None if rc is None else rc.crm_dim}")
    return peft_config
