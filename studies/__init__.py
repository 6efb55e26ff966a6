"""Studies that measure the suite itself, apart from the suite: each is a module with its committed runs in the
folder of the same name beside it.

- `bench` (`make bench`): our training steps against HuggingFace's at the same configuration, preprocessing and
  batch costs; committed runs in `bench/runs/`, described in `bench/README.md`.
- `plateau`, the escape study: when a row leaves the bag-of-words plateau and what moves that point; its runs in
  `plateau/runs/`, its report in `plateau/README.md`.
- `finetune_spread`: how far a task's fine-tuning score moves with the fine-tuning seed alone; its runs in
  `finetune_spread/runs/`, its report in `finetune_spread/README.md`.

One command line runs any of them: `python -m studies <study> run|report ...` (see `studies/__main__.py`).
Nothing here writes into `docs/`; the suite (`experiments/`) never imports a study.
"""
