"""Fine-tuning a trained encoder on every downstream task: the papers' measurement, and the noisiest one.

Each task is fine-tuned `finetune.seeds` times from a copy of the encoder; a task's score (x100) is the
median, as the papers report, with the spread (`<task>_ft_range`) and every run (`<task>@ft<k>`) kept, and
the majority-class baseline beside it. Each task is encoded once per row (`task_data`), for all its runs and
for the linear probes, which read the same examples.
"""
from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np

from datamodules.downstream import FineTuneDataModule, load_task, task_name
from experiments.durable import StopOnRequest, StopRequest, write_json_atomically
from lightning_modules.finetune import FineTuneModule


@lru_cache(maxsize=None)
def cached_task(spec: str):
    """A task's texts and labels, loaded once per process (every row of a sweep reads the same)."""
    return load_task(spec)


def task_data(config, tokenized, seed: int) -> dict[str, FineTuneDataModule]:
    """Each of the row's tasks, encoded with its tokenizer at the fine-tuning caps and length, by name."""
    ft = config.finetune
    return {task_name(spec): FineTuneDataModule(cached_task(spec), tokenized.tokenizer, tokenized.config.kind,
                                                ft.max_length, ft.batch_size, seed, ft.max_train_examples,
                                                ft.max_validation_examples, ft.group_by_length)
            for spec in config.tasks}


def fine_tune_all(config, encoder_config, encoder_state: dict, tasks: dict[str, FineTuneDataModule], seed: int,
                  hardware, finished_run: Callable[[str, int], Path]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Fine-tune a copy of the encoder on each task with `finetune.seeds` seeds, on `hardware` (the runner's
    Hardware: its `trainer` builds each run's Trainer). A finished run is recorded at `finished_run(task, k)`,
    so that a row stopped during fine-tuning runs only the runs it had not finished. Returns the scores and
    each run's seconds by task."""
    scores, seconds, ft = {}, {}, config.finetune
    for name, data in tasks.items():
        steps = max(1, math.ceil(len(data.train_items) / ft.batch_size * ft.epochs))
        runs, seconds[name] = [], []
        for k in range(ft.seeds):
            record = finished_run(name, k)
            if record.exists():
                done = json.loads(record.read_text())
                runs.append(done["score"])
                seconds[name].append(done["seconds"])
                continue
            started = time.time()
            data.seed = seed + 1000 * k  # k = 0 is the pretraining seed, as with one fine-tuning run
            trainer = hardware.trainer(f"fine-tuning on {name}", max_steps=steps, logger=False,
                                       enable_checkpointing=False, gradient_clip_val=1.0,
                                       use_distributed_sampler=not ft.group_by_length,  # the batches shard themselves
                                       val_check_interval=steps, check_val_every_n_epoch=None,  # validate once, at the end
                                       callbacks=[StopOnRequest()])  # a stopped fine-tuning run is simply run again
            if trainer.is_global_zero:
                print(f"  fine-tuning on {name} (seed {k + 1} of {ft.seeds}): {steps} steps", flush=True)
            L.seed_everything(data.seed, workers=True, verbose=False)
            module = FineTuneModule(encoder_config, data.task.spec.num_labels, data.task.spec.metric, ft, steps,
                                    encoder_state)
            with hardware.training(f"fine-tuning on {name}"):
                trainer.fit(module, datamodule=data)
            StopRequest.check()  # Ctrl-C / SIGTERM ended the fit: stop the row here
            runs.append(float(trainer.callback_metrics["val/score"]))
            seconds[name].append(round(time.time() - started, 1))
            if trainer.is_global_zero:
                write_json_atomically(record, {"score": runs[-1], "seconds": seconds[name][-1]}, "finetune-run")
        scores[name] = float(np.median(runs))
        if len(runs) > 1:
            scores[f"{name}_ft_range"] = max(runs) - min(runs)
            scores |= {f"{name}@ft{k}": value for k, value in enumerate(runs)}
        scores[f"{name}_majority"] = data.task.majority_score()
    if tasks:  # the tasks this row actually ran
        scores["downstream_avg"] = sum(scores[name] for name in tasks) / len(tasks)
    return scores, seconds
