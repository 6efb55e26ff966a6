"""Studies that measure the suite itself, apart from it: the bench (`bench`), the escape study (`plateau`) and
the fine-tuning spread (`finetune_spread`), each with its committed runs in the folder of the same name.
`python -m studies <study> run|report ...` runs any of them; studies/README.md describes each. Nothing here
writes into `docs/`, and the suite (`experiments/`) never imports a study."""
