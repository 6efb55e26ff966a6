"""Show what the model will see: decoded examples of an input format, with masking marked, and statistics.

    python -m datamodules.preview --format segment-pair --masking static --examples 3

Segments are shown as [A ...] [B ...] with the NSP label; a masked position shows as {original->input}.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from datamodules.corpus import CorpusConfig
from datamodules.errors import exit_on_usage_error
from datamodules.formats import FORMATS
from datamodules.masking import IGNORE_INDEX, REPLACEMENT_PRESETS, MaskingConfig
from datamodules.pretraining import PretrainingDataConfig, PretrainingDataModule, TokenBudgetBatches, collate
from datamodules.tokenization import NUM_SPECIAL, SEP_ID, TokenizerConfig


def render(tokenizer, ids: np.ndarray, labels: np.ndarray, segments: np.ndarray) -> str:
    pieces, current_segment = [], None
    for token, label, segment in zip(ids.tolist(), labels.tolist(), segments.tolist()):
        if segment != current_segment:
            pieces.append(f"\n  [{'AB'[segment]}] ")
            current_segment = segment
        shown = tokenizer.decode([token], skip_special_tokens=False) if token < NUM_SPECIAL or label == IGNORE_INDEX \
            else None
        if label != IGNORE_INDEX:
            original = tokenizer.decode([label])
            replaced = tokenizer.decode([token], skip_special_tokens=False)
            shown = f"{{{original.strip()}->{replaced.strip()}}}"
            shown = (" " if original.startswith(" ") else "") + shown
        pieces.append(shown)
        if token == SEP_ID:
            pieces.append(" ")
    return "".join(pieces)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.preview", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="full-sentences", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--masking", default="dynamic", choices=["dynamic", "static"])
    parser.add_argument("--replacement", default="bert", help=f"one of {', '.join(REPLACEMENT_PRESETS)}")
    parser.add_argument("--source", default="news", help="news | files | hub")
    parser.add_argument("--paths", nargs="*", default=[], help="files for --source files")
    parser.add_argument("--hub-path", default="")
    parser.add_argument("--hub-name", default=None)
    parser.add_argument("--tokenizer", default="bpe", help="bpe | wordpiece")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--max-positions", type=int, default=512, help="the model's longest input")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with exit_on_usage_error():
        config = PretrainingDataConfig(
            corpus=CorpusConfig(source=args.source, paths=tuple(args.paths), hub_path=args.hub_path, hub_name=args.hub_name),
            tokenizer=TokenizerConfig(kind=args.tokenizer, vocab_size=args.vocab_size),
            input_format=args.format, block_size=args.block_size, tokens_per_batch=args.tokens_per_batch,
            masking=MaskingConfig(replacement=args.replacement, dynamic=args.masking == "dynamic"),
        )
        config.validate(max_positions=args.max_positions)
        data = PretrainingDataModule(config, seed=args.seed)
        data.setup()
        preview(data, args.epoch, args.examples)


def preview(data: PretrainingDataModule, epoch: int, count: int) -> None:
    tokenized, dataset = data.tokenized, data.train_set
    sampler = TokenBudgetBatches(dataset, data.config.tokens_per_batch, data.seed, shuffle=True)
    sampler.set_epoch(epoch)
    batches = sampler._all_batches()
    print(f"format {data.config.input_format}, masking {'dynamic' if data.config.masking.dynamic else 'static'} "
          f"({data.config.masking.replacement}), epoch {epoch}, tokenizer {tokenized.config.kind} "
          f"{tokenized.vocab_size} tokens")
    for name, split in (("train", tokenized.train), ("held-out", tokenized.val)):
        stats = split.stats()
        print(f"corpus {name}: {stats['documents']:,} documents, {stats['sentences']:,} sentences, {stats['tokens']:,} tokens")
    lengths = dataset.lengths
    sizes = np.array([len(b) for b in batches])
    batch_tokens = np.array([int(lengths[b].sum()) for b in batches])
    print(f"examples this epoch: {len(dataset):,}, mean length {lengths.mean():.1f} tokens (block {data.config.block_size})")
    print(f"batches: {len(batches):,}, sequences per batch {sizes.mean():.1f} (min {sizes.min()}, max {sizes.max()}), "
          f"real tokens per batch {batch_tokens.mean():,.0f} of a {data.config.tokens_per_batch:,} budget")
    if dataset.examples.nsp_label[0] >= 0:
        print(f"NSP: {dataset.examples.nsp_label.mean() * 100:.1f}% IsNext")
    for index in batches[0][:count]:
        item = dataset[index]
        label = {1: "IsNext", 0: "NotNext"}.get(item["nsp_label"], "no NSP")
        masked = int((item["labels"] != IGNORE_INDEX).sum())
        print(f"\n--- example {index} ({len(item['input_ids'])} tokens, {masked} masked, {label})")
        print(render(tokenized.tokenizer, item["input_ids"], item["labels"], item["token_type_ids"]))
    batch = collate([dataset[i] for i in batches[0]])
    print(f"\nfirst batch: input_ids {tuple(batch['input_ids'].shape)}, {batch['num_tokens']:,} real tokens, "
          f"{len(batch['mlm_positions'])} masked positions")


if __name__ == "__main__":
    main()
