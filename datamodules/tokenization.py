"""Tokenizers trained with HuggingFace `tokenizers`, and the corpus turned into token ids once.

- Byte-level BPE as in RoBERTa §4.4 / GPT-2 (default): bytes are the base alphabet, so any text encodes
  with no unknown token and decodes back exactly.
- BERT-style WordPiece (character-level sub-words after whitespace/punctuation pre-tokenisation), for
  the text-encoding ablation.

Both put the same five special tokens first, in the same order, so ids 0..4 mean the same thing for
either: <s>/[CLS], <pad>/[PAD], </s>/[SEP], <unk>/[UNK], <mask>/[MASK]. The tokenizer is trained on the
training documents only and cached beside the corpus; the token ids are written once as flat
memory-mapped arrays (tokens, sentence lengths, sentences per document).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from datamodules.corpus import Corpus
from datamodules.errors import require
from datamodules.manifest import damage, seal

KINDS = ("bpe", "wordpiece")
SPECIAL_TOKENS = {
    "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "wordpiece": ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
}
CLS_ID, PAD_ID, SEP_ID, UNK_ID, MASK_ID = range(5)
NUM_SPECIAL = 5
TOKENS_CACHE_VERSION = 2  # 2: caches carry a manifest (datamodules.manifest)


@dataclass(frozen=True)
class TokenizerConfig:
    """Which sub-word vocabulary to train."""

    kind: str = "bpe"  # bpe (RoBERTa, byte-level) | wordpiece (BERT)
    vocab_size: int = 8192  # 50K (bpe) / 30K (wordpiece) at paper scale; a few thousand for small runs
    lowercase: bool = False  # wordpiece only: BERT-uncased style lower-casing
    min_frequency: int = 2

    def validate(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"unknown tokenizer kind {self.kind!r} (valid: {', '.join(KINDS)})")
        if not 300 <= self.vocab_size <= 1_000_000:
            problems.append(f"vocab_size must be in [300, 1000000] (bpe needs 256 byte tokens), got {self.vocab_size}")
        require(problems, "tokenizer config")

    def cache_key(self) -> str:
        fields = dataclasses.asdict(self) | {"version": TOKENS_CACHE_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def train_tokenizer(config: TokenizerConfig, sentences_batches):
    """Train a tokenizer from an iterator over lists of sentences."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = SPECIAL_TOKENS[config.kind]
    if config.kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        # add_prefix_space=False keeps decode(encode(text)) == text; sentences get their space from us.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=config.lowercase, strip_accents=None)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            show_progress=False,
        )
    tokenizer.train_from_iterator(sentences_batches, trainer=trainer)
    assert [tokenizer.token_to_id(t) for t in specials] == list(range(NUM_SPECIAL))
    return tokenizer


def encode_sentences(tokenizer, kind: str, sentences: list[str]) -> list[list[int]]:
    """Token ids of each sentence. Byte-level BPE sees each sentence with the space that preceded it in
    running text, so a sentence tokenizes the same at the start of a block as in its middle."""
    if kind == "bpe":
        sentences = [" " + s for s in sentences]
    return [e.ids for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]


@dataclass
class TokenizedSplit:
    """Flat, memory-mapped token ids of one split, with sentence and document boundaries."""

    tokens: np.ndarray  # (total_tokens,) int32, memory-mapped
    sentence_lengths: np.ndarray  # (num_sentences,) int32
    document_sentences: np.ndarray  # (num_documents,) int32: sentences per document

    @property
    def sentence_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sentence_lengths, dtype=np.int64)[:-1]])

    @property
    def sentence_documents(self) -> np.ndarray:
        """The document index of each sentence."""
        return np.repeat(np.arange(len(self.document_sentences)), self.document_sentences)

    def stats(self) -> dict:
        return {
            "documents": int(len(self.document_sentences)),
            "sentences": int(len(self.sentence_lengths)),
            "tokens": int(len(self.tokens)),
        }


@dataclass
class TokenizedCorpus:
    tokenizer: "tokenizers.Tokenizer"  # noqa: F821
    config: TokenizerConfig
    train: TokenizedSplit
    val: TokenizedSplit
    directory: Path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def tokenize_corpus(corpus: Corpus, config: TokenizerConfig) -> TokenizedCorpus:
    """Train (or load) the tokenizer and write (or open) the token arrays; both cached beside the corpus."""
    from tokenizers import Tokenizer

    config.validate()
    directory = corpus.directory / f"tokens-{config.kind}-{config.cache_key()}"
    with FileLock(f"{directory}.lock"):  # two sweeps starting together build it once
        problem = damage(directory) if (directory / "done").exists() else None
        if problem:
            print(f"warning: the token cache {directory} is damaged ({problem}); rebuilding it")
        if problem or not (directory / "done").exists():
            staging = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            batches = (batch["sentences"] for batch in corpus.train.iter(batch_size=64))
            tokenizer = train_tokenizer(config, (s for doc_batch in batches for s in doc_batch))
            tokenizer.save(str(staging / "tokenizer.json"))
            for name, split in (("train", corpus.train), ("val", corpus.val)):
                _write_split(tokenizer, config.kind, split, staging / name)
            seal(staging)
            (staging / "done").touch()
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
    return TokenizedCorpus(
        tokenizer=Tokenizer.from_file(str(directory / "tokenizer.json")),
        config=config,
        train=_open_split(directory / "train"),
        val=_open_split(directory / "val"),
        directory=directory,
    )


def _write_split(tokenizer, kind: str, documents, directory: Path, batch_size: int = 256) -> None:
    """Stream documents through the tokenizer into growing flat files: memory stays bounded by one batch."""
    directory.mkdir(parents=True)
    with open(directory / "tokens.bin", "wb") as tokens, open(directory / "sentence_lengths.bin", "wb") as lengths, \
            open(directory / "document_sentences.bin", "wb") as doc_sizes:
        for batch in documents.iter(batch_size=batch_size):
            sentences = [s for doc in batch["sentences"] for s in doc]
            ids = encode_sentences(tokenizer, kind, sentences)
            sentence_lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
            if ids:
                tokens.write(np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]).tobytes())
            lengths.write(sentence_lengths.tobytes())
            doc_sizes.write(np.array([len(doc) for doc in batch["sentences"]], dtype=np.int32).tobytes())


def _open_split(directory: Path) -> TokenizedSplit:
    def mapped(name: str) -> np.ndarray:
        path = directory / name
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.int32)
        return np.memmap(path, dtype=np.int32, mode="r")

    return TokenizedSplit(
        tokens=mapped("tokens.bin"),
        sentence_lengths=np.array(mapped("sentence_lengths.bin")),
        document_sentences=np.array(mapped("document_sentences.bin")),
    )
