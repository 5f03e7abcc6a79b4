"""The stage graph of a config: every stage a run needs, with its inputs and key, computed without running anything.

    plan = plan_run(config)
    plan.data, plan.retrievals["semantic"], plan.llm_models[0].tune.key, ...

``pipeline.run_pipeline`` executes a plan; the tests compare the plans of two configs to check that a changed setting
changes exactly the keys of the stages that read it and of those downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .artifacts import StageNode
from .config import RunConfig
from .crm import crm_class
from .methods import Method, models_of
from .stages import LlmInputs
from .stages import crm as crm_stage
from .stages import data as data_stage
from .stages import retrieval as retrieval_stage
from .stages import score as score_stage
from .stages import tune as tune_stage


@dataclass(frozen=True)
class CrmEntry:
    """A CRM of the comparison (the gate CRM and each baseline), scored with its own history: a row of the table."""

    name: str  # registry name
    display_name: str
    history: str
    crm: StageNode
    score: StageNode


@dataclass(frozen=True)
class LlmEntry:
    """An LLM model of the comparison, a row of the table: its method, the histories of its prompt and gate, and its
    stages."""

    method: Method
    name: str  # its label (``Method.label``): the row's name and its stages' label
    short_history: str
    long_history: Optional[str]  # the gate CRM's history (methods that read R_c)
    gate_crm: Optional[tuple]  # (CRM name, history mode) of the R_c it reads: a key of ``RunPlan.rcs``
    tune: Optional[StageNode]
    rc: Optional[StageNode]
    score: StageNode
    shuffled: Optional[StageNode] = None  # scored with R_c shuffled across samples (eval.shuffled_gate)


@dataclass
class RunPlan:
    config: RunConfig
    data: StageNode
    retrievals: dict = field(default_factory=dict)  # history mode -> node
    crms: dict = field(default_factory=dict)  # (CRM name, history mode) -> node
    rcs: dict = field(default_factory=dict)  # (CRM name, history mode) -> node
    crm_models: list = field(default_factory=list)  # CrmEntry
    llm_models: list = field(default_factory=list)  # LlmEntry

    def nodes(self) -> dict:
        """Every node by ``(stage, label)``."""
        found = {}
        for node in (self.data, *self.retrievals.values(), *self.crms.values(), *self.rcs.values(),
                     *(m.score for m in self.crm_models), *(m.tune for m in self.llm_models if m.tune),
                     *(m.score for m in self.llm_models), *(m.shuffled for m in self.llm_models if m.shuffled)):
            found[(node.stage, node.label)] = node
        return found


def plan_run(config: RunConfig) -> RunPlan:
    plan = RunPlan(config, data_stage.node(config.data))

    def retrieval(mode: str) -> StageNode:
        if mode not in plan.retrievals:
            plan.retrievals[mode] = retrieval_stage.node(config.retrieval, config.llm, plan.data, mode)
        return plan.retrievals[mode]

    def crm(name: str, mode: str) -> StageNode:
        if (name, mode) not in plan.crms:
            plan.crms[name, mode] = crm_stage.node(config.crm, name, plan.data, retrieval(mode))
        return plan.crms[name, mode]

    retrieval(config.retrieval.mode)
    for name in dict.fromkeys((config.crm.name, *config.crm.baselines)):
        mode = crm_stage.history_mode(name, config.retrieval.mode)
        trained = crm(name, mode)
        score = score_stage.crm_node(crm_class(name).display_name, config.eval, config.crm.training.eval_batch_size,
                                     plan.data, retrieval(mode), trained)
        plan.crm_models.append(CrmEntry(name, crm_class(name).display_name, mode, trained, score))

    llm = LlmInputs.of(config.llm)
    for method in models_of(config):
        name, short = method.label(config), method.short_mode(config)
        long = rc = gate = None
        if method.needs_crm:
            gate = (config.crm.name, crm_stage.history_mode(config.crm.name, method.long_mode(config)))
            long = gate[1]  # the history the gate CRM really reads (a CRM other than SIM reads the recent items)
            if gate not in plan.rcs:
                plan.rcs[gate] = crm_stage.rc_node(config.crm, crm(*gate))
            rc = plan.rcs[gate]
        tune = tune_stage.node(method, config, plan.data, retrieval(short), rc) if method.tuned else None
        score = score_stage.llm_node(name, type(method).__name__, config.eval, llm, config.prompt, plan.data,
                                     retrieval(short), tune, rc)
        shuffled = None
        if rc is not None and config.eval.shuffled_gate:
            shuffled = score_stage.llm_node(f"{name} (shuffled R_c)", type(method).__name__, config.eval, llm,
                                            config.prompt, plan.data, retrieval(short), tune, rc,
                                            shuffled_rc_seed=config.eval.test_seed)
        plan.llm_models.append(LlmEntry(method, name, short, long, gate, tune, rc, score, shuffled))
    return plan
