"""Weights & Biases: one run per row and seed, grouped by experiment and preset, named by row.

Offline unless the user has configured W&B (WANDB_API_KEY, `wandb login`, or WANDB_MODE=online), so a
machine without network never hangs or fails; `make wandb-sync` uploads offline runs later. With
WANDB_MODE=disabled nothing is logged. W&B mirrors the results; the row JSONs and tables on disk are the
record.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT = os.environ.get("WANDB_PROJECT", "pretraining-ablations")
os.environ.setdefault("WANDB_SILENT", "true")


def mode() -> str:
    """disabled | offline | online."""
    requested = os.environ.get("WANDB_MODE", "").lower()
    if requested in ("disabled", "offline", "online"):
        return requested
    if requested == "dryrun":
        return "offline"
    configured = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_key()  # what `wandb login` writes
    return "online" if configured else "offline"


def _netrc_has_key() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_dir(plan) -> Path:
    return plan.directory / "wandb"


def logger_for(plan):
    """A WandbLogger for one row and seed, or None when W&B is disabled (or on a non-zero rank)."""
    current = mode()
    if current == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    directory = wandb_dir(plan)
    directory.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=PROJECT, group=f"{plan.experiment.id}/{plan.preset.name}", name=f"{plan.row.name} seed {plan.seed}",
        job_type="pretrain", save_dir=str(directory), offline=current == "offline",
        config=plan.config.to_dict() | {"row": plan.row.name, "seed": plan.seed, "preset": plan.preset.name},
        tags=[plan.experiment.id, plan.preset.name],
    )


def finish_row(logger, result: dict) -> None:
    """Put the row's final metrics in its run summary and close the run."""
    if logger is None:
        return
    run = logger.experiment
    if hasattr(run, "summary"):
        run.summary.update({f"final/{k}": v for k, v in result["metrics"].items()})
        run.summary.update({"tokens_seen": result["tokens_seen"], "wall_time_s": result["wall_time_s"]})
        run.finish()


def log_table(experiment_id: str, preset: str, directory: Path, columns: list[str], rows: list[list]) -> None:
    """The final table as a W&B Table in its own run of the group."""
    current = mode()
    if current == "disabled":
        return
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=PROJECT, group=f"{experiment_id}/{preset}", name=f"{experiment_id} table", job_type="table",
                     dir=str(directory), mode=current, reinit="finish_previous")
    run.log({"table": wandb.Table(columns=columns, data=[[str(v) for v in row] for row in rows])})
    run.finish()
