"""Experiment tracking: stage-1 CRM training and stage-2 tuning report to the same trackers.

Stage 2 goes through the HF ``Trainer``, which reports to ``TrainingArguments.report_to``. Stage 1 is a plain PyTorch
loop; it reports through accelerate's tracker classes (``accelerate.tracking``), the same integrations (TensorBoard,
Weights & Biases, MLflow, Comet, Aim, ClearML, DVCLive, ...) under the same names. ``tracking.report_to`` in the run
config names them once for both stages.

    trackers = Trackers.start(("tensorboard",), "SIM (semantic)", "runs/x/tracking", {"epochs": 10})
    trackers.log({"train/loss": 0.52, "valid/auc": 0.74}, step=1)
    trackers.finish()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence


NO_TRACKING = ("none",)


def tracker_names(report_to: Sequence[str]) -> list[str]:
    """The tracker names of a ``report_to`` value ("none" or empty: none; "all": every installed integration, as the
    Trainer reads it)."""
    names = [name for name in report_to if name not in NO_TRACKING]
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        names = list(get_available_reporting_integrations())
    return names


def unsupported_trackers(report_to: Sequence[str]) -> list[str]:
    """Names in ``report_to`` that accelerate cannot log CRM training to."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return [name for name in tracker_names(report_to) if name not in LOGGER_TYPE_TO_CLASS]


@dataclass
class Trackers:
    """The trackers of one training run (one CRM), started with its configuration."""

    trackers: list = field(default_factory=list)

    @classmethod
    def start(cls, report_to: Sequence[str], run_name: str, logging_dir, config: Mapping) -> "Trackers":
        names = tracker_names(report_to)
        if not names:
            return cls()
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        unknown = [name for name in names if name not in LOGGER_TYPE_TO_CLASS]
        if unknown:
            raise ValueError(f"tracking.report_to: accelerate has no tracker {', '.join(unknown)}; known: "
                             f"{', '.join(LOGGER_TYPE_TO_CLASS)}")
        trackers = []
        for name in names:
            tracker_class = LOGGER_TYPE_TO_CLASS[name]
            if tracker_class.requires_logging_directory:
                Path(logging_dir).mkdir(parents=True, exist_ok=True)
                tracker = tracker_class(run_name, str(logging_dir))
            else:
                tracker = tracker_class(run_name)
            tracker.start()
            tracker.store_init_configuration(_loggable(config))
            trackers.append(tracker)
        return cls(trackers)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(dict(values), step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _loggable(config: Mapping) -> dict:
    """Hyper-parameters as trackers accept them (bool, str, float, int or None; other values as text)."""
    return {str(key): value if value is None or isinstance(value, (bool, str, int, float)) else str(value)
            for key, value in config.items()}
