"""Shared fixtures: a real tokenizer trained in the session on real text, and a small cache directory."""
import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ:
    # Each test worker (pytest-xdist, one per core) and the runs it starts get one thread: torch's default of one
    # thread per core in every worker would oversubscribe the cores. Set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items):
    """Start the end-to-end tests (marked slow, with about how long each takes alone) longest first: a 4-minute
    test picked up last would run alone at the end while the other workers idle. Tests of one xdist_group
    (they share an expensive module fixture) stay together, or the fixture would be built again for each."""
    def unit(item):
        group = item.get_closest_marker("xdist_group")
        return group.args[0] if group else item.nodeid

    def seconds(item):
        slow = item.get_closest_marker("slow")
        return slow.kwargs["seconds"] if slow else 0

    unit_seconds, first_position = {}, {}
    for position, item in enumerate(items):
        unit_seconds[unit(item)] = unit_seconds.get(unit(item), 0) + seconds(item)
        first_position.setdefault(unit(item), position)
    items.sort(key=lambda item: (-unit_seconds[unit(item)], first_position[unit(item)]))  # stable within a unit


@pytest.fixture(scope="session")
def news_sentences():
    """A few hundred real sentences of the offline news corpus."""
    from datamodules.corpus import CorpusConfig, iter_documents, segment

    documents = list(iter_documents(CorpusConfig(max_documents=60)))
    return [s for doc in documents for s in segment(doc, 100_000)]


@pytest.fixture(scope="session")
def tiny_tokenizer(news_sentences):
    from datamodules.tokenization import TokenizerConfig, train_tokenizer

    return train_tokenizer(TokenizerConfig(vocab_size=600), iter(news_sentences))


def refused_in_process(*args: str) -> tuple[int, str]:
    """`python -m experiments ARGS` for a request that must be refused before anything trains, run in this
    process (a subprocess spends ~10 s importing torch for a check that takes milliseconds): (exit code, stderr).
    What the message looks like in a real subprocess is tested once (test_bad_requests_... in a subprocess)."""
    import contextlib
    import io

    from experiments.__main__ import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args))
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1, stderr.getvalue()
    return 0, stderr.getvalue()


def pytest_terminal_summary(terminalreporter):
    """The CI log names the machine's path: the CPU, the precision a run here picks, and the ones forced
    (printed with -q too, which hides the report header)."""
    import torch

    from experiments.running.hardware import PRECISIONS, default_precision, machine_name

    terminalreporter.write_line(f"machine: {machine_name()}; torch {torch.__version__}, CPU capability "
                                f"{torch.backends.cpu.get_cpu_capability()}; a run here picks {default_precision()}")
    terminalreporter.write_line(f"precisions tested on every machine (forced, tests/test_precision.py): "
                                f"{', '.join(PRECISIONS)} (16-mixed through its plugin on the CPU)")
