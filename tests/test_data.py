"""The data path on real text: corpora, tokenizers, RoBERTa's four formats, masking, batching, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from datamodules.corpus import CorpusConfig, load_corpus, split_wikitext_articles
from datamodules.errors import UsageError
from datamodules.formats import InputFormat
from datamodules.masking import IGNORE_INDEX, MaskingConfig, example_rng, mask_tokens
from datamodules.pretraining import MaskedExamples, PretrainingDataConfig, PretrainingDataModule, TokenBudgetBatches
from datamodules.tokenization import (CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID, TokenizerConfig,
                                      tokenize_corpus, train_tokenizer)

SMALL_NEWS = CorpusConfig(max_documents=200)
SMALL_TOKENIZER = TokenizerConfig(vocab_size=1000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tokenized(cache):
    return tokenize_corpus(load_corpus(SMALL_NEWS, cache), SMALL_TOKENIZER)


def make_format(tokenized, name, block_size=64, seed=0):
    return InputFormat(name, tokenized.train, block_size, seed)


# -- corpora ----------------------------------------------------------------------------------------


def test_news_corpus_is_documents_of_sentences_with_held_out_documents(cache):
    corpus = load_corpus(SMALL_NEWS, cache)
    assert len(corpus.train) + len(corpus.val) == 200 and len(corpus.val) == 10
    sentences = corpus.train[0]["sentences"]
    assert len(sentences) > 3 and all(s.strip() == s and s for s in sentences)
    assert sum(s[-1] in ".?!\"'”)" for s in sentences) >= len(sentences) * 0.8  # real sentence ends


def test_corpus_cache_is_reused_and_rebuilt_when_config_changes(cache):
    first = load_corpus(SMALL_NEWS, cache)
    stamp = (first.directory / "done").stat().st_mtime_ns
    again = load_corpus(SMALL_NEWS, cache)
    assert again.directory == first.directory and (again.directory / "done").stat().st_mtime_ns == stamp
    other = load_corpus(CorpusConfig(max_documents=200, val_fraction=0.1), cache)
    assert other.directory != first.directory and len(other.val) == 20


def test_a_capped_training_set_keeps_the_whole_corpus_held_out_documents(cache):
    """RoBERTa Table 1 trains ~40 epochs on a few documents but is evaluated on the usual held-out set."""
    whole = load_corpus(SMALL_NEWS, cache)
    capped = load_corpus(CorpusConfig(max_documents=200, max_train_documents=20), cache)
    assert len(capped.train) == 20 and len(capped.val) == len(whole.val) == 10
    assert capped.val["sentences"] == whole.val["sentences"]
    whole_train = {tuple(d) for d in whole.train["sentences"]}
    assert all(tuple(d) in whole_train for d in capped.train["sentences"])  # a subset of the training split
    with pytest.raises(UsageError, match="max_train_documents must be >= 1"):
        CorpusConfig(max_train_documents=0).validate()


def test_local_text_jsonl_and_one_document_per_file(tmp_path, cache):
    text = tmp_path / "docs.txt"
    text.write_text("First doc. It has two sentences.\n\nSecond doc here. Also two.\n\nThird one. Yes.\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"Doc {i}. Sentence two of {i}."}) for i in range(4)))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"Para one of {i}.\n\nPara two of {i}.")
    blank = load_corpus(CorpusConfig(source="files", paths=(str(text),), val_fraction=0.34), cache)
    assert len(blank.train) + len(blank.val) == 3
    assert sorted(len(d["sentences"]) for d in blank.train) == [2, 2]
    lines = load_corpus(CorpusConfig(source="files", paths=(str(jsonl),), text_field="body"), cache)
    assert len(lines.train) + len(lines.val) == 4
    per_file = load_corpus(CorpusConfig(source="files", paths=(str(folder),), one_document_per_file=True), cache)
    assert len(per_file.train) + len(per_file.val) == 3
    assert all(len(d["sentences"]) == 2 for d in per_file.train)


def test_hub_loader_splits_wikitext_articles_on_local_files_in_the_hub_format(tmp_path, cache):
    rows = [" = Alpha = \n", "\n", " Alpha is a letter . It comes first . \n", " = = History = = \n",
            " It is old . \n", " = Beta = \n", " Beta follows alpha . It is second . \n"]
    folder = tmp_path / "wikitext-local"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in rows))
    corpus = load_corpus(CorpusConfig(source="hub", hub_path=str(folder), val_fraction=0.5), cache)
    documents = [d["sentences"] for d in list(corpus.train) + list(corpus.val)]
    assert len(documents) == 2
    assert ["Alpha is a letter .", "It comes first .", "It is old ."] in documents
    assert list(split_wikitext_articles(iter([" = A = ", "x", " = = s = = ", "y", " = B = ", "z"]))) == ["x\ny", "z"]


# -- bad input: one clear error each ------------------------------------------------------------------


def test_empty_corpus(tmp_path, cache):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(UsageError, match="no documents"):
        load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "empty.txt"),)), cache)


def test_single_document_corpus(tmp_path, cache):
    (tmp_path / "one.txt").write_text("Only one document. With two sentences.")
    with pytest.raises(UsageError, match="at least 2 are needed"):
        load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "one.txt"),)), cache)


def test_documents_of_one_sentence_cannot_make_nsp_pairs(tmp_path, cache):
    (tmp_path / "short.txt").write_text("\n\n".join(f"Document number {i} has one sentence." for i in range(40)))
    corpus = load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "short.txt"),)), cache)
    tokens = tokenize_corpus(corpus, TokenizerConfig(vocab_size=300, min_frequency=1))
    with pytest.raises(UsageError, match="at least two sentences"):
        InputFormat("segment-pair", tokens.train, 64, 0)
    with pytest.raises(UsageError, match="at least two sentences"):
        InputFormat("sentence-pair", tokens.train, 64, 0)
    assert len(InputFormat("doc-sentences", tokens.train, 64, 0).examples(0)) == len(tokens.train.document_sentences)


def test_bytes_that_are_not_utf8(tmp_path, cache):
    (tmp_path / "latin.txt").write_bytes("Caf\u00e9 one. Two.\n\nAnother doc.".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin.txt line 1: byte 3 is not UTF-8"):
        load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "latin.txt"),)), cache)


def test_multi_megabyte_line_with_no_sentence_end(tmp_path, cache):
    (tmp_path / "long.txt").write_text("word " * 400_000 + "\n\nA normal document. Yes.")
    with pytest.raises(UsageError, match="no sentence end"):
        load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "long.txt"),)), cache)


def test_malformed_jsonl(tmp_path, cache):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine. ok."}\n{"text": broken\n')
    with pytest.raises(UsageError, match="bad.jsonl line 2: not valid JSON"):
        load_corpus(CorpusConfig(source="files", paths=(str(tmp_path / "bad.jsonl"),)), cache)


@pytest.mark.parametrize("config, message", [
    (PretrainingDataConfig(input_format="paragraphs"), "unknown input format"),
    (PretrainingDataConfig(corpus=CorpusConfig(source="ftp")), "unknown data source"),
    (PretrainingDataConfig(block_size=1024), "longer than the model accepts"),
    (PretrainingDataConfig(masking=MaskingConfig(replacement="half")), "unknown replacement"),
    (PretrainingDataConfig(warmup_block_epochs=1, warmup_block_size=128), "needs a warmup_block_size"),
    (PretrainingDataConfig(warmup_block_epochs=1), "needs a warmup_block_size"),
])
def test_invalid_data_configs(config, message):
    with pytest.raises(UsageError, match=message):
        config.validate(max_positions=512)


@pytest.mark.parametrize("args, message", [
    (["--format", "paragraphs"], "unknown input format"),
    (["--source", "files", "--paths", "/does/not/exist"], "does not exist"),
    (["--block-size", "1024"], "longer than the model accepts"),
])
def test_preview_command_fails_with_one_line_and_exit_code_2(args, message):
    done = subprocess.run([sys.executable, "-m", "datamodules.preview", *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- tokenizers ---------------------------------------------------------------------------------------


def test_byte_level_bpe_round_trips_any_text_without_unknown_tokens(tokenized):
    tokenizer = tokenized.tokenizer
    samples = ["naïve café — 東京 🤖 \x00\t tabs", "".join(chr(c) for c in range(32, 2000, 7)), "  two  spaces "]
    rng = np.random.default_rng(0)
    samples += ["".join(chr(int(c)) for c in rng.integers(1, 0x2FFF, size=50) if not 0xD800 <= c < 0xE000)
                for _ in range(20)]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert UNK_ID not in ids
        assert tokenizer.decode(ids) == text


def test_wordpiece_tokenizer_has_the_same_special_ids(news_sentences):
    tokenizer = train_tokenizer(TokenizerConfig(kind="wordpiece", vocab_size=800), iter(news_sentences))
    assert [tokenizer.token_to_id(t) for t in ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]] == [0, 1, 2, 3, 4]
    assert tokenizer.encode("The president said").tokens[:2] == ["The", "president"]


def test_tokenizer_is_trained_on_training_documents_only(tokenized, cache):
    corpus = load_corpus(SMALL_NEWS, cache)
    assert tokenized.train.stats()["documents"] == len(corpus.train)
    assert tokenized.val.stats()["documents"] == len(corpus.val)
    assert tokenized.vocab_size <= SMALL_TOKENIZER.vocab_size


# -- formats --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["segment-pair", "sentence-pair", "full-sentences", "doc-sentences"])
def test_every_example_fits_the_block_and_is_well_formed(tokenized, name):
    fmt = make_format(tokenized, name)
    examples = fmt.examples(0)
    lengths = fmt.sequence_lengths(examples)
    assert len(examples) > 50 and lengths.max() <= 64
    for i in range(0, len(examples), 7):
        ids, segments = fmt.build(examples, i)
        assert len(ids) == lengths[i] and ids[0] == CLS_ID and ids[-1] == SEP_ID
        assert PAD_ID not in ids and MASK_ID not in ids
        if fmt.has_nsp:
            assert (ids == SEP_ID).sum() == 2 and segments[-1] == 1 and segments[1] == 0


def test_doc_sentences_never_crosses_a_document(tokenized):
    fmt = make_format(tokenized, "doc-sentences")
    examples = fmt.examples(0)
    starts = fmt.doc_token_starts
    doc_of_first = np.searchsorted(starts, examples.a_start, side="right") - 1
    doc_of_last = np.searchsorted(starts, examples.a_start + examples.a_len - 1, side="right") - 1
    assert (doc_of_first == doc_of_last).all()
    # blocks at the end of documents are short, so DOC-SENTENCES has more, shorter blocks than FULL-SENTENCES
    full = make_format(tokenized, "full-sentences").examples(0)
    assert len(examples) > len(full) and examples.a_len.mean() < full.a_len.mean()


def test_full_sentences_crosses_documents_with_a_separator(tokenized):
    fmt = make_format(tokenized, "full-sentences")
    examples = fmt.examples(0)
    crossing = [i for i in range(len(examples)) if fmt.separators(examples)[i] > 0]
    assert crossing, "with 64-token blocks some blocks must cross a document boundary"
    ids, _ = fmt.build(examples, crossing[0])
    assert (ids[1:-1] == SEP_ID).sum() == fmt.separators(examples)[crossing[0]]
    # every token of the span appears, in order, around the separators
    start, length = examples.a_start[crossing[0]], examples.a_len[crossing[0]]
    assert np.array_equal(ids[1:-1][ids[1:-1] != SEP_ID], tokenized.train.tokens[start:start + length])


@pytest.mark.parametrize("name", ["segment-pair", "sentence-pair"])
def test_nsp_pairs_are_half_true_continuations_and_redrawn_each_epoch(tokenized, name):
    fmt = make_format(tokenized, name, block_size=128)
    examples = fmt.examples(0)
    positives = examples.nsp_label == 1
    assert 0.4 < positives.mean() <= 0.55
    starts = fmt.doc_token_starts
    doc = lambda tokens: np.searchsorted(starts, tokens, side="right") - 1  # noqa: E731
    # a true B starts where A ends, in the same document; a random B comes from another document
    follows = examples.b_start == examples.a_start + examples.a_len
    assert follows[positives].all() or name == "segment-pair" and follows[positives].mean() > 0.9
    assert (doc(examples.b_start[positives]) == doc(examples.a_start[positives])).all()
    assert (doc(examples.b_start[~positives]) != doc(examples.a_start[~positives])).all()
    assert not np.array_equal(fmt.examples(1).nsp_label, examples.nsp_label)
    assert np.array_equal(fmt.examples(0).b_start, examples.b_start)  # a function of (seed, epoch)


# -- masking --------------------------------------------------------------------------------------------


def masked_batch(tokenized, config, epoch=0, count=300, seed=0):
    fmt = make_format(tokenized, "full-sentences")
    examples = fmt.examples(0)
    out = []
    for i in range(count):
        ids, _ = fmt.build(examples, i)
        inputs, labels = mask_tokens(ids, config, tokenized.vocab_size, example_rng(seed, config.mask_epoch(epoch), i))
        out.append((ids, inputs, labels))
    return out


def test_segment_pair_nsp_label_cannot_be_read_from_the_sequence_length(tokenized):
    """A NotNext B is as long as the true B would have been: the two classes' lengths have the same
    distribution (means within 2%, Kolmogorov-Smirnov does not reject at 1%), no length threshold predicts
    the label better than 55%, and the labels stay 50/50 although one-piece chunks must be NotNext."""
    fmt = make_format(tokenized, "segment-pair", block_size=128)
    lengths, labels = [], []
    for epoch in range(4):
        examples = fmt.examples(epoch)
        lengths.append(fmt.sequence_lengths(examples)), labels.append(examples.nsp_label)
    lengths, labels = np.concatenate(lengths), np.concatenate(labels)
    assert abs(labels.mean() - 0.5) <= 0.01, labels.mean()
    is_next, not_next = np.sort(lengths[labels == 1]), np.sort(lengths[labels == 0])
    assert abs(is_next.mean() / not_next.mean() - 1) < 0.02, (is_next.mean(), not_next.mean())
    grid = np.arange(lengths.min(), lengths.max() + 2)
    cdf_next = np.searchsorted(is_next, grid, side="right") / len(is_next)
    cdf_not = np.searchsorted(not_next, grid, side="right") / len(not_next)
    ks, n, m = np.abs(cdf_next - cdf_not).max(), len(is_next), len(not_next)
    assert ks < 1.63 * np.sqrt((n + m) / (n * m)), ks  # the two-sample KS critical value at alpha = 0.01
    rule = max(max(((lengths <= t) == (labels == side)).mean() for side in (0, 1)) for t in grid)
    assert rule < 0.55, rule


def test_masking_selects_fifteen_percent_of_real_tokens_with_80_10_10(tokenized):
    rows = masked_batch(tokenized, MaskingConfig())
    selected = sum(int((labels != IGNORE_INDEX).sum()) for _, _, labels in rows)
    candidates = sum(int((ids >= NUM_SPECIAL).sum()) for ids, _, _ in rows)
    assert abs(selected / candidates - 0.15) < 0.01
    chosen = np.concatenate([inputs[labels != IGNORE_INDEX] for _, inputs, labels in rows])
    originals = np.concatenate([labels[labels != IGNORE_INDEX] for _, _, labels in rows])
    assert abs((chosen == MASK_ID).mean() - 0.8) < 0.03
    kept = (chosen == originals).mean()
    assert 0.08 < kept < 0.13  # 10% kept, plus random draws that hit the original by chance


def test_special_tokens_are_never_masked_nor_drawn_and_labels_are_minus_100_elsewhere(tokenized):
    for config in (MaskingConfig(), MaskingConfig(replacement="electra"), MaskingConfig(replacement="deberta-rtd")):
        for ids, inputs, labels in masked_batch(tokenized, config, count=100):
            special = ids < NUM_SPECIAL
            assert (labels[special] == IGNORE_INDEX).all() and (inputs[special] == ids[special]).all()
            replaced = (inputs != ids) & (inputs != MASK_ID)
            assert (inputs[replaced] >= NUM_SPECIAL).all()
            assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
            assert (inputs[labels == IGNORE_INDEX] == ids[labels == IGNORE_INDEX]).all()
            if config.replacement == "deberta-rtd":
                assert (inputs[labels != IGNORE_INDEX] == MASK_ID).all()


def test_dynamic_masks_change_every_epoch_and_static_masks_cycle_through_ten(tokenized):
    dynamic, static = MaskingConfig(), MaskingConfig(dynamic=False)
    same = lambda a, b: all(np.array_equal(x[2], y[2]) for x, y in zip(a, b))  # noqa: E731
    assert same(masked_batch(tokenized, dynamic, 3, 20), masked_batch(tokenized, dynamic, 3, 20))
    assert not same(masked_batch(tokenized, dynamic, 3, 20), masked_batch(tokenized, dynamic, 4, 20))
    assert not same(masked_batch(tokenized, dynamic, 3, 20), masked_batch(tokenized, dynamic, 13, 20))
    assert same(masked_batch(tokenized, static, 3, 20), masked_batch(tokenized, static, 13, 20))
    assert not same(masked_batch(tokenized, static, 3, 20), masked_batch(tokenized, static, 4, 20))
    assert not same(masked_batch(tokenized, dynamic, 0, 20, seed=0), masked_batch(tokenized, dynamic, 0, 20, seed=1))


# -- batches --------------------------------------------------------------------------------------------


def test_token_budget_batches_hold_more_short_sequences(tokenized):
    sizes = {}
    for name in ("segment-pair", "sentence-pair", "full-sentences", "doc-sentences"):
        dataset = MaskedExamples(make_format(tokenized, name, 256), MaskingConfig(), tokenized.vocab_size, 0)
        batches = TokenBudgetBatches(dataset, 8192, seed=0, shuffle=True)._all_batches()
        for batch in batches:
            padded = -(-int(dataset.lengths[batch].max()) // 8) * 8
            assert padded * len(batch) <= 8192
        assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
        sizes[name] = np.mean([len(b) for b in batches])
    assert sizes["sentence-pair"] > 1.5 * sizes["segment-pair"]
    assert sizes["doc-sentences"] > sizes["full-sentences"]  # its short end-of-document blocks


def test_sequence_length_warm_up_trains_short_blocks_first_then_full_ones(cache):
    config = PretrainingDataConfig(corpus=SMALL_NEWS, tokenizer=SMALL_TOKENIZER, input_format="doc-sentences",
                                   block_size=128, tokens_per_batch=2048, warmup_block_size=32, warmup_block_epochs=1)
    data = PretrainingDataModule(config, seed=0, cache_dir=cache)
    data.setup()
    sampler = data.train_dataloader().batch_sampler
    longest = {}
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        longest[epoch] = max(int(data.train_set.lengths[batch].max()) for batch in sampler)
    assert longest[0] <= 32 < longest[1] <= 128 and longest[2] == longest[1]
    assert len(next(iter(data.val_dataloader()[0]))["input_ids"][0]) > 32  # held-out blocks stay full length


def test_datamodule_batches_list_masked_positions_and_count_tokens(cache):
    config = PretrainingDataConfig(corpus=SMALL_NEWS, tokenizer=SMALL_TOKENIZER, input_format="segment-pair",
                                   block_size=64, tokens_per_batch=1024)
    data = PretrainingDataModule(config, seed=0, cache_dir=cache)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    flat_labels = batch["labels"].reshape(-1)
    assert (flat_labels[batch["mlm_positions"]] == batch["mlm_labels"]).all()
    assert int((flat_labels != IGNORE_INDEX).sum()) == len(batch["mlm_positions"])
    assert batch["num_tokens"] == int(batch["attention_mask"].sum()) and batch["input_ids"].shape[1] % 8 == 0
    assert set(batch["nsp_labels"].tolist()) <= {0, 1}
    heldout = next(iter(data.val_dataloader()[0]))
    again = next(iter(data.val_dataloader()[0]))
    assert (heldout["input_ids"] == again["input_ids"]).all()  # the held-out set is fixed


@pytest.mark.parametrize("mix, allowed", [("electra", "mask or original"), ("deberta-rtd", "mask only")])
def test_heldout_inputs_of_an_rtd_generator_use_the_masking_it_trained_with(cache, mix, allowed):
    """Same held-out positions for every row, filled by the row's own mix: an ELECTRA generator (85/15)
    never sees a random token there, a DeBERTa-RTD one (100% [MASK]) only [MASK]."""
    def heldout(replacement):
        config = PretrainingDataConfig(corpus=SMALL_NEWS, tokenizer=SMALL_TOKENIZER, block_size=64, tokens_per_batch=1024,
                                       masking=MaskingConfig(replacement=replacement))
        data = PretrainingDataModule(config, seed=0, cache_dir=cache)
        data.setup()
        return [b for _, b in zip(range(3), data.val_dataloader()[0])]

    for bert, rtd in zip(heldout("bert"), heldout(mix)):
        assert (bert["mlm_positions"] == rtd["mlm_positions"]).all() and (bert["mlm_labels"] == rtd["mlm_labels"]).all()
        inputs = rtd["input_ids"].reshape(-1)[rtd["mlm_positions"]]
        is_mask, is_original = inputs == MASK_ID, inputs == rtd["mlm_labels"]
        assert (is_mask | is_original).all() if allowed == "mask or original" else is_mask.all()
        assert is_original.any() == (allowed == "mask or original")
        bert_inputs = bert["input_ids"].reshape(-1)[bert["mlm_positions"]]
        assert ((bert_inputs != MASK_ID) & (bert_inputs != bert["mlm_labels"])).any()  # BERT's 10% random tokens


# -- downstream tasks -------------------------------------------------------------------------------------


def test_offline_tasks_have_fixed_stratified_splits():
    from datamodules.downstream import load_sentiment, load_topic

    for load, classes in ((load_sentiment, 2), (load_topic, 5)):
        first, second = load(), load()
        assert first.validation[0] == second.validation[0]  # the split never moves
        train_labels, val_labels = first.train[1], first.validation[1]
        assert len(np.unique(train_labels)) == classes
        train_share = np.bincount(train_labels) / len(train_labels)
        val_share = np.bincount(val_labels) / len(val_labels)
        assert np.abs(train_share - val_share).max() < 0.01  # stratified
        assert not set(first.validation[0]) & set(first.train[0])  # no text in both


def test_local_files_in_glue_schema_load_with_the_hub_api(tmp_path):
    from datamodules.downstream import load_task

    rows = "sentence1,sentence2,label\n" + "\n".join(f"A man eats {i}.,Someone eats {i}.,{i % 2}" for i in range(20))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "dev.csv").write_text(rows)
    task = load_task(f"files:{tmp_path / 'train.csv'},{tmp_path / 'dev.csv'}")
    assert task.spec.text_fields == ("sentence1", "sentence2") and task.spec.num_labels == 2
    assert task.train[0][3] == ("A man eats 3.", "Someone eats 3.") and task.train[1][3] == 1
    assert task.spec.metric == "accuracy" and task.majority_score() == 50.0
    with pytest.raises(UsageError, match="unknown downstream task"):
        load_task("imdb")


def test_sentence_pairs_are_encoded_with_segments_and_truncated_longest_first(tiny_tokenizer):
    from datamodules.batching import encode_examples

    long_a = "word " * 100
    encoded = encode_examples(tiny_tokenizer, "bpe", [(long_a, "short one.")], max_length=32)[0]
    ids, segments = encoded
    assert len(ids) == 32 and ids[0] == CLS_ID and ids[-1] == SEP_ID and (ids == SEP_ID).sum() == 2
    assert segments[-1] == 1 and segments[1] == 0
    b_length = int((segments == 1).sum()) - 1
    assert b_length == len(tiny_tokenizer.encode(" short one.", add_special_tokens=False).ids)


def test_truncation_by_levels_equals_taking_a_token_at_a_time_off_the_longest_segment():
    from datamodules.batching import truncated_lengths

    def one_at_a_time(lengths, budget):
        lengths = list(lengths)
        while sum(lengths) > budget:
            lengths[max(range(len(lengths)), key=lambda i: lengths[i])] -= 1  # max: the first of equal ones
        return lengths

    rng = np.random.default_rng(0)
    for _ in range(2000):
        lengths = rng.integers(0, 40, rng.integers(1, 4)).tolist()
        budget = int(rng.integers(0, 90))
        assert truncated_lengths(lengths, budget) == one_at_a_time(lengths, budget), (lengths, budget)


def test_fine_tuning_batches_group_similar_lengths_and_cover_every_example_once():
    from datamodules.batching import LengthGroupedBatches

    lengths = np.random.default_rng(1).integers(5, 129, 3000)
    sampler = LengthGroupedBatches(lengths, 32, seed=4)
    first, second = list(sampler), list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(3000)) and len(first) == len(sampler)
    assert first != second  # a new order each epoch
    assert [b for b in LengthGroupedBatches(lengths, 32, seed=4)] == first  # from the seed alone
    padded = sum(lengths[b].max() * len(b) for b in first)
    shuffled = np.random.default_rng(0).permutation(3000)
    random_padded = sum(lengths[shuffled[i:i + 32]].max() * 32 for i in range(0, 3000, 32))
    assert padded < 0.7 * random_padded
