"""TensorBoard writer: one run directory per (experiment, method, model size, seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary


class TBLogger:
    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        # purge_step: after a resume, events at or beyond the checkpoint's step written
        # by the killed process are hidden, so curves do not double back.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Register the run in the HParams dashboard; ``metrics`` name scalar tags already logged."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        for summary in hparams_summary(clean, metrics):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
