"""Fine-tuning a trained encoder on every downstream task: the papers' measurement, and the noisiest one.

Each task is fine-tuned `finetune.seeds` times from a copy of the encoder; a task's score (x100) is the
median, as the papers report, with the spread (`<task>_ft_range`) and every run (`<task>@ft<k>`) kept, and
the majority-class baseline beside it. Each task is encoded once per row (`task_data`), for all its runs and
for the linear probes, which read the same examples. A tagging task also reports its accuracy on ambiguous
words (`pos_ambiguous`, the median over runs like its score) and what the most frequent tag of each word scores
(`pos_most_frequent_tag`, `pos_ambiguous_most_frequent_tag`, on the same training and dev sentences).

The averages (`task_averages`): `downstream_avg` over the tasks that are not word-order tasks (sentiment,
topic, a user's GLUE or files tasks: what the tables have always averaged) and `order_avg` over the word-order
tasks (`TaskSpec.word_order`: pos by `pos_ambiguous`, bigram_shift), which a bag of words cannot pass.
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

from datamodules.downstream import TaskSpec, load_task, task_name

from datamodules.batching import FineTuneDataModule
from experiments.running.durable import StopOnRequest, StopRequest, write_json_atomically
from lightning_modules.finetune import FineTuneModule


@lru_cache(maxsize=None)
def cached_task(spec: str):
    """A task's texts and labels, loaded once per process (every row of a sweep reads the same)."""
    return load_task(spec)


def task_caps(ft, spec: TaskSpec) -> tuple[int | None, int | None]:
    """A task's (training, dev) caps: the fine-tuning caps, and a word-order task's own tighter ones."""
    if not spec.word_order:
        return ft.max_train_examples, ft.max_validation_examples
    return (_tighter(ft.max_train_examples, ft.word_order_max_train_examples),
            _tighter(ft.max_validation_examples, ft.word_order_max_validation_examples))


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def task_data(config, tokenized, seed: int) -> dict[str, FineTuneDataModule]:
    """Each of the row's tasks, encoded with its tokenizer at its caps and the fine-tuning length, by name."""
    ft = config.finetune
    return {task_name(spec): FineTuneDataModule(cached_task(spec), tokenized.tokenizer, tokenized.config.kind,
                                                ft.max_length, ft.batch_size, seed,
                                                *task_caps(ft, cached_task(spec).spec), ft.group_by_length)
            for spec in config.tasks}


EXTRA_SCORES = ("ambiguous",)  # what a fine-tuning run reports beside its score (`val/<name>`), as `<task>_<name>`
ORDER_AVERAGE = "order_avg"


def headline(name: str, spec: TaskSpec) -> str:
    """The score that stands for a task in an average: `pos_ambiguous` for pos, the task's own name otherwise."""
    return f"{name}_{spec.headline}" if spec.headline else name


def task_averages(scores: dict[str, float], specs: dict[str, TaskSpec], suffix: str = "") -> dict[str, float]:
    """`downstream_avg` over the tasks that are not word-order tasks and `order_avg` over those that are, each
    task by its headline score; `suffix` "_probe" gives `probe_avg` and `order_probe_avg` from `<score>_probe`."""
    out = {}
    for average, members in (("downstream_avg" if not suffix else suffix.strip("_") + "_avg",
                              [n for n, spec in specs.items() if not spec.word_order]),
                             (ORDER_AVERAGE if not suffix else f"order{suffix}_avg",
                              [n for n, spec in specs.items() if spec.word_order])):
        keys = [headline(n, specs[n]) + suffix for n in members]
        if keys and all(k in scores for k in keys):
            out[average] = float(np.mean([scores[k] for k in keys]))
    return out


def fine_tune_all(config, encoder_config, encoder_state: dict, tasks: dict[str, FineTuneDataModule], seed: int,
                  hardware, finished_run: Callable[[str, int], Path]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Fine-tune a copy of the encoder on each task with `finetune.seeds` seeds, on `hardware` (the runner's
    Hardware: its `trainer` builds each run's Trainer). A finished run is recorded at `finished_run(task, k)`,
    so that a row stopped during fine-tuning runs only the runs it had not finished. Returns the scores and
    each run's seconds by task."""
    scores, seconds, ft = {}, {}, config.finetune
    for name, data in tasks.items():
        steps = max(1, math.ceil(len(data.train_items) / ft.batch_size * ft.epochs))
        runs, seconds[name], extras = [], [], {}
        for k in range(ft.seeds):
            record = finished_run(name, k)
            if record.exists():
                done = json.loads(record.read_text())
                runs.append(done["score"])
                seconds[name].append(done["seconds"])
                for key, value in done.get("extra", {}).items():
                    extras.setdefault(key, []).append(value)
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
                                    encoder_state, data.task.spec.kind)
            with hardware.training(f"fine-tuning on {name}"):
                trainer.fit(module, datamodule=data)
            StopRequest.check()  # Ctrl-C / SIGTERM ended the fit: stop the row here
            runs.append(float(trainer.callback_metrics["val/score"]))
            extra = {key: float(trainer.callback_metrics[f"val/{key}"]) for key in EXTRA_SCORES
                     if f"val/{key}" in trainer.callback_metrics}
            for key, value in extra.items():
                extras.setdefault(key, []).append(value)
            seconds[name].append(round(time.time() - started, 1))
            if trainer.is_global_zero:
                write_json_atomically(record, {"score": runs[-1], "seconds": seconds[name][-1]}
                                      | ({"extra": extra} if extra else {}), "finetune-run")
        scores[name] = float(np.median(runs))
        scores |= {f"{name}_{key}": float(np.median(values)) for key, values in extras.items()}
        if len(runs) > 1:
            scores[f"{name}_ft_range"] = max(runs) - min(runs)
            scores |= {f"{name}@ft{k}": value for k, value in enumerate(runs)}
        scores[f"{name}_majority"] = data.task.majority_score()
        scores |= {f"{name}_{key}": value for key, value in data.reference_scores().items()}
    # the tasks this row actually ran
    scores |= task_averages(scores, {name: data.task.spec for name, data in tasks.items()})
    return scores, seconds
