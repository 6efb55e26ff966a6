"""Batches of downstream examples for fine-tuning and probing: encoding (single sentences, pairs, words with
their first sub-token labelled), collation, batches grouped by length (fairseq's batch_by_size), and the
FineTuneDataModule that serves one task (datamodules.downstream) to the Trainer."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.downstream import SPLIT_SEED, TaskData
from datamodules.tokenization import CLS_ID, PAD_ID, SEP_ID, UNK_ID, encode_sentences


# ----------------------------------------------------------------------------------------- batching


def truncated_lengths(lengths: list[int], budget: int) -> list[int]:
    """Segment lengths after BERT's truncation, which takes one token at a time off the end of the longest
    segment (the first of equal ones) until the total fits the budget; computed a level at a time (the tied
    longest segments lose tokens in turn down to the next length), not a token at a time: a 500-token article
    cut to 64 took 440 passes over its segments per example."""
    if budget < 0:
        raise ValueError(f"no room for the segments: budget {budget}")  # the config check asks for max_length >= 4
    lengths = list(lengths)
    excess = sum(lengths) - budget
    while excess > 0:
        top = max(lengths)
        tied = [i for i, n in enumerate(lengths) if n == top]
        below = max((n for n in lengths if n < top), default=0)
        taken = min(excess, (top - below) * len(tied))
        each, first_ones = divmod(taken, len(tied))
        for rank, i in enumerate(tied):
            lengths[i] -= each + (rank < first_ones)
        excess -= taken
    return lengths


def encode_examples(tokenizer, kind: str, texts: list[tuple[str, ...]], max_length: int) -> list[np.ndarray]:
    """[CLS] A [SEP] (B [SEP]) token ids and segment ids, truncating the longer segment first (BERT)."""
    columns = list(zip(*texts))
    encoded = [encode_sentences(tokenizer, kind, [str(t) for t in column]) for column in columns]
    out = []
    for parts in zip(*encoded):
        kept = truncated_lengths([len(p) for p in parts], max_length - 1 - len(parts))
        parts = [list(p[:n]) for p, n in zip(parts, kept)]
        ids, segments = [CLS_ID], [0]
        for segment, part in enumerate(parts):
            ids += part + [SEP_ID]
            segments += [segment] * (len(part) + 1)
        out.append(np.array([ids, segments], dtype=np.int64))
    return out


def collate_classification(items: list[tuple[np.ndarray, float]]) -> dict:
    length = -(-max(x.shape[1] for x, _ in items) // 8) * 8
    ids = torch.full((len(items), length), PAD_ID, dtype=torch.long)
    segments = torch.zeros((len(items), length), dtype=torch.long)
    for row, (x, _) in enumerate(items):
        ids[row, : x.shape[1]] = torch.from_numpy(x[0])
        segments[row, : x.shape[1]] = torch.from_numpy(x[1])
    labels = torch.tensor(np.array([y for _, y in items]))
    mask = ids != PAD_ID
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments, "labels": labels,
            "num_tokens": int(mask.sum())}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Shuffled batches of examples of similar length (fairseq's batch_by_size, HF's group_by_length):
    the examples are shuffled, cut into pools of 50 batches, each pool sorted by length and cut into
    batches, and the batches shuffled. Short sentences stop paying for a long one's padding (half the
    tokens of a random batch of movie reviews were padding); each epoch draws a new order from `seed`.
    Under DDP every rank draws the same batches and takes every world_size-th one (equal counts)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool: int = 50):
        self.lengths, self.batch_size, self.pool = np.asarray(lengths), batch_size, pool * batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        order = self.rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        batches = [batches[i] for i in self.rng.permutation(len(batches))]
        rank, world = _rank_and_world()
        return iter(batches[rank::world][:len(batches) // world] if world > 1 else batches)

    def __len__(self) -> int:
        batches = -(-len(self.lengths) // self.batch_size)
        return batches // _rank_and_world()[1]


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def encode_words(tokenizer, kind: str, sentences: list[tuple[str, ...]], labels, max_length: int,
                 ambiguous: frozenset[str] = frozenset()) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[list[str]]]:
    """A tagging example per sentence: [CLS] the words' tokens [SEP] (ids, segments) and its targets (2, L): each
    word's label at its first sub-token and -100 at every other position (BERT §4.3), and 1 where that word is in
    `ambiguous`. Each word is encoded as in running text (a byte-level BPE word with its leading space), so the
    tokens are the sentence's own. Words that do not fit `max_length` are left unlabelled; also returns the words
    labelled in each example."""
    prefix = " " if kind == "bpe" else ""
    flat = [prefix + word for sentence in sentences for word in sentence]
    pieces = iter([e.ids or [UNK_ID] for e in tokenizer.encode_batch(flat, add_special_tokens=False)] if flat else [])
    items, scored = [], []
    for sentence, tags in zip(sentences, labels):
        ids, targets, flags, words, full = [CLS_ID], [-100], [0], [], False
        for word, tag in zip(sentence, tags):
            piece = next(pieces)  # taken even past the cut: the next sentence's pieces follow
            full = full or len(ids) + len(piece) > max_length - 1
            if full:
                continue
            ids += piece
            targets += [int(tag)] + [-100] * (len(piece) - 1)
            flags += [int(word in ambiguous)] + [0] * (len(piece) - 1)
            words.append(word)
        ids.append(SEP_ID), targets.append(-100), flags.append(0)
        x = np.array([ids, np.zeros(len(ids), np.int64)], dtype=np.int64)
        items.append((x, np.array([targets, flags], dtype=np.int64)))
        scored.append(words)
    return items, scored


def collate_tokens(items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """A tagging batch: as `collate_classification`, with labels (B, L) padded with -100 and `ambiguous` (B, L)."""
    batch = collate_classification([(x, 0) for x, _ in items])
    labels = torch.full(batch["input_ids"].shape, -100, dtype=torch.long)
    ambiguous = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for row, (_, y) in enumerate(items):
        labels[row, : y.shape[1]] = torch.from_numpy(y[0])
        ambiguous[row, : y.shape[1]] = torch.from_numpy(y[1]).bool()
    return batch | {"labels": labels, "ambiguous": ambiguous}


def capped(count: int, cap: int | None, groups: np.ndarray | None = None) -> np.ndarray:
    """Which of `count` examples a cap keeps (all if it does not bind): a fixed random subset, in order; with
    `groups`, whole groups only (in a fixed random order of groups, while they fit)."""
    if cap is None or count <= cap:
        return np.arange(count)
    rng = np.random.default_rng(SPLIT_SEED)
    if groups is None:
        return np.sort(rng.permutation(count)[:cap])
    names, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    keep = set(names[order[np.cumsum(sizes[order]) <= cap]].tolist())
    return np.flatnonzero(np.isin(groups, list(keep)))


def _whole_groups(items: list, texts: list[tuple[str, ...]], groups: np.ndarray, tokenizer, kind: str,
                  max_length: int) -> list:
    """The items of the groups none of whose members `max_length` cuts (bigram shift: a sentence cut before its
    swap would be its shifted copy's twin, one cut across it would hold other tokens than its copy)."""
    lengths = np.array([sum(map(len, parts)) + 1 + len(parts) for parts in
                        zip(*(encode_sentences(tokenizer, kind, list(column)) for column in zip(*texts)))])
    cut = set(groups[lengths > max_length].tolist())
    return [item for item, group in zip(items, groups.tolist()) if group not in cut]


class FineTuneDataModule(L.LightningDataModule):
    def __init__(self, task: TaskData, tokenizer, tokenizer_kind: str, max_length: int, batch_size: int,
                 seed: int, max_train_examples: int | None = None, max_validation_examples: int | None = None,
                 group_by_length: bool = True):
        super().__init__()
        self.task, self.batch_size, self.seed, self.group_by_length = task, batch_size, seed, group_by_length
        spec = task.spec
        splits, kept, caps = [], [], (max_train_examples, max_validation_examples)
        for (texts, labels), cap, groups in zip((task.train, task.validation), caps, task.groups or (None, None)):
            keep = capped(len(texts), cap, groups)
            splits.append(([texts[i] for i in keep], labels[keep]))
            kept.append(keep)
        (train_texts, train_labels), (val_texts, val_labels) = splits
        self.tokens = spec.kind == "tokens"
        self.collate = collate_tokens if self.tokens else collate_classification
        if self.tokens:
            self.train_items, self.train_words = encode_words(tokenizer, tokenizer_kind, train_texts, train_labels,
                                                              max_length, task.ambiguous)
            self.val_items, self.val_words = encode_words(tokenizer, tokenizer_kind, val_texts, val_labels, max_length,
                                                          task.ambiguous)
            return
        self.train_items = list(zip(encode_examples(tokenizer, tokenizer_kind, train_texts, max_length), train_labels))
        self.val_items = list(zip(encode_examples(tokenizer, tokenizer_kind, val_texts, max_length), val_labels))
        if task.groups is not None:  # a group with a cut member is left out: its members' tokens would differ
            self.train_items, self.val_items = (
                _whole_groups(items, texts, groups[keep], tokenizer, tokenizer_kind, max_length)
                for items, texts, groups, keep in zip((self.train_items, self.val_items), (train_texts, val_texts),
                                                      task.groups, kept))

    def reference_scores(self) -> dict[str, float]:
        """What simple taggers score on these examples, beside the task's majority class: the most frequent tag of
        each word in these training sentences (`most_frequent_tag`; a word they lack: the most frequent tag overall),
        on every dev word and on the ambiguous ones (`ambiguous_most_frequent_tag`)."""
        if not self.tokens:
            return {}
        from datamodules.brown import most_frequent_tag, tagging_scores

        def tags(items):
            return [y[0][y[0] != -100].tolist() for _, y in items]

        predicted = most_frequent_tag(self.train_words, tags(self.train_items), self.val_words)
        scores = tagging_scores(self.val_words, tags(self.val_items), predicted, self.task.ambiguous)
        return {"most_frequent_tag": scores["accuracy"], "ambiguous_most_frequent_tag": scores["ambiguous"]}

    def train_dataloader(self):
        if self.group_by_length:
            lengths = np.array([x.shape[1] for x, _ in self.train_items])
            return DataLoader(self.train_items, batch_sampler=LengthGroupedBatches(lengths, self.batch_size, self.seed),
                              collate_fn=self.collate)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_items, batch_size=self.batch_size, shuffle=True, generator=generator,
                          collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader(self.val_items, batch_size=self.batch_size * 2, collate_fn=self.collate)
