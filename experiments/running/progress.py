"""Signs of life for long runs: Lightning's progress bar on a terminal, plain lines in a log.

On a terminal each fit (a row's pretraining, then each fine-tuning run) gets Lightning's tqdm bar with
the loss, tokens per second and tqdm's ETA. When output goes to a file (CI, nohup, a cluster's log) a
bar's carriage returns are noise, so a `ProgressBar` of Lightning's that prints one line every ~5% of
the steps takes its place, with the same figures.
"""
from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class _Throughput:
    """Tokens per second since this fit started (a resumed run counts from its restart)."""

    def _start_clock(self, trainer) -> None:
        self._started, self._first_step, self._tokens = time.time(), trainer.global_step, 0

    def _count(self, batch) -> None:
        self._tokens += int(batch.get("num_tokens", 0)) if isinstance(batch, dict) else 0

    def _rate(self) -> float:
        return self._tokens / max(1e-9, time.time() - self._started)


class TerminalBar(_Throughput, TQDMProgressBar):
    """Lightning's tqdm bar, named after the fit, with tokens/s beside the loss."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def on_train_start(self, trainer, module):
        super().on_train_start(trainer, module)
        self._start_clock(trainer)

    def on_train_epoch_start(self, trainer, module):
        super().on_train_epoch_start(trainer, module)
        self.train_progress_bar.set_description(self.label)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._count(batch)
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, module):
        metrics = {k.replace("train/", ""): v for k, v in super().get_metrics(trainer, module).items() if k != "v_num"}
        if self._tokens:
            metrics["tok/s"] = f"{self._rate():,.0f}"
        return metrics


class LogLines(_Throughput, ProgressBar):
    """One plain line every `every` of a fit's steps: step, loss, tokens/s, elapsed and ETA."""

    def __init__(self, label: str, every: float = 0.05):
        super().__init__()
        self.label, self.every, self.enabled = label, every, True

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, module):
        self._start_clock(trainer)
        self._next = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._count(batch)
        step, total = trainer.global_step, max(1, trainer.max_steps)
        if not self.enabled or (step < self._next and step < total) or step == self._first_step:
            return
        self._next = step + max(1, round(self.every * total))
        elapsed = time.time() - self._started
        remaining = elapsed / (step - self._first_step) * (total - step)
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = f", loss {float(loss):.3f}" if loss is not None else ""
        rate = f", {self._rate():,.0f} tokens/s" if self._tokens else ""
        print(f"  {self.label}: step {step}/{total} ({100 * step / total:.0f}%){loss_text}{rate}, "
              f"{minutes(elapsed)} elapsed, ETA {minutes(remaining)}", flush=True)


def progress_bar(label: str) -> ProgressBar:
    """A terminal bar when a person is watching, log lines otherwise."""
    return TerminalBar(label) if sys.stdout.isatty() else LogLines(label)
