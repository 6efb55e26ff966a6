"""The base LightningModule: RoBERTa's optimizer and schedule, and the logging every objective shares.

AdamW with beta2 0.98 and eps 1e-6 (RoBERTa §3.1, for stability with large batches), weight decay
0.01 except on biases and LayerNorm weights (as in BERT), linear warmup to the peak learning rate then
linear decay to zero. Gradients are clipped to the Trainer's `gradient_clip_val` (global norm, as the papers)
by `configure_gradient_clipping` below, the same way under every precision. Subclasses implement
`losses(batch) -> dict` whose "loss" entry is optimised; every entry is logged as train/<name>.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule (RoBERTa's recipe)."""

    peak_lr: float = 5e-4  # fairseq's suggestion for batch 2K; small models take larger rates
    warmup_fraction: float = 0.06  # share of the steps spent warming up (RoBERTa: 24k of 500k ~ 5%)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98  # RoBERTa: 0.98 instead of BERT's 0.999
    eps: float = 1e-6
    gradient_clip: float = 1.0
    # departure (off at 1.0): the absolute position table's learning rate as a multiple of the others'. Adam
    # moves each position vector by about one learning rate per step, as it moves a word vector, but a small
    # model's attention only starts to read positions once they stand out after the embedding LayerNorm
    position_lr_scale: float = 1.0
    max_steps: int = 1000  # set by the runner from the token budget


# ELECTRA's released code (model/optimization.py, configure_pretraining.py): Adam beta2 0.999 and 10k warm-up
# steps of 1M; the rest as RoBERTa's. Its tables train every row, their BERT baselines included, with it.
ELECTRA_RECIPE = OptimConfig(beta2=0.999, warmup_fraction=0.01)


def describe(optim: dict) -> str:
    """One line for a table's notes: the optimiser a row trained with."""
    return (f"AdamW (beta1 {optim['beta1']}, beta2 {optim['beta2']}, eps {optim['eps']:g}, weight decay "
            f"{optim['weight_decay']}), peak lr {optim['peak_lr']:.2e}, linear warm-up over "
            f"{100 * optim['warmup_fraction']:g}% of the steps then linear decay to 0, gradient clip {optim['gradient_clip']}")


def decay_groups(module: torch.nn.Module, weight_decay: float, peak_lr: float,
                 lr_scale: Callable[[str], float] = lambda name: 1.0) -> list[dict]:
    """No weight decay for biases and norm weights (1-D parameters), as in BERT; a parameter whose learning
    rate is scaled (`lr_scale(name) != 1`, a departure) in a group of its own. The two unscaled groups
    come first and always exist."""
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((lr_scale(name), parameter.ndim >= 2), []).append(parameter)
    return [{"params": parameters, "weight_decay": weight_decay if decays else 0.0, "lr": peak_lr * scale}
            for (scale, decays), parameters in groups.items()]


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class ObjectiveModule(L.LightningModule):
    """Owns optimisation, token counting and train/... logging; a subclass defines `losses`."""

    def __init__(self, optim: OptimConfig):
        super().__init__()
        self.optim = optim
        self.tokens_seen = 0  # non-pad tokens of every training batch; saved in checkpoints
        self.padded_tokens_seen = 0  # the same with padding: what the budget counts, checked against the plan
        self.earlier_fit_seconds = 0.0  # time spent in `fit` by finished or earlier sessions (checkpointed)
        self.resumed_fit_seconds = 0.0  # the part of it that the checkpoint this session resumed from had trained
        self._fit_started = None

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        losses = self.losses(batch)
        batch_tokens = batch.get("num_tokens", 0)
        world = self.trainer.world_size if self._trainer is not None else 1
        self.tokens_seen += int(batch_tokens) * world
        self.padded_tokens_seen += batch["input_ids"].numel() * world
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach() if torch.is_tensor(value) else value, prog_bar=name == "loss")
        self.log("train/tokens_per_step", float(batch_tokens) * world)
        self.log("train/tokens_seen", float(self.tokens_seen))
        return losses["loss"]

    def configure_optimizers(self):
        o = self.optim
        # torch's fused AdamW (the same update, one kernel for all parameters) where it has one: on the CPU
        # its default loops over the parameters (docs/speed.md). It works under every precision because
        # `configure_gradient_clipping` clips the gradients itself.
        optimizer = torch.optim.AdamW(decay_groups(self, o.weight_decay, o.peak_lr, self.learning_rate_scale), lr=o.peak_lr,
                                      betas=(o.beta1, o.beta2), eps=o.eps, fused=self.device.type in ("cpu", "cuda"))
        warmup = int(o.warmup_fraction * o.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_decay(step, warmup, o.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the global gradient norm to `gradient_clip_val` under every precision, the fused optimizer's
        included. Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales its own
        gradients (the fused AdamW) even where no scaler is used (bf16-mixed); with fp16's scaler the
        gradients are unscaled here first, which the scaler then tells the fused step."""
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
        # under FSDP each rank holds a shard: only the wrapped root module computes the norm over all of them
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_") and wrapped is not self:
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def learning_rate_scale(self, name: str) -> float:
        """A parameter's learning rate as a multiple of the peak (1 for all, unless a departure says)."""
        return self.optim.position_lr_scale if name.endswith("embeddings.position.weight") else 1.0

    def on_fit_start(self):
        # Lightning restores a checkpoint before this hook, so earlier_fit_seconds already holds its sessions
        self._fit_started = time.monotonic()

    def on_fit_end(self):
        self.earlier_fit_seconds, self._fit_started = self.fit_seconds, None  # the clock stops with the fit

    @property
    def fit_seconds(self) -> float:
        """Wall time spent training this module, summed over every session of a resumed run (a row killed
        and resumed reports its whole pretraining time, not the last session's share)."""
        running = time.monotonic() - self._fit_started if self._fit_started is not None else 0.0
        return self.earlier_fit_seconds + running

    def on_save_checkpoint(self, checkpoint):
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["padded_tokens_seen"] = self.padded_tokens_seen
        checkpoint["fit_seconds"] = self.fit_seconds

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.padded_tokens_seen = checkpoint.get("padded_tokens_seen", 0)
        self.earlier_fit_seconds = self.resumed_fit_seconds = checkpoint.get("fit_seconds", 0.0)
