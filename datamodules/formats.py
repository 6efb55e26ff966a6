"""RoBERTa's four input formats (Liu et al. 2019, §4.2, Table 2) as cheap views over the cached tokens.

- SEGMENT-PAIR+NSP: BERT's input. Each document is cut into chunks of whole sentences that fill the
  block; each epoch a chunk is split at a random sentence boundary into segment A and, half of the time,
  the rest of the chunk as B (a true continuation), otherwise a span of the same length from another
  document, so that the sequence length says nothing about the label.
- SENTENCE-PAIR+NSP: A is one natural sentence; B is the next sentence of the same document or, half of
  the time, a sentence of another document. Inputs are short, so token-budget batches hold more of them.
- FULL-SENTENCES: contiguous full sentences packed up to the block size; a block may cross a document
  boundary, with a separator token between documents. No NSP.
- DOC-SENTENCES: the same, but a block never crosses a document boundary, so blocks at the end of a
  document are short (and token-budget batches hold more of them). No NSP.

Every example is a pair of contiguous token spans in the flat token array (B empty without NSP):
`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`. A sentence longer than a block is cut into block-sized
pieces (so nothing is dropped), and a pair longer than the block is truncated longer-side first, as BERT does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.errors import UsageError
from datamodules.tokenization import CLS_ID, SEP_ID, TokenizedSplit

FORMATS = ("segment-pair", "sentence-pair", "full-sentences", "doc-sentences")
NSP_FORMATS = ("segment-pair", "sentence-pair")
NO_NSP_LABEL = -1


@dataclass
class Examples:
    """One epoch's examples: span A, span B (length 0 when absent), NSP label, separators inside A."""

    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    nsp_label: np.ndarray  # 1 = B follows A (IsNext), 0 = B from another document, -1 = no NSP

    def __len__(self) -> int:
        return len(self.a_start)


class InputFormat:
    """Builds the examples of one format over one tokenized split; `examples(epoch)` re-draws NSP pairs."""

    def __init__(self, name: str, split: TokenizedSplit, block_size: int, seed: int):
        if name not in FORMATS:
            raise UsageError(f"unknown input format {name!r} (valid: {', '.join(FORMATS)})")
        self.name, self.split, self.block_size, self.seed = name, split, block_size, seed
        self.has_nsp = name in NSP_FORMATS
        # [CLS] A [SEP] (B [SEP]): room left for tokens
        self.capacity = block_size - (3 if self.has_nsp else 2)
        if self.capacity < 4:
            raise UsageError(f"block_size {block_size} is too small to hold an example; use at least 16")
        if split.stats()["tokens"] == 0:
            raise UsageError("the tokenized corpus is empty: no sentences survived segmentation")
        self._pieces()
        self.doc_token_starts = np.concatenate([[0], np.cumsum(self._doc_token_counts())])
        if name in ("full-sentences", "doc-sentences"):
            self._pack(cross_documents=name == "full-sentences")
        elif name == "segment-pair":
            self._chunk_documents()
        else:
            self._sentence_pairs()

    # -- shared structure ---------------------------------------------------------------------------

    def _doc_token_counts(self) -> np.ndarray:
        return np.add.reduceat(self.split.sentence_lengths.astype(np.int64), self._doc_first_sentence()) \
            if len(self.split.sentence_lengths) else np.zeros(0, np.int64)

    def _doc_first_sentence(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.split.document_sentences)[:-1]]).astype(np.int64)

    def _pieces(self) -> None:
        """Sentences as (start, length, document), with sentences longer than a block cut into pieces."""
        lengths = self.split.sentence_lengths.astype(np.int64)
        starts = self.split.sentence_starts
        docs = self.split.sentence_documents
        keep = lengths > 0
        lengths, starts, docs = lengths[keep], starts[keep], docs[keep]
        cap = self.capacity if not self.has_nsp else max(1, self.capacity // 2)
        counts = -(-lengths // cap)
        first = np.repeat(starts, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        self.piece_start = first + offset * cap
        self.piece_len = np.minimum(np.repeat(lengths, counts) - offset * cap, cap)
        self.piece_doc = np.repeat(docs, counts)
        self.num_documents = len(self.split.document_sentences)

    def _require_pairs(self, usable: int) -> None:
        if self.num_documents < 2:
            raise UsageError(f"{self.name} (NSP) needs at least 2 documents to draw negatives; this split has "
                             f"{self.num_documents}. Use a larger corpus or a format without NSP")
        if usable == 0:
            raise UsageError(f"{self.name} (NSP) needs documents of at least two sentences, and every document "
                             f"here has one; use full-sentences / doc-sentences, or a corpus with real documents")

    # -- FULL-SENTENCES / DOC-SENTENCES -------------------------------------------------------------

    def _pack(self, cross_documents: bool) -> None:
        """Greedy packing of whole sentences into blocks (fairseq's `complete` / `complete_doc` modes)."""
        starts, lengths, separators = [], [], []
        block_start, block_len, block_seps, block_doc = None, 0, 0, -1
        for start, length, doc in zip(self.piece_start.tolist(), self.piece_len.tolist(), self.piece_doc.tolist()):
            new_doc = block_start is not None and doc != block_doc
            extra = length + (1 if new_doc else 0)  # the separator between documents
            if block_start is not None and (block_len + block_seps + extra > self.capacity or (new_doc and not cross_documents)):
                starts.append(block_start), lengths.append(block_len), separators.append(block_seps)
                block_start, block_len, block_seps, new_doc = None, 0, 0, False
            if block_start is None:
                block_start, block_len, block_seps = start, length, 0
            else:
                block_len += length
                block_seps += int(new_doc)
            block_doc = doc
        if block_start is not None:
            starts.append(block_start), lengths.append(block_len), separators.append(block_seps)
        # a block's span covers its tokens; separators are inserted when the block is built
        self._blocks = (np.array(starts, np.int64), np.array(lengths, np.int64), np.array(separators, np.int64))

    # -- SEGMENT-PAIR+NSP ---------------------------------------------------------------------------

    def _chunk_documents(self) -> None:
        """Cut each document into chunks of whole sentences (pieces) that fill the block, as BERT does."""
        chunk_first, chunk_count = [], []
        first, count, tokens, doc = 0, 0, 0, -1
        for i, (length, d) in enumerate(zip(self.piece_len.tolist(), self.piece_doc.tolist())):
            if count and (d != doc or tokens + length > self.capacity):
                chunk_first.append(first), chunk_count.append(count)
                count, tokens = 0, 0
            if count == 0:
                first = i
            count, tokens, doc = count + 1, tokens + length, d
        if count:
            chunk_first.append(first), chunk_count.append(count)
        self.chunk_first = np.array(chunk_first, np.int64)
        self.chunk_count = np.array(chunk_count, np.int64)
        self._require_pairs(int((self.chunk_count >= 2).sum()))

    # -- SENTENCE-PAIR+NSP --------------------------------------------------------------------------

    def _sentence_pairs(self) -> None:
        """Every sentence (piece) with a successor in its document can be an A."""
        has_next = np.zeros(len(self.piece_doc), bool)
        has_next[:-1] = self.piece_doc[:-1] == self.piece_doc[1:]
        self.pair_first = np.flatnonzero(has_next)
        self._require_pairs(len(self.pair_first))

    # -- one epoch ----------------------------------------------------------------------------------

    def examples(self, epoch: int) -> Examples:
        if self.name in ("full-sentences", "doc-sentences"):
            starts, lengths, _ = self._blocks
            none = np.zeros(len(starts), np.int64)
            return Examples(starts, lengths, none, none, np.full(len(starts), NO_NSP_LABEL, np.int64))
        rng = np.random.default_rng([self.seed, epoch, 7])  # the NSP draws: a function of (seed, epoch)
        if self.name == "segment-pair":
            first, count = self.chunk_first, self.chunk_count
            a_pieces = np.where(count >= 2, rng.integers(1, np.maximum(count, 2)), 1)
            a_start = self.piece_start[first]
            a_end_piece = first + a_pieces
            a_len = self.piece_start[a_end_piece - 1] + self.piece_len[a_end_piece - 1] - a_start
            last = first + count - 1
            true_b_start = np.where(count >= 2, self.piece_start[np.minimum(a_end_piece, last)], 0)
            true_b_len = np.where(count >= 2, self.piece_start[last] + self.piece_len[last] - true_b_start, 0)
            forced_random = count < 2
        else:
            first = self.pair_first
            a_start, a_len = self.piece_start[first], self.piece_len[first]
            true_b_start, true_b_len = self.piece_start[first + 1], self.piece_len[first + 1]
            forced_random = np.zeros(len(first), bool)
        is_random = self._nsp_coin(forced_random, rng)
        # B from another document, starting at a sentence. Its length must not give the label away (RoBERTa
        # Table 2's NSP is meant to be solved from content): a random B is exactly as long as the true B
        # of the same split would be (for SENTENCE-PAIR the natural length of the sentence drawn), and
        # starts where the other document still has that many tokens. A chunk of one piece has no true B;
        # its random B makes the pair as long as a true pair drawn from the other chunks.
        doc = self.piece_doc[first]
        other = rng.integers(0, self.num_documents - 1, size=len(first))
        other = other + (other >= doc)
        if self.name == "sentence-pair":
            sentence_in_other = self._random_piece_of(other, rng)
            random_b_start, random_b_len = self.piece_start[sentence_in_other], self.piece_len[sentence_in_other]
        else:
            wanted = true_b_len.copy()
            if forced_random.any() and (~forced_random).any():
                drawn = rng.choice(np.flatnonzero(~forced_random), size=int(forced_random.sum()))
                wanted[forced_random] = a_len[drawn] + true_b_len[drawn] - a_len[forced_random]
            wanted = np.minimum(np.maximum(wanted, 1), np.maximum(self.capacity - a_len, 1))
            random_b_start = self.piece_start[self._random_piece_of(other, rng, room_for=wanted)]
            random_b_len = np.minimum(wanted, self.doc_token_starts[other + 1] - random_b_start)
        b_start = np.where(is_random, random_b_start, true_b_start)
        b_len = np.where(is_random, random_b_len, true_b_len)
        a_len, b_len = _truncate_pair(a_len, b_len, self.capacity)
        return Examples(a_start, a_len, b_start, b_len, np.where(is_random, 0, 1).astype(np.int64))

    def _nsp_coin(self, forced_random: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """NotNext with the probability that makes the labels 50/50 overall, counting the examples that
        have no true continuation and must be NotNext (BERT's coin is 0.5 before those)."""
        forced = int(forced_random.sum())
        free = len(forced_random) - forced
        p_random = min(1.0, max(0.0, (0.5 * len(forced_random) - forced) / free)) if free else 1.0
        return (rng.random(len(forced_random)) < p_random) | forced_random

    def _random_piece_of(self, documents: np.ndarray, rng: np.random.Generator,
                         room_for: np.ndarray | None = None) -> np.ndarray:
        """A uniformly drawn piece of each document; with `room_for`, among the pieces followed by at least
        that many tokens of their document (the first piece when none is)."""
        doc_first = np.searchsorted(self.piece_doc, documents, side="left")
        doc_end = np.searchsorted(self.piece_doc, documents, side="right")
        if room_for is not None:
            latest_start = self.doc_token_starts[documents + 1] - room_for
            last_ok = np.searchsorted(self.piece_start, latest_start, side="right")  # pieces starting <= latest
            doc_end = np.clip(last_ok, doc_first + 1, doc_end)
        return doc_first + (rng.random(len(documents)) * (doc_end - doc_first)).astype(np.int64)

    def separators(self, epoch_examples: Examples) -> np.ndarray:
        """How many document separators each example's A span needs (FULL-SENTENCES only)."""
        if self.name != "full-sentences":
            return np.zeros(len(epoch_examples), np.int64)
        return self._blocks[2]

    def sequence_lengths(self, epoch_examples: Examples) -> np.ndarray:
        specials = 2 + (epoch_examples.b_len > 0)
        return epoch_examples.a_len + epoch_examples.b_len + specials + self.separators(epoch_examples)

    def build(self, epoch_examples: Examples, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and segment ids of one example: [CLS] A [SEP] (B [SEP])."""
        tokens = self.split.tokens
        a_start, a_len = int(epoch_examples.a_start[index]), int(epoch_examples.a_len[index])
        a = np.asarray(tokens[a_start:a_start + a_len])
        if self.name == "full-sentences":
            # a separator before every document that starts inside the block
            lo, hi = np.searchsorted(self.doc_token_starts, [a_start + 1, a_start + a_len], side="left")
            cuts = self.doc_token_starts[lo:hi] - a_start
            if len(cuts):
                a = np.insert(a, cuts, SEP_ID)
        pieces = [[CLS_ID], a, [SEP_ID]]
        b_len = int(epoch_examples.b_len[index])
        if b_len:
            b_start = int(epoch_examples.b_start[index])
            pieces += [np.asarray(tokens[b_start:b_start + b_len]), [SEP_ID]]
        ids = np.concatenate(pieces).astype(np.int64)
        segments = np.zeros(len(ids), np.int64)
        if b_len:
            segments[len(a) + 2:] = 1
        return ids, segments


def _truncate_pair(a_len: np.ndarray, b_len: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's truncate_seq_pair, vectorised: shorten the longer segment until the pair fits."""
    over = np.maximum(a_len + b_len - capacity, 0)
    a_longer = a_len >= b_len
    hi, lo = np.where(a_longer, a_len, b_len), np.where(a_longer, b_len, a_len)
    fits_by_hi = hi - over >= lo
    new_hi = np.where(fits_by_hi, hi - over, capacity - capacity // 2)
    new_lo = np.where(fits_by_hi, lo, capacity // 2)
    new_hi, new_lo = np.where(over > 0, new_hi, hi), np.where(over > 0, new_lo, lo)
    return np.where(a_longer, new_hi, new_lo), np.where(a_longer, new_lo, new_hi)
