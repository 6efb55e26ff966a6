"""The pretraining LightningDataModule: corpus -> tokens -> input format -> token-budget batches, masked.

Batches hold a target number of (padded) tokens rather than a fixed number of sequences, so short
inputs (SENTENCE-PAIR, the ends of documents in DOC-SENTENCES) get more sequences per batch, as RoBERTa
does (§4.2). Every row, whatever its training format, is validated on the same held-out blocks:
DOC-SENTENCES over the held-out documents, masked once with a fixed seed. Every row masks the same
held-out positions; what fills them is the replacement mix the row trains with (BERT's 80/10/10 for MLM,
ELECTRA's 85/15 or DeBERTa-RTD's 100% [MASK] for a generator), so each model is evaluated on the
inputs it learned from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.corpus import DEFAULT_CACHE_DIR, CorpusConfig, load_corpus
from datamodules.errors import require
from datamodules.formats import FORMATS, NSP_FORMATS, InputFormat
from datamodules.masking import IGNORE_INDEX, MaskingConfig, example_rng, mask_tokens
from datamodules.tokenization import PAD_ID, TokenizedCorpus, TokenizerConfig, tokenize_corpus

HELDOUT_FORMAT = "doc-sentences"
HELDOUT_SEED = 12345
HELDOUT_MASKING = MaskingConfig()  # the selection (15%, fixed seed); the mix follows the row, see heldout_masking


def heldout_masking(training: MaskingConfig) -> MaskingConfig:
    """The shared held-out selection with the row's own replacement mix. mask_tokens draws the selected
    positions before the replacement actions, so every mix masks exactly the same positions."""
    return dataclasses.replace(HELDOUT_MASKING, replacement=training.replacement)


@dataclass(frozen=True)
class PretrainingDataConfig:
    """Everything that decides which masked batches a pretraining run sees (except the seed)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    input_format: str = "full-sentences"  # RoBERTa's final choice; see datamodules.formats
    block_size: int = 128  # maximum sequence length, special tokens included (512 at paper scale)
    tokens_per_batch: int = 4096  # padded tokens per optimizer step (batch 32 x 128)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    max_heldout_blocks: int | None = 256  # size of the shared held-out set (None: every held-out block)
    # departure (BERT trained 90% of its steps at 128 and then 512; Li et al. 2022's sequence-length warm-up):
    # the first `warmup_block_epochs` passes over the training text use blocks of `warmup_block_size` tokens,
    # the rest `block_size`. Batches keep their token budget, so short blocks mean more of them per batch.
    warmup_block_size: int | None = None
    warmup_block_epochs: int = 0

    def validate(self, max_positions: int | None = None) -> None:
        problems = []
        if self.input_format not in FORMATS:
            problems.append(f"unknown input format {self.input_format!r} (valid: {', '.join(FORMATS)})")
        if self.block_size < 16:
            problems.append(f"block_size must be >= 16, got {self.block_size}")
        if max_positions is not None and self.block_size > max_positions:
            problems.append(f"block_size {self.block_size} is longer than the model accepts "
                            f"(max_positions {max_positions}); lower block_size or raise max_positions")
        if self.warmup_block_epochs and not (self.warmup_block_size and 16 <= self.warmup_block_size < self.block_size):
            problems.append(f"warmup_block_epochs {self.warmup_block_epochs} needs a warmup_block_size between 16 and "
                            f"block_size ({self.block_size}), got {self.warmup_block_size}")
        if self.warmup_block_epochs < 0:
            problems.append("warmup_block_epochs must be >= 0")
        if self.tokens_per_batch < self.block_size:
            problems.append(f"tokens_per_batch ({self.tokens_per_batch}) must hold at least one block ({self.block_size})")
        require(problems, "data config")
        self.corpus.validate()
        self.tokenizer.validate()
        self.masking.validate()

    @property
    def has_nsp(self) -> bool:
        return self.input_format in NSP_FORMATS


class MaskedExamples(Dataset):
    """The examples of one format and split; item i of epoch e is masked with rng(seed, e, i). With a
    sequence-length warm-up, epochs before `warmup_epochs` come from `warmup_format` (shorter blocks)."""

    def __init__(self, fmt: InputFormat, masking: MaskingConfig, vocab_size: int, seed: int,
                 warmup_format: InputFormat | None = None, warmup_epochs: int = 0):
        self.main_format, self.masking, self.vocab_size, self.seed = fmt, masking, vocab_size, seed
        self.warmup_format, self.warmup_epochs = warmup_format, warmup_epochs
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.format = self.warmup_format if epoch < self.warmup_epochs else self.main_format
        # static masking fixes both the mask and the NSP pairs: BERT drew them once, in preprocessing
        self.data_epoch = self.masking.mask_epoch(epoch)
        self.examples = self.format.examples(self.data_epoch)
        self.lengths = self.format.sequence_lengths(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ids, segments = self.format.build(self.examples, index)
        rng = example_rng(self.seed, self.data_epoch, index)
        inputs, labels = mask_tokens(ids, self.masking, self.vocab_size, rng)
        return {"input_ids": inputs, "labels": labels, "token_type_ids": segments,
                "nsp_label": int(self.examples.nsp_label[index])}


class TokenBudgetBatches(torch.utils.data.Sampler):
    """Batches of examples whose padded size stays within `tokens_per_batch`; each rank takes its share.

    The batches are a function of (seed, epoch). Under DDP every rank computes the same batches and takes
    every world_size-th one, cut to the same count so that no rank waits for a batch that never comes.
    A run resumed in the middle of an epoch skips the batches it already trained on (`resume_at`), so it
    sees the same data in the same order as a run that was never stopped.
    """

    def __init__(self, dataset: MaskedExamples, tokens_per_batch: int, seed: int, shuffle: bool, pad_multiple: int = 8):
        self.dataset, self.tokens_per_batch, self.seed, self.shuffle = dataset, tokens_per_batch, seed, shuffle
        self.pad_multiple = pad_multiple
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.skip = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _all_batches(self) -> list[list[int]]:
        """fairseq's batch_by_size: group examples of similar length (shuffled within a length), so that
        padding is small, then shuffle the order of the batches."""
        lengths = self.dataset.lengths
        rng = np.random.default_rng([self.seed, self.epoch, 11])
        order = rng.permutation(len(lengths)) if self.shuffle else np.arange(len(lengths))
        order = order[np.argsort(lengths[order], kind="stable")]
        batches, current, longest = [], [], 0
        for index, length in zip(order.tolist(), lengths[order].tolist()):
            padded = -(-max(longest, length) // self.pad_multiple) * self.pad_multiple
            if current and padded * (len(current) + 1) > self.tokens_per_batch:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _my_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            per_rank = len(batches) // world
            batches = batches[rank::world][:per_rank]
        return batches

    def __iter__(self):
        batches = self._my_batches()
        if self.skip is not None and self.skip[0] == self.epoch:
            batches = batches[self.skip[1]:]  # the length stays the epoch's: the Trainer counts from the skip
        self.skip = None
        return iter(batches)

    def __len__(self) -> int:
        return len(self._my_batches())


def collate(examples: list[dict], pad_multiple: int = 8) -> dict:
    """Pad to a multiple of 8 and list the masked positions, so heads gather them without a host sync."""
    longest = max(len(e["input_ids"]) for e in examples)
    length = -(-longest // pad_multiple) * pad_multiple
    batch_size = len(examples)
    input_ids = np.full((batch_size, length), PAD_ID, np.int64)
    labels = np.full((batch_size, length), IGNORE_INDEX, np.int64)
    segments = np.zeros((batch_size, length), np.int64)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = example["input_ids"]
        labels[row, :n] = example["labels"]
        segments[row, :n] = example["token_type_ids"]
    flat_labels = labels.reshape(-1)
    positions = np.flatnonzero(flat_labels != IGNORE_INDEX)
    attention_mask = input_ids != PAD_ID
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "token_type_ids": torch.from_numpy(segments),
        "labels": torch.from_numpy(labels),
        "mlm_positions": torch.from_numpy(positions),  # flat indices into (batch * length)
        "mlm_labels": torch.from_numpy(flat_labels[positions]),
        "nsp_labels": torch.tensor([e["nsp_label"] for e in examples]),
        "num_tokens": int(attention_mask.sum()),
    }


class PretrainingDataModule(L.LightningDataModule):
    """Prepares the corpus once (rank 0), then serves masked token-budget batches in the chosen format."""

    def __init__(self, config: PretrainingDataConfig, seed: int, num_workers: int = 0,
                 cache_dir: Path = DEFAULT_CACHE_DIR):
        super().__init__()
        self.config, self.seed, self.num_workers, self.cache_dir = config, seed, num_workers, Path(cache_dir)
        self.tokenized: TokenizedCorpus | None = None
        self.resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def prepare_data(self) -> None:
        self.load()

    def load(self) -> TokenizedCorpus:
        """Build (first time) or open (afterwards) the corpus and token caches."""
        if self.tokenized is None:
            corpus = load_corpus(self.config.corpus, self.cache_dir)
            self.tokenized = tokenize_corpus(corpus, self.config.tokenizer)
        return self.tokenized

    @property
    def vocab_size(self) -> int:
        return self.load().vocab_size

    def setup(self, stage: str | None = None) -> None:
        tokenized = self.load()
        config = self.config
        self.train_format = InputFormat(config.input_format, tokenized.train, config.block_size, self.seed)
        warmup_format = InputFormat(config.input_format, tokenized.train, config.warmup_block_size, self.seed) \
            if config.warmup_block_epochs else None
        self.train_set = MaskedExamples(self.train_format, config.masking, tokenized.vocab_size, self.seed,
                                        warmup_format, config.warmup_block_epochs)
        heldout_format = InputFormat(HELDOUT_FORMAT, tokenized.val, config.block_size, HELDOUT_SEED)
        masking = heldout_masking(config.masking)
        self.heldout_set = MaskedExamples(heldout_format, masking, tokenized.vocab_size, HELDOUT_SEED)
        self.nsp_val_set = None
        if config.has_nsp and len(tokenized.val.document_sentences) >= 2:
            nsp_format = InputFormat(config.input_format, tokenized.val, config.block_size, HELDOUT_SEED)
            self.nsp_val_set = MaskedExamples(nsp_format, masking, tokenized.vocab_size, HELDOUT_SEED)

    def train_dataloader(self) -> DataLoader:
        sampler = TokenBudgetBatches(self.train_set, self.config.tokens_per_batch, self.seed, shuffle=True)
        if self.resume_position is not None:
            sampler.resume_at(*self.resume_position)
            self.resume_position = None
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=False)

    def _fixed_loader(self, dataset: MaskedExamples, limit: int | None) -> DataLoader:
        indices = list(range(len(dataset)))[:limit]
        subset = torch.utils.data.Subset(dataset, indices)
        batch_size = max(1, self.config.tokens_per_batch // self.config.block_size)
        return DataLoader(subset, batch_size=batch_size, collate_fn=collate, num_workers=0)

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [self._fixed_loader(self.heldout_set, self.config.max_heldout_blocks)]
        if self.nsp_val_set is not None:
            loaders.append(self._fixed_loader(self.nsp_val_set, self.config.max_heldout_blocks))
        return loaders

    # Lightning stores these in every checkpoint and hands them back on resume (before train_dataloader)
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.resume_position = (state["epoch"], state["batches_done"])

    def hparams_for_logging(self) -> dict:
        return dataclasses.asdict(self.config) | {"seed": self.seed}
