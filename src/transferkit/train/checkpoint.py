"""Atomic checkpoints and exact resume.

A checkpoint is Accelerate's state (model, optimizer, scheduler, RNGs) plus the loop's own
``TrainState`` and the best weights so far: everything a restarted run needs to continue
as if it had never stopped (batches are deterministic in (seed, epoch), so it skips the
ones already done). Folders are written under a temporary name and renamed, so a kill
leaves either a whole checkpoint or none.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
BEST_FILE = "best_weights.safetensors"


@dataclass
class TrainState:
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already done (this process)
    global_step: int = 0  # optimizer steps
    best_metric: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    examples_seen: int = 0  # training examples through forward and backward (this process)
    history: list[dict[str, Any]] = field(default_factory=list)


class Checkpoints:
    """The checkpoints of one run in ``directory`` (None: the run keeps none)."""

    def __init__(self, directory: Path | None, accelerator: Any) -> None:
        self.directory = directory
        self.accelerator = accelerator

    def restore(self) -> tuple[TrainState, dict[str, torch.Tensor] | None] | None:
        """Load the newest checkpoint into the prepared objects; its state and best weights."""
        from safetensors.torch import load_file

        last = latest_checkpoint(self.directory) if self.directory is not None else None
        if last is None:
            return None
        self.accelerator.load_state(str(last))
        state = TrainState(**json.loads((last / STATE_FILE).read_text()))
        best = load_file(str(last / BEST_FILE)) if (last / BEST_FILE).is_file() else None
        return state, best

    def save(self, state: TrainState, best_weights: dict[str, torch.Tensor] | None) -> None:
        from safetensors.torch import save_file

        if self.directory is None:
            return
        self.accelerator.wait_for_everyone()
        tmp = self.directory / f".tmp-step-{state.global_step}"
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state)))
            if best_weights is not None:
                save_file({k: v.contiguous() for k, v in best_weights.items()},
                          str(tmp / BEST_FILE))
            final = self.directory / f"step-{state.global_step:08d}"
            tmp.rename(final)  # atomic: a checkpoint folder is either whole or absent
            for old in sorted(self.directory.glob("step-*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def clear(self) -> None:
        """The run finished: nothing is left to resume."""
        if self.directory is not None and self.accelerator.is_main_process \
                and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(p for p in directory.glob("step-*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None
