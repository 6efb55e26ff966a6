"""Part 1: preprocessing the offline corpus, cold and warm, with peak memory, and the corpus repeated 10x."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from studies.bench.shapes import MODULE, ROOT


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program. (ru_maxrss would also count the
    parent's pages that a forked child held before exec, so it reads the parent's size.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _preprocess_child(cache: str, repeat: int) -> None:
    """Run in a subprocess: build (or open) the corpus and tokens; print seconds and peak RSS."""
    from datamodules.corpus import CorpusConfig, load_corpus
    from datamodules.tokenization import TokenizerConfig, tokenize_corpus

    start = time.perf_counter()
    corpus = load_corpus(CorpusConfig(repeat=repeat), Path(cache))
    tokens = tokenize_corpus(corpus, TokenizerConfig(vocab_size=8192))
    seconds = time.perf_counter() - start
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the segmentation worker processes
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(peak_rss_mb(), workers), "tokens": tokens.train.stats()["tokens"]}))


def preprocess(cache: Path, repeat: int = 1) -> dict:
    done = subprocess.run([sys.executable, "-m", MODULE, "--preprocess-child", str(cache), str(repeat)],
                          capture_output=True, text=True, cwd=ROOT, env=os.environ | {"TOKENIZERS_PARALLELISM": "true"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_preprocessing(include_10x: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cold = preprocess(Path(cache))
        warm = preprocess(Path(cache))
        out = {"cold_s": round(cold["seconds"], 2), "warm_s": round(warm["seconds"], 2),
               "cold_peak_rss_mb": round(cold["peak_rss_mb"]), "tokens": cold["tokens"]}
        if include_10x:
            ten = preprocess(Path(cache), repeat=10)
            out |= {"corpus_10x_s": round(ten["seconds"], 1), "corpus_10x_peak_rss_mb": round(ten["peak_rss_mb"]),
                    "corpus_10x_tokens": ten["tokens"],
                    "peak_rss_growth_10x": round(ten["peak_rss_mb"] / cold["peak_rss_mb"] - 1, 3)}
    return out
