"""What a run records besides checkpoints: ``metrics.jsonl`` and TensorBoard events.

Both hold the same scalars. Only process 0 writes (every process computes the same
values). A resumed run drops what a killed run wrote after its last checkpoint: lines
of metrics.jsonl past that step are removed and TensorBoard purges later events, so
the records end up as an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax


class RunLog:
    """Writes evaluation records and training scalars of one run's workdir."""

    def __init__(self, workdir: str, last_step: int = 0):
        self._enabled = jax.process_index() == 0
        self._path = os.path.join(workdir, "metrics.jsonl")
        if not self._enabled:
            return
        if os.path.exists(self._path):
            with open(self._path) as f:
                kept = [line for line in f
                        if line.strip() and json.loads(line)["step"] <= last_step]
            with open(self._path, "w") as f:
                f.writelines(kept)
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                          purge_step=last_step + 1)

    def scalars(self, step: int, scalars: dict[str, float | None], prefix: str) -> None:
        """TensorBoard scalars ``prefix/name`` at ``step`` (None values are skipped)."""
        if self._enabled:
            for name, value in scalars.items():
                if value is not None:
                    self._tensorboard.add_scalar(f"{prefix}/{name}", value, step)

    def evaluation(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (which has ``step``), also sent to TensorBoard."""
        if self._enabled:
            with open(self._path, "a") as f:
                f.write(json.dumps(record) + "\n")
            step = record["step"]
            self.scalars(step, {k: v for k, v in record.items() if k != "step"}, "eval")
            self._tensorboard.flush()

    def close(self) -> None:
        if self._enabled:
            self._tensorboard.close()
