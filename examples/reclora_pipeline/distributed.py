"""One run on several processes (``torchrun``, ``accelerate launch``): which process does what.

Stages that must run once (data, retrieval, CRM training, R_c, the report) run on the main process while the others
wait, then read the finished artifact from the run folder. LLM tuning runs on every process (DDP through the HF
Trainer) and scoring is sharded across the processes and gathered, so the outputs are one set, written by the main
process. accelerate's ``PartialState`` sets up the process group from the launcher's environment (gloo on CPUs, NCCL on
GPUs); a plain run is one process and none of this does anything.

    processes = current_processes()
    mine = processes.shard(len(ids))            # this process's positions of ids
    every = processes.gather_in_order(scores_of_mine, len(ids))
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import numpy as np


WAIT_SECONDS = 24 * 3600  # how long a process waits for the others (torch.distributed's timeout)


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes."""

    index: int = 0
    count: int = 1
    device: str = field(default_factory=lambda: default_device())

    @property
    def main(self) -> bool:
        return self.index == 0

    @property
    def several(self) -> bool:
        return self.count > 1

    def wait(self) -> None:
        """Block until every process gets here."""
        if self.several:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if not self.several:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def shard(self, n: int) -> np.ndarray:
        """The positions of ``n`` items this process handles (every ``count``-th, from ``index``)."""
        return np.arange(self.index, n, self.count)

    def gather_in_order(self, values: Sequence, n: int) -> np.ndarray:
        """Every process's ``values`` for its :meth:`shard` of ``n`` items, put back in item order, on every
        process."""
        values = np.asarray(values)
        if not self.several:
            return values
        from accelerate.utils import gather_object

        pieces = gather_object([(self.index, values)])
        result = np.empty((n,) + values.shape[1:], dtype=values.dtype)
        for index, piece in pieces:
            result[np.arange(index, n, self.count)] = piece
        return result


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def current_processes() -> Processes:
    """The processes of this run, from the launcher's environment (``WORLD_SIZE``); one process when not launched."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _warn_if_accelerate_started_one_cpu_process()
        return Processes()
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    # As the retriever's item encoding and the Trainer ask for it. The others wait while the main process trains a
    # CRM or reads a large dataset, which can take hours: a day of patience instead of the default half hour.
    state = PartialState(cpu=use_cpu, timeout=timedelta(seconds=WAIT_SECONDS))
    if state.num_processes != world:
        raise RuntimeError(f"the launcher started {world} processes but accelerate joined {state.num_processes}")
    return Processes(state.process_index, state.num_processes, str(state.device))


def _warn_if_accelerate_started_one_cpu_process() -> None:
    """``accelerate launch --cpu --num_processes N`` starts one process (accelerate runs several CPU processes only
    through an MPI launcher) and sets OMP_NUM_THREADS=1; say so instead of running N times slower than asked."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "WORLD_SIZE" not in os.environ:
        print("note: `accelerate launch --cpu` started one process (accelerate starts several CPU processes only "
              "through mpirun); for several CPU processes run `torchrun --nproc_per_node N -m reclora_pipeline.cli "
              f"...`. This process uses {os.environ.get('OMP_NUM_THREADS', 'all')} thread(s).", file=sys.stderr)
